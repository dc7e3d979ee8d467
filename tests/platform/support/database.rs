//! A database of its own for each test.

use super::*;
use uuid::Uuid;

/// A database of its own for one test: a temp SQLite file, or a fresh PostgreSQL database.
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_database: Option<String>,
}

impl TestDatabase {
    pub async fn new(database: Database) -> Self {
        match database {
            Database::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite:{}", dir.path().join("parkflow.db").display());
                Self {
                    url,
                    _dir: Some(dir),
                    pg_database: None,
                }
            }
            Database::Postgres => {
                let (url, name) = fresh_postgres_database().await;
                Self {
                    url,
                    _dir: None,
                    pg_database: Some(name),
                }
            }
        }
    }

    pub async fn drop_database(mut self) {
        if let Some(name) = self.pg_database.take() {
            drop_postgres_database(&name).await;
        }
    }
}

pub(super) async fn fresh_postgres_database() -> (String, String) {
    use sqlx::Connection;
    let admin = std::env::var("PARKFLOW_TEST_POSTGRES_URL").unwrap();
    let name = format!("parkflow_test_{}", Uuid::new_v4().simple());
    let mut connection = sqlx::PgConnection::connect(&admin)
        .await
        .expect("postgres reachable");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&name);
    (url.to_string(), name)
}

pub(super) async fn drop_postgres_database(name: &str) {
    use sqlx::Connection;
    let admin = std::env::var("PARKFLOW_TEST_POSTGRES_URL").unwrap();
    if let Ok(mut connection) = sqlx::PgConnection::connect(&admin).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut connection)
            .await;
        let _ = connection.close().await;
    }
}
