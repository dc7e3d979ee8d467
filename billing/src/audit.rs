//! `parkflow audit`: checks SPEC §4's invariants against the database and names the rows that
//! break them. Run it when the platform is quiet (charging workers caught up): a session closed a
//! moment ago has no charge yet and is reported as such.

use std::fmt;

use chrono::{DateTime, Utc};
use parkflow_db::{Db, Engine, StoreError, query};
use parkflow_protocol::PlateColor;
use parkflow_session::SessionStatus;
use serde::Serialize;
use uuid::Uuid;

use crate::lots::LotBook;
use crate::tariff::Stay;

/// One broken invariant, and the row that breaks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub rule: &'static str,
    pub row: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule, self.row)
    }
}

/// What an audit found and how much it looked at.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditReport {
    pub closed_sessions: i64,
    pub charges: i64,
    pub ledger_entries: i64,
    pub violations: Vec<Violation>,
}

/// Rules checked by a query returning the ids of the rows that break them.
const QUERIES: &[(&str, &str)] = &[
    (
        "closed session without a charge",
        "SELECT CAST(s.id AS TEXT) FROM sessions s WHERE s.status = 'closed'
         AND NOT EXISTS (SELECT 1 FROM charges c WHERE c.session_id = s.id)",
    ),
    (
        "session charged more than once",
        "SELECT CAST(session_id AS TEXT) FROM charges GROUP BY session_id HAVING COUNT(*) > 1",
    ),
    (
        "charge without a closed session",
        "SELECT CAST(c.id AS TEXT) FROM charges c LEFT JOIN sessions s ON s.id = c.session_id
         WHERE s.id IS NULL OR s.status <> 'closed'",
    ),
    (
        "charge amount differs from its session's fee",
        "SELECT CAST(c.id AS TEXT) FROM charges c JOIN sessions s ON s.id = c.session_id
         WHERE s.fee_minor <> c.amount_minor OR s.currency <> c.currency",
    ),
    (
        "journal entry does not sum to zero",
        "SELECT CAST(entry_id AS TEXT) FROM ledger GROUP BY entry_id HAVING SUM(amount_minor) <> 0",
    ),
    (
        "collected charge without exactly one collection entry",
        "SELECT CAST(c.id AS TEXT) FROM charges c WHERE c.status = 'succeeded'
         AND (SELECT COUNT(DISTINCT l.entry_id) FROM ledger l WHERE l.reference = c.id AND l.kind = 'collection') <> 1",
    ),
    (
        "refunds exceed what was collected",
        "SELECT CAST(c.id AS TEXT) FROM charges c LEFT JOIN invoices i ON i.charge_id = c.id
         JOIN (SELECT charge_id, SUM(amount_minor) AS refunded FROM refunds WHERE status <> 'refused' GROUP BY charge_id) r
           ON r.charge_id = c.id
         WHERE r.refunded > CASE WHEN c.status = 'succeeded' OR i.status = 'paid' THEN c.amount_minor ELSE 0 END",
    ),
    (
        "more than one open session for a plate in a lot",
        "SELECT lot_id || ' ' || CAST(COUNT(*) AS TEXT) FROM sessions WHERE status = 'open' GROUP BY lot_id, plate HAVING COUNT(*) > 1",
    ),
    (
        "succeeded payment without its journal entry",
        "SELECT CAST(p.id AS TEXT) FROM payments p WHERE p.status = 'succeeded' AND p.kind = 'invoice'
         AND NOT EXISTS (SELECT 1 FROM ledger l WHERE l.reference = p.id AND l.kind = 'payment')",
    ),
    (
        "charge owed without exactly one fee entry",
        "SELECT CAST(c.id AS TEXT) FROM charges c WHERE (c.status = 'declined' OR (c.status = 'no_account' AND c.amount_minor > 0))
         AND (SELECT COUNT(DISTINCT l.entry_id) FROM ledger l WHERE l.reference = c.id AND l.kind = 'fee') <> 1",
    ),
    (
        "refund without its journal entry",
        "SELECT CAST(r.id AS TEXT) FROM refunds r
         WHERE r.status = 'refunded' AND NOT EXISTS (SELECT 1 FROM ledger l WHERE l.reference = r.id AND l.kind = 'refund')",
    ),
    (
        "invoice paid more than once",
        "SELECT CAST(invoice_id AS TEXT) FROM payments WHERE status = 'succeeded' AND invoice_id IS NOT NULL
         GROUP BY invoice_id HAVING COUNT(*) > 1",
    ),
    (
        "invoice paid without a payment",
        "SELECT CAST(i.id AS TEXT) FROM invoices i WHERE i.status = 'paid'
         AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.invoice_id = i.id AND p.status = 'succeeded')",
    ),
    (
        // Several gateway nodes: each lease of a lot ends before the next one begins.
        "lot owned by two nodes at once",
        "SELECT h.lot_id || ' lease ' || CAST(h.token AS TEXT) FROM lot_lease_history h
         JOIN lot_lease_history n ON n.lot_id = h.lot_id AND n.token > h.token
         WHERE h.released_at IS NULL OR n.acquired_at < h.released_at",
    ),
];

