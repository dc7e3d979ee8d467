//! API keys of every role (random, shown once, stored as SHA-256, revocable) and the operators
//! that staff keys belong to.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use parkflow_db::query;

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

/// Who `key` speaks for, if it is a live key.
pub(crate) async fn principal(db: &Db, key: &str) -> Result<Option<Principal>, StoreError> {
    let row: Option<(Uuid, String, Option<String>, Option<Uuid>)> = query(
        "SELECT id, role, operator_id, driver_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(password_hash(key))
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
}

const KEY_COLUMNS: &str = "id, role, operator_id, created_at, revoked_at";

/// Issues a key of `role` (for `operator` when the role is an operator's); returns it with the
/// key in clear, which is never stored.
pub(crate) async fn issue(
    db: &Db,
    role: KeyRole,
    operator: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(KeyView, String), StoreError> {
    let key = new_key();
    let id = Uuid::now_v7();
    let now = db_time(now);
    query(
        "INSERT INTO api_keys (id, key_hash, role, operator_id, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(password_hash(&key))
    .bind(role.as_str())
    .bind(operator)
    .bind(now)
    .execute(db)
    .await?;
    let view = KeyView {
        id,
        role: role.as_str().to_owned(),
        operator_id: operator.map(str::to_owned),
        created_at: now,
        revoked_at: None,
    };
    Ok((view, key))
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

/// Revokes a key at once (the next request with it answers 401); revoking twice changes nothing.
pub(crate) async fn revoke(db: &Db, id: Uuid, now: DateTime<Utc>) -> Result<(), StoreError> {
    query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
        .bind(id)
        .bind(db_time(now))
        .execute(db)
        .await
        .map(drop)
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
