//! Writing journal entries: many rows per statement, idempotent per (kind, reference, line).

use parkflow_db::StoreError;

use super::{Entry, Line};

/// Rows per INSERT (8 binds a row, under SQLite's 32,766 bind limit).
pub const ROWS_PER_STATEMENT: usize = 4_000;

/// The rows of `entries`, line by line.
pub fn rows(entries: &[Entry]) -> Vec<(&Entry, i16, &Line)> {
    entries
        .iter()
        .flat_map(|e| {
            e.lines
                .iter()
                .zip(0_i16..)
                .map(move |(line, no)| (e, no, line))
        })
        .collect()
}

/// Checks that every entry balances before it is written: an unbalanced entry is a bug.
pub fn check(entries: &[Entry]) -> Result<(), StoreError> {
    match entries.iter().find(|e| !e.is_balanced()) {
        Some(entry) => Err(StoreError::Corrupt(format!(
            "unbalanced journal entry {}",
            entry.id
        ))),
        None => Ok(()),
    }
}

/// Inserts `$entries` (a `&[Entry]`) within the transaction `$tx` of either engine; an entry
/// already recorded is skipped. Evaluates to `Result<(), StoreError>`.
#[macro_export]
macro_rules! insert_entries {
    ($tx:expr, $entries:expr) => {{
        let entries: &[$crate::ledger::Entry] = $entries;
        match $crate::ledger::store::check(entries) {
            Err(e) => Err(e),
            Ok(()) => {
                let rows = $crate::ledger::store::rows(entries);
                let mut result = Ok(());
                for chunk in rows.chunks($crate::ledger::store::ROWS_PER_STATEMENT) {
                    let mut builder = sqlx::QueryBuilder::new(
                        "INSERT INTO ledger (entry_id, line, kind, reference, account, amount_minor, currency, created_at) ",
                    );
                    builder.push_values(chunk.iter(), |mut row, (entry, line_no, line)| {
                        row.push_bind(entry.id)
                            .push_bind(*line_no)
                            .push_bind(entry.kind.as_str())
                            .push_bind(entry.reference)
                            .push_bind(line.account.as_str())
                            .push_bind(line.amount_minor)
                            .push_bind(entry.currency.as_str())
                            .push_bind(parkflow_db::db_time(entry.created_at));
                    });
                    builder.push(" ON CONFLICT (kind, reference, line) DO NOTHING");
                    if let Err(e) = builder.build().execute(&mut *$tx).await {
                        result = Err(parkflow_db::StoreError::from(e));
                        break;
                    }
                }
                result
            }
        }
    }};
}
