//! Resolving review cases: accepted as they are, or their session voided (a stay in review was
//! never priced nor charged, so voiding it moves no money).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Db, StoreError, db_time, on_db};

/// What an operator decides about a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The case stands as recorded.
    Accept,
    /// The case's session (in review: never priced, never charged) did not happen.
    VoidSession,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "accepted",
            Self::VoidSession => "session_voided",
        }
    }
}

/// Why a case could not be resolved so.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("the case is resolved already")]
    Resolved,
    #[error("only a session in review can be voided (a closed one is billed: refund it instead)")]
    SessionNotInReview,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A case's lot and session, if it is unresolved.
pub async fn case(db: &Db, id: Uuid) -> Result<Option<(String, Option<Uuid>, bool)>, StoreError> {
    let row: Option<(String, Option<Uuid>, Option<DateTime<Utc>>)> = on_db!(db, pool => sqlx::query_as(
        "SELECT lot_id, session_id, resolved_at FROM review_items WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?);
    Ok(row.map(|(lot, session, resolved)| (lot, session, resolved.is_some())))
}

/// Resolves case `id` as `resolution`, in one transaction.
pub async fn resolve(
    db: &Db,
    id: Uuid,
    resolution: Resolution,
    now: DateTime<Utc>,
) -> Result<(), ResolveError> {
    let now = db_time(now);
    on_db!(db, pool => {
        let mut tx = pool.begin().await.map_err(StoreError::from)?;
        let resolved = sqlx::query(
            "UPDATE review_items SET resolved_at = $2, resolution = $3 WHERE id = $1 AND resolved_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .bind(resolution.as_str())
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?
        .rows_affected();
        if resolved != 1 {
            return Err(ResolveError::Resolved);
        }
        if resolution == Resolution::VoidSession {
            let voided = sqlx::query(
                "UPDATE sessions SET status = 'void', updated_at = $2
                 WHERE id = (SELECT session_id FROM review_items WHERE id = $1) AND status = 'review'",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?
            .rows_affected();
            if voided != 1 {
                return Err(ResolveError::SessionNotInReview);
            }
        }
        tx.commit().await.map_err(StoreError::from)?;
    });
    Ok(())
}
