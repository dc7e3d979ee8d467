//! Plates are personal data (SPEC §5). Logs carry a plate's keyed hash ([`PlateKey::tag`]), never
//! the plate; plates of sessions, reads and review cases older than the retention period are
//! replaced by a pseudonym ([`pseudonymise`]) by a job the platform runs on a schedule, which also
//! deletes the pictures kept for review cases.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use parkflow_protocol::Plate;

use parkflow_db::query;
use parkflow_session::{lifecycle, repo};

use crate::session::SessionStatus;
use crate::store::{Db, StoreError, db_time};

pub use parkflow_session::lifecycle::PSEUDONYM_PREFIX;

/// The key plates are hashed under. Set it (`--plate-key`) for tags and pseudonyms that stay the
/// same across restarts; a random one is used otherwise.
#[derive(Clone)]
pub struct PlateKey(Arc<[u8]>);

impl PlateKey {
    pub fn new(key: &[u8]) -> Self {
        Self(key.into())
    }

    /// A random key, for a process that was given none.
    pub fn random() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self::new(&bytes)
    }

    /// The key lanes' standing lists hash plates under: derived from this one, so every node
    /// of a platform given the same `--plate-key` makes the same hashes.
    pub fn standing_key(&self) -> parkflow_protocol::standing::StandingKey {
        parkflow_protocol::standing::StandingKey::derive(&self.0)
    }

    /// The plate's tag for logs.
    pub fn tag(&self, plate: &Plate) -> String {
        plate.tag(&self.0)
    }

    /// The pseudonym that replaces a plate after the retention period.
    pub fn pseudonym(&self, plate: &str) -> String {
        match Plate::parse(plate) {
            Ok(plate) => format!("{PSEUDONYM_PREFIX}{}", &self.tag(&plate)[2..]),
            // Stored plates are valid; anything else is pseudonymised all the same.
            Err(_) => format!("{PSEUDONYM_PREFIX}unreadable"),
        }
    }
}

impl std::fmt::Debug for PlateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlateKey(<redacted>)")
    }
}

/// How long plates are kept in clear, and how the job runs.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Plates of sessions that ended longer ago than this (and of reads and review cases made
    /// longer ago) are pseudonymised.
    pub retention: chrono::Duration,
    /// The job runs this often.
    pub every: std::time::Duration,
    /// Plates handled per run (each one a few updates).
    pub batch: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            retention: chrono::Duration::days(180),
            every: std::time::Duration::from_secs(3_600),
            batch: 5_000,
        }
    }
}

/// Replaces the plates of sessions and on-street stays ended before `cutoff` (and of gate reads
/// and review cases made before it) with their pseudonyms, at most `batch` plates, and deletes
/// review cases' pictures kept before it; returns how many plates it handled.
/// Open sessions keep their plates whatever their age (the car is still inside). Idempotent.
pub async fn pseudonymise(
    db: &Db,
    key: &PlateKey,
    cutoff: DateTime<Utc>,
    batch: u32,
) -> Result<usize, StoreError> {
    let cutoff = db_time(cutoff);
    let pictures = crate::store::pictures::forget(db, cutoff).await?;
    if pictures > 0 {
        tracing::info!(pictures, "review pictures past their retention deleted");
    }
    let pattern = format!("{PSEUDONYM_PREFIX}%");
    let plates: Vec<(String,)> = query(
        "SELECT plate FROM sessions WHERE status <> $4 AND exited_at < $1 AND plate NOT LIKE $2
         UNION SELECT plate FROM gate_reads WHERE observed_at < $1 AND plate NOT LIKE $2
         UNION SELECT plate FROM review_items
             WHERE created_at < $1 AND plate IS NOT NULL AND plate NOT LIKE $2
         UNION SELECT plate FROM bay_sessions
             WHERE ended_at < $1 AND plate IS NOT NULL AND plate NOT LIKE $2
         LIMIT $3",
    )
    .bind(cutoff)
    .bind(&pattern)
    .bind(i64::from(batch))
    .bind(SessionStatus::Open.as_str())
    .fetch_all(db)
    .await?;
    for (plate,) in &plates {
        // The query skipped pseudonyms, and ours always start with the prefix.
        let Ok(change) = lifecycle::pseudonymise(plate, key.pseudonym(plate), cutoff) else {
            continue;
        };
        let pseudonym = change.pseudonym.as_str();
        let mut tx = db.begin_write().await?;
        // Sessions and review cases belong to the session lifecycle; reads and stays are ours.
        repo::pseudonymise(&mut tx, &change).await?;
        query("UPDATE gate_reads SET plate = $2 WHERE plate = $1 AND observed_at < $3")
            .bind(plate)
            .bind(pseudonym)
            .bind(cutoff)
            .execute(&mut tx)
            .await?;
        query("UPDATE bay_sessions SET plate = $2 WHERE plate = $1 AND ended_at < $3")
            .bind(plate)
            .bind(pseudonym)
            .bind(cutoff)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
    }
    Ok(plates.len())
}

/// Runs [`pseudonymise`] every `config.every` until `token` is cancelled.
pub async fn run_retention(
    db: Db,
    key: PlateKey,
    config: RetentionConfig,
    token: tokio_util::sync::CancellationToken,
) {
    let mut every = tokio::time::interval(config.every);
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            _ = every.tick() => {}
        }
        let cutoff = Utc::now() - config.retention;
        match pseudonymise(&db, &key, cutoff, config.batch).await {
            Ok(0) => {}
            Ok(plates) => tracing::info!(plates, "plates past their retention pseudonymised"),
            Err(error) => tracing::warn!(%error, "pseudonymisation failed; tried again next run"),
        }
    }
    tracing::debug!("retention job stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_pseudonyms_hide_the_plate_and_are_stable_under_one_key() {
        let plate = Plate::parse("浙A0B818").unwrap();
        let key = PlateKey::new(b"key one");
        let tag = key.tag(&plate);
        assert!(tag.starts_with("p-") && tag.len() == 18, "{tag}");
        assert_eq!(tag, key.tag(&plate));
        assert_ne!(tag, PlateKey::new(b"key two").tag(&plate));
        let pseudonym = key.pseudonym(plate.as_str());
        assert!(pseudonym.starts_with(PSEUDONYM_PREFIX));
        assert!(!pseudonym.contains("A0B818"));
        assert!(
            Plate::parse(&pseudonym).is_err(),
            "a pseudonym is never a plate"
        );
    }
}
