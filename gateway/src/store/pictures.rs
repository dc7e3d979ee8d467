//! The one writer of `review_pictures`: an ANPR camera's pictures of a read that opened a review
//! case, kept only when the case's lot enables it (`lots.review_pictures`), deleted once the plate
//! retention period has passed ([`forget`], run by the privacy job).

use chrono::{DateTime, Utc};
use parkflow_db::query;
use uuid::Uuid;

use super::{Db, StoreError, db_time};
use crate::anpr::vendors::Picture;

/// Keeps `pictures` for each review case the read `event_id` of `lot` opened; returns how many
/// cases took them (none when the read opened none). A read sent again keeps nothing twice.
pub(crate) async fn keep(
    db: &Db,
    lot: &str,
    event_id: &str,
    pictures: &[Picture],
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let cases: Vec<(Uuid,)> = query(
        "SELECT id FROM review_items WHERE lot_id = $1 AND event_id = $2 AND event_id IS NOT NULL",
    )
    .bind(lot)
    .bind(event_id)
    .fetch_all(db)
    .await?;
    if cases.is_empty() || pictures.is_empty() {
        return Ok(0);
    }
    let mut tx = db.begin_write().await?;
    for (case,) in &cases {
        for (n, picture) in pictures.iter().enumerate() {
            query(
                "INSERT INTO review_pictures (review_id, n, content_type, picture, created_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (review_id, n) DO NOTHING",
            )
            .bind(*case)
            .bind(i64::try_from(n).unwrap_or(i64::MAX))
            .bind(picture.content_type)
            .bind(picture.bytes.as_slice())
            .bind(db_time(now))
            .execute(&mut tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(cases.len())
}

/// The `n`th picture of review case `case`: its content type and bytes.
pub(crate) async fn picture(
    db: &Db,
    case: Uuid,
    n: u32,
) -> Result<Option<(String, Vec<u8>)>, StoreError> {
    query("SELECT content_type, picture FROM review_pictures WHERE review_id = $1 AND n = $2")
        .bind(case)
        .bind(i64::from(n))
        .fetch_optional(db)
        .await
}

/// Deletes the pictures kept before `cutoff`; returns how many.
pub(crate) async fn forget(db: &Db, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
    query("DELETE FROM review_pictures WHERE created_at < $1")
        .bind(db_time(cutoff))
        .execute(db)
        .await
}
