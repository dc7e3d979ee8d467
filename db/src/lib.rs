//! The database: one pool type for SQLite (the default, a file) and PostgreSQL, and the
//! migrations of both (`migrations/sqlite` and `migrations/postgres`, the same version list).
//!
//! Both engines run the same SQL text (`$1…$N` placeholders, `RETURNING`, `ON CONFLICT`, partial
//! indexes): a statement is written once as a [`Query`] and runs on a [`Db`] or in a [`Tx`] of
//! either engine (`query.rs` says why it is built that way). Money is stored as BIGINT minor
//! units, timestamps in UTC cut to microseconds (PostgreSQL's precision). Each table has one
//! writing crate (ARCHITECTURE.md lists them).

mod query;
pub mod sealed;

pub use query::{Executor, On, Query, QueryBuilder, Row, Separated, Value, query};
pub use sealed::SecretsKey;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool, Transaction, TransactionManager};

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
    /// Whether retrying the same statement later may succeed: the connection or the server is in
    /// trouble (lost, restarting, busy, out of disk space or memory, an I/O error), not the row.
    /// A write refused for such a reason must be retried, never given up: the message that
    /// carried it is acknowledged only once it is durable.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Query(e) => {
                matches!(
                    e,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::Protocol(_)
                ) || e
                    .as_database_error()
                    .and_then(|db| db.code())
                    .is_some_and(|code| is_transient_code(&code))
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

/// Whether a database error code names a passing condition. SQLite reports extended codes
/// (517, 261 …) whose low byte is the primary one: BUSY (5), LOCKED (6), FULL (13), and IOERR
/// (10) but for the extended codes that say the file system or the data is broken
/// (IOERR_DATA 8202, IOERR_CORRUPTFS 8458). PostgreSQL's five-character SQLSTATEs: class 08
/// (connection), 53100 / 53200 / 53300 (disk full, out of memory, too many connections), class
/// 57 but 57P04 (the database was dropped), 58000 / 58030 (system and I/O errors), 40001 /
/// 40P01 (serialization, deadlock) and 25006 (a read-only standby, as during a failover).
fn is_transient_code(code: &str) -> bool {
    if code.len() < 5 {
        return code.parse::<i32>().is_ok_and(|c| {
            matches!(c & 0xff, 5 | 6 | 13) || (c & 0xff == 10 && !matches!(c, 8202 | 8458))
        });
    }
    code.starts_with("08")
        || (code.starts_with("57") && code != "57P04")
        || matches!(
            code,
            "53100" | "53200" | "53300" | "58000" | "58030" | "40001" | "40P01" | "25006"
        )
}

/// A connection pool of either engine, with the key secrets are sealed under at rest.
#[derive(Clone, Debug)]
pub struct Db {
    pool: Pool,
    secrets: Option<std::sync::Arc<SecretsKey>>,
}

/// The pool itself, of either engine.
#[derive(Clone, Debug)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl From<Pool> for Db {
    fn from(pool: Pool) -> Self {
        Self {
            pool,
            secrets: None,
        }
    }
}

