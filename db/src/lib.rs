//! The database: one pool type for SQLite (the default, a file) and PostgreSQL, and the
//! migrations of both (`migrations/sqlite` and `migrations/postgres`, the same version list).
//!
//! Both engines run the same SQL text (`$1…$N` placeholders, `RETURNING`, `ON CONFLICT`, partial
//! indexes); [`on_db!`] expands one body for each pool type. Money is stored as BIGINT minor
//! units, timestamps in UTC cut to microseconds (PostgreSQL's precision). Each service crate keeps
//! its own queries (`gateway::store`, `billing::store`).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database url (expected sqlite:… or postgres://…)")]
    UnsupportedUrl,
    #[error("failed to connect to the database")]
    Connect(#[source] sqlx::Error),
    #[error("failed to migrate the database")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database query failed")]
    Query(#[from] sqlx::Error),
    #[error("stored row is invalid: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether retrying the same statement later may succeed (connection trouble, not a bad row).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Query(e) => {
                matches!(
                    e,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::Protocol(_)
                ) || e.as_database_error().is_some_and(|db| {
                    // PostgreSQL: admin shutdown (57P01) and friends; SQLite: busy/locked.
                    db.code().is_some_and(|code| {
                        // SQLite reports extended codes (517, 261 …) whose low byte is the primary
                        // code; PostgreSQL's are five characters.
                        let sqlite_busy_or_locked = code.len() < 5
                            && code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6));
                        code.starts_with("57") || code.starts_with("08") || sqlite_busy_or_locked
                    })
                })
            }
            Self::Connect(_) => true,
            _ => false,
        }
    }

    /// The name of the violated constraint, for mapping to 409/422.
    pub fn constraint(&self) -> Option<&str> {
        match self {
            Self::Query(e) => e.as_database_error().and_then(|db| db.constraint()),
            _ => None,
        }
    }
}

/// A connection pool of either engine.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs one body against whichever pool `db` holds; `$pool` is bound to the concrete pool.
#[macro_export]
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::Db::Sqlite($pool) => $body,
            $crate::Db::Postgres($pool) => $body,
        }
    };
}

impl Db {
    /// Connects to `url` (`sqlite:path.db`, `sqlite::memory:` or `postgres://…`) and migrates it.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let db = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(StoreError::Connect)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a commit acknowledged to a device survives a power cut; group commit pays for it.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .map_err(StoreError::Connect)?;
            SQLITE_MIGRATIONS.run(&pool).await?;
            Self::Sqlite(pool)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url).map_err(StoreError::Connect)?;
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                // After a server restart the first query on an old connection fails: test first.
                .test_before_acquire(true)
                .connect_with(options)
                .await
                .map_err(StoreError::Connect)?;
            POSTGRES_MIGRATIONS.run(&pool).await?;
            Self::Postgres(pool)
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        Ok(db)
    }

    /// Which engine this is, for logs and metrics.
    pub fn engine(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_db!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop)?);
        Ok(())
    }

    pub async fn close(&self) {
        on_db!(self, pool => pool.close().await)
    }
}

/// The migration versions of each engine, for the test that keeps them in step.
pub fn migration_versions() -> (Vec<i64>, Vec<i64>) {
    let versions = |m: &sqlx::migrate::Migrator| m.iter().map(|m| m.version).collect();
    (versions(&SQLITE_MIGRATIONS), versions(&POSTGRES_MIGRATIONS))
}

/// A timestamp as both engines store it: UTC, microseconds.
pub fn db_time(t: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    t.trunc_subsecs(6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_engines_have_the_same_migrations() {
        let (sqlite, postgres) = migration_versions();
        assert!(!sqlite.is_empty());
        assert_eq!(sqlite, postgres);
    }
}
