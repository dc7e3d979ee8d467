//! The audit trail (append-only): who did what to which object, when and why.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use parkflow_db::{Executor, query};

use super::{Db, StoreError, db_time};

/// One entry, as recorded and as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct AuditEntry {
    pub id: Uuid,
    #[serde(with = "parkflow_protocol::time::rfc3339")]
    pub at: DateTime<Utc>,
    /// `platform_admin` or `operator_admin`.
    pub actor_role: String,
    /// The API key used (none for the platform admin's configured key).
    pub actor_key: Option<Uuid>,
    pub operator_id: Option<String>,
    /// What was done (`manual_open`, …).
    pub action: String,
    /// What it was done to (`lot/gate`, a session id, …).
    pub object: String,
    pub reason: String,
    /// Anything else worth keeping, as JSON text.
    pub details: Option<String>,
}

/// Inserts an `AuditEntry`: inside the transaction that writes the change it records, so that the
/// change and its entry commit together, or on the pool for an entry of its own.
pub(crate) async fn insert<'c>(
    on: impl Executor<'c>,
    entry: &AuditEntry,
) -> Result<(), StoreError> {
    query(
        "INSERT INTO audit_log (id, at, actor_role, actor_key, operator_id, action, object,
             reason, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(entry.id)
    .bind(db_time(entry.at))
    .bind(&entry.actor_role)
    .bind(entry.actor_key)
    .bind(entry.operator_id.as_deref())
    .bind(&entry.action)
    .bind(&entry.object)
    .bind(&entry.reason)
    .bind(entry.details.as_deref())
    .execute(on)
    .await
    .map(drop)
}

/// Records an entry on its own (for an action outside the database, recorded before it is taken).
pub(crate) async fn record(db: &Db, entry: &AuditEntry) -> Result<(), StoreError> {
    insert(db, entry).await
}

/// The newest entries, of one operator or of all.
pub(crate) async fn entries(
    db: &Db,
    operator: Option<&str>,
    limit: u32,
) -> Result<Vec<AuditEntry>, StoreError> {
    query(
        "SELECT id, at, actor_role, actor_key, operator_id, action, object, reason, details FROM audit_log
         WHERE ($1 IS NULL OR operator_id = $1) ORDER BY at DESC, id LIMIT $2",
    )
    .bind(operator)
    .bind(i64::from(limit))
    .fetch_all(db)
    .await
}
