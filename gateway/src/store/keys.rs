//! API keys of every role (random, shown once, stored as SHA-256, revocable) and the operators
//! that staff keys belong to.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use parkflow_db::query;

use super::audit::{self, AuditEntry};
use super::{Db, StoreError, db_time};
use crate::registry::password_hash;

/// Who an API key speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    /// The key's id.
    pub id: Uuid,
    pub role: String,
    pub operator_id: Option<String>,
    pub driver_id: Option<Uuid>,
}

/// A new random API key: `pf_` and 43 URL-safe characters.
pub(crate) fn new_key() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    format!(
        "pf_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Who the key with this hash speaks for, if it is a live key (a web session keeps the hash).
pub(crate) async fn principal_by_hash(
    db: &Db,
    key_hash: &str,
) -> Result<Option<Principal>, StoreError> {
    let row: Option<(Uuid, String, Option<String>, Option<Uuid>)> = query(
        "SELECT id, role, operator_id, driver_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(key_hash)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(id, role, operator_id, driver_id)| Principal {
        id,
        role,
        operator_id,
        driver_id,
    }))
}

/// Roles a staff or app key may have (driver keys come with enrolment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum KeyRole {
    PlatformAdmin,
    OperatorAdmin,
    OperatorViewer,
    NavigationApp,
}

impl KeyRole {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::PlatformAdmin => "platform_admin",
            Self::OperatorAdmin => "operator_admin",
            Self::OperatorViewer => "operator_viewer",
            Self::NavigationApp => "navigation_app",
        }
    }

    /// Whether keys of this role belong to an operator.
    pub(crate) fn is_operators(self) -> bool {
        matches!(self, Self::OperatorAdmin | Self::OperatorViewer)
    }
}

/// A key as the API lists it: never the key itself.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct KeyView {
    pub id: Uuid,
    pub role: String,
    pub operator_id: Option<String>,
    #[serde(with = "parkflow_protocol::time::rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "parkflow_protocol::time::rfc3339::option")]
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key that issued this one (none: the configured platform admin key, or enrolment).
    pub issued_by: Option<Uuid>,
}

const KEY_COLUMNS: &str = "id, role, operator_id, created_at, revoked_at, issued_by";

/// Issues key `id` of `role` (for `operator` when the role is an operator's), audited with
/// `issuer` (whose actor key is recorded as the issuer); returns it with the key in clear, which
/// is never stored.
pub(crate) async fn issue(
    db: &Db,
    id: Uuid,
    role: KeyRole,
    operator: Option<&str>,
    issuer: &AuditEntry,
) -> Result<(KeyView, String), StoreError> {
    let key = new_key();
    let now = db_time(issuer.at);
    let view = KeyView {
        id,
        role: role.as_str().to_owned(),
        operator_id: operator.map(str::to_owned),
        created_at: now,
        revoked_at: None,
        issued_by: issuer.actor_key,
    };
    let mut tx = db.begin_write().await?;
    query(
        "INSERT INTO api_keys (id, key_hash, role, operator_id, created_at, issued_by)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(view.id)
    .bind(password_hash(&key))
    .bind(role.as_str())
    .bind(operator)
    .bind(now)
    .bind(view.issued_by)
    .execute(&mut tx)
    .await?;
    audit::insert(&mut tx, issuer).await?;
    tx.commit().await?;
    Ok((view, key))
}

/// A driver's key as they see it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct DriverKeyView {
    pub id: Uuid,
    #[serde(with = "parkflow_protocol::time::rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "parkflow_protocol::time::rfc3339::option")]
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key that issued this one (none: enrolment).
    pub issued_by: Option<Uuid>,
}

/// The most live keys a driver may hold.
pub(crate) const MAX_DRIVER_KEYS: i64 = 5;

/// A driver's keys, newest first.
pub(crate) async fn driver_keys(db: &Db, driver: Uuid) -> Result<Vec<DriverKeyView>, StoreError> {
    query(
        "SELECT id, created_at, revoked_at, issued_by FROM api_keys
         WHERE role = 'driver' AND driver_id = $1 ORDER BY created_at DESC, id",
    )
    .bind(driver)
    .fetch_all(db)
    .await
}

