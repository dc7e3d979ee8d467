//! The one writer of `web_sessions`: logins to the web pages (the operator console, the driver
//! portal). The browser holds a random token in an HttpOnly cookie; the row holds the token's
//! hash, the hash of the API key that logged in (resolved again on every request, so a revoked
//! key ends its sessions at once) and the CSRF token the session's forms carry.

use chrono::{DateTime, Duration, Utc};
use parkflow_db::query;

use super::{Db, StoreError, db_time};
use crate::registry::password_hash;

/// How long a login lasts.
pub(crate) const LASTS: Duration = Duration::hours(12);

/// A live login: whose key, and its forms' CSRF token.
#[derive(Debug, Clone)]
pub(crate) struct WebSession {
    pub key_hash: String,
    pub csrf: String,
}

fn random_token() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Live sessions one key keeps at most: logging in again past this ends the oldest.
pub(crate) const PER_KEY: i64 = 20;

/// Opens a session for `key` (already checked by the caller); the cookie's token. The browser's
/// earlier session (`replacing`, the token it still sent) ends, as do sessions past their time
/// and the key's oldest beyond [`PER_KEY`].
pub(crate) async fn open(
    db: &Db,
    key: &str,
    replacing: Option<&str>,
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    let token = random_token();
    let key_hash = password_hash(key);
    let mut tx = db.begin_write().await?;
    query("DELETE FROM web_sessions WHERE expires_at < $1")
        .bind(db_time(now))
        .execute(&mut tx)
        .await?;
    if let Some(old) = replacing {
        query("DELETE FROM web_sessions WHERE token_hash = $1")
            .bind(password_hash(old))
            .execute(&mut tx)
            .await?;
    }
    query(
        "DELETE FROM web_sessions WHERE key_hash = $1 AND token_hash NOT IN
             (SELECT token_hash FROM web_sessions WHERE key_hash = $1
              ORDER BY created_at DESC, token_hash LIMIT $2)",
    )
    .bind(&key_hash)
    .bind(PER_KEY - 1)
    .execute(&mut tx)
    .await?;
    query(
        "INSERT INTO web_sessions (token_hash, key_hash, csrf, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(password_hash(&token))
    .bind(&key_hash)
    .bind(random_token())
    .bind(db_time(now))
    .bind(db_time(now + LASTS))
    .execute(&mut tx)
    .await?;
    tx.commit().await?;
    Ok(token)
}

/// The live session the cookie's `token` names.
pub(crate) async fn find(
    db: &Db,
    token: &str,
    now: DateTime<Utc>,
) -> Result<Option<WebSession>, StoreError> {
    let row: Option<(String, String)> =
        query("SELECT key_hash, csrf FROM web_sessions WHERE token_hash = $1 AND expires_at > $2")
            .bind(password_hash(token))
            .bind(db_time(now))
            .fetch_optional(db)
            .await?;
    Ok(row.map(|(key_hash, csrf)| WebSession { key_hash, csrf }))
}

/// Ends the session `token` names (logging out).
pub(crate) async fn close(db: &Db, token: &str) -> Result<(), StoreError> {
    query("DELETE FROM web_sessions WHERE token_hash = $1")
        .bind(password_hash(token))
        .execute(db)
        .await?;
    Ok(())
}