/// Which engine a pool or transaction runs on, where their SQL must differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A transaction of either engine (from [`Db::begin_write`]); dropped without
/// [`commit`](Tx::commit), it rolls back.
#[derive(Debug)]
pub enum Tx {
    Sqlite(Transaction<'static, sqlx::Sqlite>),
    Postgres(Transaction<'static, sqlx::Postgres>),
}

impl Engine {
    /// The engine's name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
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
                // A caller cancelled while its `BEGIN` was being acknowledged (a request past its
                // timeout, a worker stopped mid-step) leaves that transaction open on the
                // connection it gives back — holding the write lock, after `BEGIN IMMEDIATE`.
                // Whoever took the connection next would write inside it (a plain `BEGIN` became
                // a savepoint, its commit a release: writes never committed). Such a connection
                // is closed as it comes back (after a ping, which runs any rollback queued by a
                // dropped transaction first).
                .after_release(|connection, _| {
                    Box::pin(async move {
                        sqlx::Connection::ping(&mut *connection).await?;
                        Ok(<<sqlx::Sqlite as sqlx::Database>::TransactionManager as TransactionManager>::get_transaction_depth(connection) == 0)
                    })
                })
                .connect_with(options)
                .await
                .map_err(StoreError::Connect)?;
            SQLITE_MIGRATIONS.run(&pool).await?;
            Pool::Sqlite(pool)
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
            Pool::Postgres(pool)
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        Ok(db.into())
    }

    /// The same pool, sealing secrets under `key` ([`Db::seal`]).
    pub fn with_secrets_key(mut self, key: SecretsKey) -> Self {
        self.secrets = Some(std::sync::Arc::new(key));
        self
    }

    /// The pool, for what only one engine does.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// `secret` as it is stored: sealed under the secrets key (bound to `owner`, the row it
    /// belongs to), or in clear without a key.
    pub fn seal(&self, owner: &str, secret: &str) -> String {
        match &self.secrets {
            Some(key) => key.seal(owner, secret),
            None => secret.to_owned(),
        }
    }

    /// A secret as it was stored, opened: [`StoreError::Corrupt`] when it is sealed and this pool
    /// has no key, or not the key it was sealed under, or it belongs to another row.
    pub fn unseal(&self, owner: &str, stored: &str) -> Result<String, StoreError> {
        if !sealed::is_sealed(stored) {
            // With a key, every secret was sealed at start: one in clear now was written by
            // something that should not write secrets (or a node without the key).
            if self.secrets.is_some() {
                return Err(StoreError::Corrupt(format!(
                    "the secret of {owner} is stored in clear although secrets are sealed"
                )));
            }
            return Ok(stored.to_owned());
        }
        let key = self.secrets.as_ref().ok_or_else(|| {
            StoreError::Corrupt(
                "secrets are sealed in the database: the secrets key is needed".into(),
            )
        })?;
        key.unseal(owner, stored).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "the secret of {owner} does not open under this secrets key"
            ))
        })
    }

    /// Whether secrets written now are sealed.
    pub fn seals(&self) -> bool {
        self.secrets.is_some()
    }

    /// Which engine this is.
    pub fn engine(&self) -> Engine {
        match self.pool {
            Pool::Sqlite(_) => Engine::Sqlite,
            Pool::Postgres(_) => Engine::Postgres,
        }
    }

    /// Begins a transaction that will write. SQLite takes its write lock at once (`BEGIN
    /// IMMEDIATE`), waiting up to the busy timeout while another connection writes: a deferred
    /// transaction that reads first fails at its first write with `SQLITE_BUSY_SNAPSHOT`, at once
    /// and whatever the busy timeout, when another connection committed after its read.
    /// PostgreSQL begins as usual (its row locks and constraints order writers).
    pub async fn begin_write(&self) -> Result<Tx, StoreError> {
        Ok(match &self.pool {
            Pool::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Pool::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        query("SELECT 1").execute(self).await.map(drop)
    }

    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
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

    /// A SQLite database in a temp folder (kept while the folder lives) with one table, `t (n)`.
    async fn scratch() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite:{}", dir.path().join("t.db").display());
        let db = Db::connect(&url).await.expect("connect");
        assert_eq!(db.engine(), Engine::Sqlite);
        query("CREATE TABLE t (n INTEGER)")
            .execute(&db)
            .await
            .expect("create");
        (dir, db)
    }

    async fn count(db: &Db) -> i64 {
        let (n,): (i64,) = query("SELECT COUNT(*) FROM t")
            .fetch_one(db)
            .await
            .expect("count");
        n
    }

    /// A disk that fills up refuses writes for a while, not for good: `SQLITE_FULL` (a database
    /// held at its page limit, as a full filesystem does) must read as transient, or the writer
    /// gives the write up and acknowledges a message it never stored.
    #[tokio::test]
    async fn a_full_database_is_a_passing_condition() {
        let (_dir, db) = scratch().await;
        let Pool::Sqlite(pool) = db.pool() else {
            unreachable!("a sqlite database")
        };
        let mut connection = pool.acquire().await.expect("acquire");
        let (pages,): (i64,) = sqlx::query_as("PRAGMA page_count")
            .fetch_one(&mut *connection)
            .await
            .expect("page count");
        sqlx::query(&format!("PRAGMA max_page_count = {pages}"))
            .execute(&mut *connection)
            .await
            .expect("limit");
        let error = sqlx::query("INSERT INTO t VALUES (zeroblob(1000000))")
            .execute(&mut *connection)
            .await
            .map(drop)
            .map_err(StoreError::from)
            .expect_err("the database is full");
        assert!(error.is_transient(), "{error:?}");
    }

    #[test]
    fn codes_of_passing_and_lasting_conditions() {
        for code in [
            "5", "517", "6", "13", "10", "3338", "778", "53100", "57P01", "08006", "58030",
            "40001", "25006",
        ] {
            assert!(is_transient_code(code), "{code}");
        }
        // A constraint (SQLite 19 / 2067, PostgreSQL 23505) or a bad statement lasts, as do a
        // broken file system or file, a dropped database and a configured limit.
        for code in [
            "19", "2067", "1", "14", "8202", "8458", "23505", "23503", "42P01", "22P02", "57P04",
            "58P01", "53400",
        ] {
            assert!(!is_transient_code(code), "{code}");
        }
    }

    /// A transaction that reads, then writes, while another connection commits in between: with
    /// a deferred `BEGIN` SQLite refused its write at once (`SQLITE_BUSY_SNAPSHOT`, seen as a 500
    /// when an operator removed a gate while traffic was being recorded).
    #[tokio::test]
    async fn a_transaction_that_reads_then_writes_waits_for_another_writer_on_sqlite() {
        let (_dir, db) = scratch().await;

        let mut tx = db.begin_write().await.expect("begin");
        let (before,): (i64,) = query("SELECT COUNT(*) FROM t")
            .fetch_one(&mut tx)
            .await
            .expect("read");
        let mut other = tokio::spawn({
            let db = db.clone();
            async move { query("INSERT INTO t VALUES (2)").execute(&db).await }
        });
        // Give the other writer every chance to commit first (it cannot: it waits for our lock).
        let other_went_first = tokio::time::timeout(Duration::from_millis(300), &mut other)
            .await
            .is_ok();
        query("INSERT INTO t VALUES (1)")
            .execute(&mut tx)
            .await
            .expect("our write");
        tx.commit().await.expect("commit");
        assert!(
            !other_went_first,
            "another connection wrote inside our transaction"
        );
        other
            .await
            .expect("join")
            .expect("the other write, after ours");
        assert_eq!((before, count(&db).await), (0, 2));
    }

    /// A transaction whose owner vanished without rolling back (as when a `BEGIN` is answered
    /// after its caller was cancelled) must not keep its connection, and the write lock, in the pool.
    #[tokio::test]
    async fn a_connection_given_back_inside_a_transaction_is_closed() {
        let (_dir, db) = scratch().await;
        let Pool::Sqlite(pool) = db.pool() else {
            unreachable!("a sqlite database")
        };

        let mut connection = pool.acquire().await.expect("acquire");
        let leaked = sqlx::Connection::begin_with(&mut *connection, "BEGIN IMMEDIATE")
            .await
            .expect("begin");
        std::mem::forget(leaked);
        drop(connection);

        for n in 0..8_i64 {
            let mut tx = db.begin_write().await.expect("a write transaction");
            query("INSERT INTO t VALUES ($1)")
                .bind(n)
                .execute(&mut tx)
                .await
                .expect("write");
            tx.commit().await.expect("commit");
        }
        assert_eq!(count(&db).await, 8);
    }

    #[test]
    fn both_engines_have_the_same_migrations() {
        let (sqlite, postgres) = migration_versions();
        assert!(!sqlite.is_empty());
        assert_eq!(sqlite, postgres);
    }
}