#[derive(sqlx::FromRow)]
struct PricedSession {
    id: Uuid,
    lot_id: String,
    plate_color: Option<String>,
    pass_holder: bool,
    entered_at: DateTime<Utc>,
    exited_at: DateTime<Utc>,
    fee_minor: i64,
}

/// Checks every invariant; the report lists each violation.
pub async fn audit(db: &Db) -> Result<AuditReport, StoreError> {
    let mut report = AuditReport::default();
    for (rule, sql) in QUERIES {
        // UUIDs are stored as BLOBs in SQLite: compare them as hex there.
        let sql = match db.engine() {
            Engine::Sqlite => sql
                .replace("CAST(s.id AS TEXT)", "lower(hex(s.id))")
                .replace("CAST(session_id AS TEXT)", "lower(hex(session_id))")
                .replace("CAST(c.id AS TEXT)", "lower(hex(c.id))")
                .replace("CAST(entry_id AS TEXT)", "lower(hex(entry_id))")
                .replace("CAST(i.id AS TEXT)", "lower(hex(i.id))")
                .replace("CAST(p.id AS TEXT)", "lower(hex(p.id))")
                .replace("CAST(r.id AS TEXT)", "lower(hex(r.id))")
                .replace("CAST(invoice_id AS TEXT)", "lower(hex(invoice_id))"),
            Engine::Postgres => (*sql).to_owned(),
        };
        let rows: Vec<(String,)> = query(sql).fetch_all(db).await?;
        report
            .violations
            .extend(rows.into_iter().map(|(row,)| Violation { rule, row }));
    }
    let (closed, charges, entries): (i64, i64, i64) = query(
        "SELECT (SELECT COUNT(*) FROM sessions WHERE status = $1), (SELECT COUNT(*) FROM charges),
                (SELECT COUNT(DISTINCT entry_id) FROM ledger)",
    )
    .bind(SessionStatus::Closed.as_str())
    .fetch_one(db)
    .await?;
    (
        report.closed_sessions,
        report.charges,
        report.ledger_entries,
    ) = (closed, charges, entries);

    // Recomputing a fee gives the stored fee: sessions priced by a tariff (not paid at an exit for
    // an amount fixed when the car was held).
    let lots = LotBook::load(db).await?;
    let sessions: Vec<PricedSession> = query(
        "SELECT id, lot_id, plate_color, pass_holder, entered_at, exited_at, fee_minor FROM sessions
         WHERE status = $1 AND tariff_from IS NOT NULL",
    )
    .bind(SessionStatus::Closed.as_str())
    .fetch_all(db)
    .await?;
    for session in sessions {
        let stay = Stay {
            entered_at: session.entered_at,
            exited_at: session.exited_at,
            plate_color: session.plate_color.as_deref().and_then(PlateColor::parse),
            pass_holder: session.pass_holder,
        };
        let recomputed = lots
            .get(&session.lot_id)
            .map(|terms| terms.tariffs.fee(&stay).map(|fee| fee.to_minor()));
        if !matches!(recomputed, Some(Ok(Ok(minor))) if minor == session.fee_minor) {
            report.violations.push(Violation {
                rule: "recomputed fee differs from the stored fee",
                row: session.id.to_string(),
            });
        }
    }
    Ok(report)
}