/// Issues a driver another key (audited with `issuer`, whose actor is the driver's key in use);
/// `None` when they hold [`MAX_DRIVER_KEYS`] live keys already.
pub(crate) async fn issue_driver_key(
    db: &Db,
    id: Uuid,
    driver: Uuid,
    issuer: &AuditEntry,
) -> Result<Option<(DriverKeyView, String)>, StoreError> {
    let key = new_key();
    let view = DriverKeyView {
        id,
        created_at: db_time(issuer.at),
        revoked_at: None,
        issued_by: issuer.actor_key,
    };
    let mut tx = db.begin_write().await?;
    let issued = query(
        "INSERT INTO api_keys (id, key_hash, role, driver_id, created_at, issued_by)
         SELECT $1, $2, 'driver', $3, $4, $5
         WHERE (SELECT COUNT(*) FROM api_keys
                WHERE role = 'driver' AND driver_id = $3 AND revoked_at IS NULL) < $6",
    )
    .bind(view.id)
    .bind(password_hash(&key))
    .bind(driver)
    .bind(view.created_at)
    .bind(view.issued_by)
    .bind(MAX_DRIVER_KEYS)
    .execute(&mut tx)
    .await?;
    if issued == 0 {
        return Ok(None);
    }
    audit::insert(&mut tx, issuer).await?;
    tx.commit().await?;
    Ok(Some((view, key)))
}

/// Revokes one of a driver's own keys (audited with `entry`); `false` when it is not a live key
/// of theirs.
pub(crate) async fn revoke_driver_key(
    db: &Db,
    driver: Uuid,
    id: Uuid,
    entry: &AuditEntry,
) -> Result<bool, StoreError> {
    let mut tx = db.begin_write().await?;
    let revoked = query(
        "UPDATE api_keys SET revoked_at = $3
         WHERE id = $1 AND role = 'driver' AND driver_id = $2 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(driver)
    .bind(db_time(entry.at))
    .execute(&mut tx)
    .await?;
    if revoked == 1 {
        audit::insert(&mut tx, entry).await?;
    }
    tx.commit().await?;
    Ok(revoked == 1)
}

/// Staff and app keys, of one operator or of all; newest first.
pub(crate) async fn list(db: &Db, operator: Option<&str>) -> Result<Vec<KeyView>, StoreError> {
    let sql = format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE role <> 'driver' AND ($1 IS NULL OR operator_id = $1)
         ORDER BY created_at DESC, id"
    );
    query(sql).bind(operator).fetch_all(db).await
}

/// One staff or app key.
pub(crate) async fn key(db: &Db, id: Uuid) -> Result<Option<KeyView>, StoreError> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 AND role <> 'driver'");
    query(sql).bind(id).fetch_optional(db).await
}

/// Revokes a key at once (the next request with it answers 401), audited with `entry`;
/// revoking twice changes nothing and records nothing.
pub(crate) async fn revoke(db: &Db, id: Uuid, entry: &AuditEntry) -> Result<(), StoreError> {
    let mut tx = db.begin_write().await?;
    let revoked = query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
        .bind(id)
        .bind(db_time(entry.at))
        .execute(&mut tx)
        .await?;
    if revoked == 1 {
        audit::insert(&mut tx, entry).await?;
    }
    tx.commit().await
}

/// An operator as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct OperatorView {
    pub id: String,
    pub name: String,
    #[serde(with = "parkflow_protocol::time::rfc3339")]
    pub created_at: DateTime<Utc>,
}

/// Operators, one or all.
pub(crate) async fn operators(
    db: &Db,
    only: Option<&str>,
) -> Result<Vec<OperatorView>, StoreError> {
    query("SELECT id, name, created_at FROM operators WHERE ($1 IS NULL OR id = $1) ORDER BY id")
        .bind(only)
        .fetch_all(db)
        .await
}

/// Creates an operator; `false` if the id is taken.
pub(crate) async fn create_operator(
    db: &Db,
    id: &str,
    name: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let done = query(
        "INSERT INTO operators (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(name)
    .bind(db_time(now))
    .execute(db)
    .await?;
    Ok(done == 1)
}
