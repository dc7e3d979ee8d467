//! Writing journal entries: many rows per statement, idempotent per (kind, reference, line).

use parkflow_db::{QueryBuilder, StoreError, Tx, db_time};

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

/// Inserts `entries` within the transaction; an entry already recorded is skipped.
pub async fn insert_entries(tx: &mut Tx, entries: &[Entry]) -> Result<(), StoreError> {
    check(entries)?;
    let rows = rows(entries);
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::new(
            "INSERT INTO ledger (entry_id, line, kind, reference, account, amount_minor, currency, \
             created_at) ",
        );
        insert.push_values(chunk, |mut row, (entry, line_no, line)| {
            row.push_bind(entry.id)
                .push_bind(*line_no)
                .push_bind(entry.kind.as_str())
                .push_bind(entry.reference)
                .push_bind(line.account.as_str())
                .push_bind(line.amount_minor)
                .push_bind(entry.currency.as_str())
                .push_bind(db_time(entry.created_at));
        });
        insert.push(" ON CONFLICT (kind, reference, line) DO NOTHING");
        insert
            .build()
            .persistent(chunk.len() == ROWS_PER_STATEMENT)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}
