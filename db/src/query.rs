//! Statements that run on either engine: one [`Query`] (SQL text with `$1…$N` placeholders and
//! the values bound to them) executed on a [`Db`] or inside a [`Tx`], whichever engine it holds.
//!
//! Both engines accept the same SQL for everything ParkFlow does (`RETURNING`, `ON CONFLICT`,
//! partial indexes), so a statement is written once; the values carry their own SQL type (a
//! NULL too: PostgreSQL types every parameter), and rows decode into any type that both
//! drivers' `FromRow` accept ([`Row`]). Where the engines really differ (`COPY`, `SKIP
//! LOCKED`), the caller matches on [`Db`] or asks [`Tx::engine`].

use std::borrow::Cow;
use std::fmt::Display;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Arguments, Database, Encode, PgConnection, Postgres, Sqlite, SqliteConnection, Type};
use uuid::Uuid;

use crate::{Db, Engine, StoreError, Tx};

/// A value bound to a placeholder, with its SQL type (also when it is NULL).
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'q> {
    Bool(Option<bool>),
    I16(Option<i16>),
    I32(Option<i32>),
    I64(Option<i64>),
    F64(Option<f64>),
    Text(Option<Cow<'q, str>>),
    Bytes(Option<Cow<'q, [u8]>>),
    Uuid(Option<Uuid>),
    Time(Option<DateTime<Utc>>),
}

macro_rules! value_from {
    ($($ty:ty => $variant:ident),* $(,)?) => {$(
        impl<'q> From<$ty> for Value<'q> {
            fn from(v: $ty) -> Self {
                Self::$variant(Some(v.into()))
            }
        }
        impl<'q> From<Option<$ty>> for Value<'q> {
            fn from(v: Option<$ty>) -> Self {
                Self::$variant(v.map(Into::into))
            }
        }
    )*};
}

value_from! {
    bool => Bool,
    i16 => I16,
    i32 => I32,
    i64 => I64,
    f64 => F64,
    &'q str => Text,
    String => Text,
    Cow<'q, str> => Text,
    &'q [u8] => Bytes,
    Vec<u8> => Bytes,
    Uuid => Uuid,
    DateTime<Utc> => Time,
}

impl<'q> From<&'q String> for Value<'q> {
    fn from(v: &'q String) -> Self {
        Self::Text(Some(Cow::Borrowed(v.as_str())))
    }
}

impl<'q> From<Option<&'q String>> for Value<'q> {
    fn from(v: Option<&'q String>) -> Self {
        Self::Text(v.map(|s| Cow::Borrowed(s.as_str())))
    }
}

/// A type rows decode into on both engines (`#[derive(sqlx::FromRow)]` structs, tuples).
pub trait Row:
    for<'r> sqlx::FromRow<'r, SqliteRow> + for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin
{
}

impl<T> Row for T where
    T: for<'r> sqlx::FromRow<'r, SqliteRow> + for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin
{
}

/// Where a statement runs: the pool (its own connection, autocommit) or an open transaction.
pub enum On<'c> {
    SqlitePool(&'c sqlx::SqlitePool),
    PgPool(&'c sqlx::PgPool),
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

/// What a statement can run on: `&Db` or `&mut Tx`.
pub trait Executor<'c> {
    fn on(self) -> On<'c>;
}

impl<'c> Executor<'c> for &'c Db {
    fn on(self) -> On<'c> {
        match self.pool() {
            crate::Pool::Sqlite(pool) => On::SqlitePool(pool),
            crate::Pool::Postgres(pool) => On::PgPool(pool),
        }
    }
}

impl<'c> Executor<'c> for &'c mut Tx {
    fn on(self) -> On<'c> {
        match self {
            Tx::Sqlite(tx) => On::Sqlite(tx),
            Tx::Postgres(tx) => On::Postgres(tx),
        }
    }
}

/// One statement and its bound values.
#[derive(Debug, Clone)]
#[must_use = "a query does nothing until it is executed or fetched"]
pub struct Query<'q> {
    sql: Cow<'q, str>,
    values: Vec<Value<'q>>,
    persistent: bool,
}

/// A statement to run; bind its `$1…$N` in order.
pub fn query<'q>(sql: impl Into<Cow<'q, str>>) -> Query<'q> {
    Query {
        sql: sql.into(),
        values: Vec::new(),
        persistent: true,
    }
}

impl<'q> Query<'q> {
    /// Binds the next placeholder.
    pub fn bind(mut self, value: impl Into<Value<'q>>) -> Self {
        self.values.push(value.into());
        self
    }

    /// Whether the driver keeps the statement prepared for reuse (the default); statements whose
    /// text varies (multi-row inserts of any length) should not fill the cache.
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    /// Runs the statement; returns the number of rows it changed.
    pub async fn execute<'c>(self, on: impl Executor<'c>) -> Result<u64, StoreError> {
        let Self {
            sql,
            values,
            persistent,
        } = self;
        let on = on.on();
        let sql = for_engine(&sql, &on);
        let affected = match on {
            On::SqlitePool(pool) => sqlx::query_with(&sql, arguments::<Sqlite>(&values)?)
                .persistent(persistent)
                .execute(pool)
                .await?
                .rows_affected(),
            On::PgPool(pool) => sqlx::query_with(&sql, arguments::<Postgres>(&values)?)
                .persistent(persistent)
                .execute(pool)
                .await?
                .rows_affected(),
            On::Sqlite(conn) => sqlx::query_with(&sql, arguments::<Sqlite>(&values)?)
                .persistent(persistent)
                .execute(conn)
                .await?
                .rows_affected(),
            On::Postgres(conn) => sqlx::query_with(&sql, arguments::<Postgres>(&values)?)
                .persistent(persistent)
                .execute(conn)
                .await?
                .rows_affected(),
        };
        Ok(affected)
    }

    /// Every row the statement returns.
    pub async fn fetch_all<'c, T: Row>(self, on: impl Executor<'c>) -> Result<Vec<T>, StoreError> {
        let Self {
            sql,
            values,
            persistent,
        } = self;
        let on = on.on();
        let sql = for_engine(&sql, &on);
        let rows = match on {
            On::SqlitePool(pool) => {
                sqlx::query_as_with::<_, T, _>(&sql, arguments::<Sqlite>(&values)?)
                    .persistent(persistent)
                    .fetch_all(pool)
                    .await?
            }
            On::PgPool(pool) => {
                sqlx::query_as_with::<_, T, _>(&sql, arguments::<Postgres>(&values)?)
                    .persistent(persistent)
                    .fetch_all(pool)
                    .await?
            }
            On::Sqlite(conn) => {
                sqlx::query_as_with::<_, T, _>(&sql, arguments::<Sqlite>(&values)?)
                    .persistent(persistent)
                    .fetch_all(conn)
                    .await?
            }
            On::Postgres(conn) => {
                sqlx::query_as_with::<_, T, _>(&sql, arguments::<Postgres>(&values)?)
                    .persistent(persistent)
                    .fetch_all(conn)
                    .await?
            }
        };
        Ok(rows)
    }

    /// The first row, if there is one.
    pub async fn fetch_optional<'c, T: Row>(
        self,
        on: impl Executor<'c>,
    ) -> Result<Option<T>, StoreError> {
        let Self {
            sql,
            values,
            persistent,
        } = self;
        let on = on.on();
        let sql = for_engine(&sql, &on);
        let row = match on {
            On::SqlitePool(pool) => {
                sqlx::query_as_with::<_, T, _>(&sql, arguments::<Sqlite>(&values)?)
                    .persistent(persistent)
                    .fetch_optional(pool)
                    .await?
            }
            On::PgPool(pool) => {
                sqlx::query_as_with::<_, T, _>(&sql, arguments::<Postgres>(&values)?)
                    .persistent(persistent)
                    .fetch_optional(pool)
                    .await?
            }
            On::Sqlite(conn) => {
                sqlx::query_as_with::<_, T, _>(&sql, arguments::<Sqlite>(&values)?)
                    .persistent(persistent)
                    .fetch_optional(conn)
                    .await?
            }
            On::Postgres(conn) => {
                sqlx::query_as_with::<_, T, _>(&sql, arguments::<Postgres>(&values)?)
                    .persistent(persistent)
                    .fetch_optional(conn)
                    .await?
            }
        };
        Ok(row)
    }

    /// The first row; none is an error (`sqlx::Error::RowNotFound`).
    pub async fn fetch_one<'c, T: Row>(self, on: impl Executor<'c>) -> Result<T, StoreError> {
        self.fetch_optional(on)
            .await?
            .ok_or(StoreError::Query(sqlx::Error::RowNotFound))
    }

    /// Hands each row to `each` as it arrives, without holding them all (a city's bays).
    pub async fn for_each<'c, T: Row>(
        self,
        on: impl Executor<'c>,
        mut each: impl FnMut(T) -> Result<(), StoreError> + Send,
    ) -> Result<(), StoreError> {
        let Self {
            sql,
            values,
            persistent,
        } = self;
        let on = on.on();
        let sql = for_engine(&sql, &on);
        match on {
            On::SqlitePool(pool) => {
                let mut rows = sqlx::query_as_with::<_, T, _>(&sql, arguments::<Sqlite>(&values)?)
                    .persistent(persistent)
                    .fetch(pool);
                while let Some(row) = rows.try_next().await? {
                    each(row)?;
                }
            }
            On::PgPool(pool) => {
                let mut rows =
                    sqlx::query_as_with::<_, T, _>(&sql, arguments::<Postgres>(&values)?)
                        .persistent(persistent)
                        .fetch(pool);
                while let Some(row) = rows.try_next().await? {
                    each(row)?;
                }
            }
            On::Sqlite(conn) => {
                let mut rows = sqlx::query_as_with::<_, T, _>(&sql, arguments::<Sqlite>(&values)?)
                    .persistent(persistent)
                    .fetch(conn);
                while let Some(row) = rows.try_next().await? {
                    each(row)?;
                }
            }
            On::Postgres(conn) => {
                let mut rows =
                    sqlx::query_as_with::<_, T, _>(&sql, arguments::<Postgres>(&values)?)
                        .persistent(persistent)
                        .fetch(conn);
                while let Some(row) = rows.try_next().await? {
                    each(row)?;
                }
            }
        }
        Ok(())
    }
}

/// The statement's text for the engine it runs on. SQLite reads `$1` as a *named* parameter and
/// looks each name up among those seen so far, while it parses and again for every value bound:
/// a multi-row statement with thousands of them took seconds (quadratic). A statement that names
/// its parameters in order, each once (every multi-row statement a [`QueryBuilder`] makes), runs
/// with anonymous `?`, which SQLite numbers as it goes; any other with `?N`, which it finds by
/// number while parsing. PostgreSQL takes `$1` as written.
fn for_engine<'s>(sql: &'s str, on: &On<'_>) -> Cow<'s, str> {
    if matches!(on, On::Postgres(_) | On::PgPool(_)) || !sql.contains('$') {
        return Cow::Borrowed(sql);
    }
    let placeholders = placeholders(sql);
    let in_order = placeholders.iter().enumerate().all(|(i, p)| p.1 == i + 1);
    let mut out = String::with_capacity(sql.len());
    let mut last = 0;
    for (at, number, len) in placeholders.into_iter().map(|(at, n)| (at, n, digits(n))) {
        out.push_str(&sql[last..at]);
        out.push('?');
        if !in_order {
            out.push_str(&number.to_string());
        }
        last = at + 1 + len;
    }
    out.push_str(&sql[last..]);
    Cow::Owned(out)
}

/// Where each `$N` outside a quoted literal starts, and its `N`.
fn placeholders(sql: &str) -> Vec<(usize, usize)> {
    let bytes = sql.as_bytes();
    let mut found = Vec::new();
    let mut quoted = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => quoted = !quoted,
            b'$' if !quoted => {
                let len = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if let Ok(number) = sql[i + 1..i + 1 + len].parse() {
                    found.push((i, number));
                    i += len;
                }
            }
            _ => {}
        }
        i += 1;
    }
    found
}

fn digits(n: usize) -> usize {
    n.to_string().len()
}

/// The engine's argument list for `values`; the one place values meet a driver.
fn arguments<'a, DB: Database>(values: &'a [Value<'_>]) -> Result<DB::Arguments<'a>, StoreError>
where
    Option<bool>: Encode<'a, DB> + Type<DB>,
    Option<i16>: Encode<'a, DB> + Type<DB>,
    Option<i32>: Encode<'a, DB> + Type<DB>,
    Option<i64>: Encode<'a, DB> + Type<DB>,
    Option<f64>: Encode<'a, DB> + Type<DB>,
    Option<&'a str>: Encode<'a, DB> + Type<DB>,
    Option<&'a [u8]>: Encode<'a, DB> + Type<DB>,
    Option<Uuid>: Encode<'a, DB> + Type<DB>,
    Option<DateTime<Utc>>: Encode<'a, DB> + Type<DB>,
{
    let mut arguments = DB::Arguments::<'a>::default();
    arguments.reserve(values.len(), 0);
    for value in values {
        match value {
            Value::Bool(v) => arguments.add(*v),
            Value::I16(v) => arguments.add(*v),
            Value::I32(v) => arguments.add(*v),
            Value::I64(v) => arguments.add(*v),
            Value::F64(v) => arguments.add(*v),
            Value::Text(v) => arguments.add(v.as_deref()),
            Value::Bytes(v) => arguments.add(v.as_deref()),
            Value::Uuid(v) => arguments.add(*v),
            Value::Time(v) => arguments.add(*v),
        }
        .map_err(|e| StoreError::Query(sqlx::Error::Encode(e)))?;
    }
    Ok(arguments)
}

/// Builds a statement of varying shape (multi-row `VALUES`, `IN (…)` lists), numbering its
/// placeholders as values are pushed.
#[derive(Debug, Default)]
pub struct QueryBuilder<'q> {
    sql: String,
    values: Vec<Value<'q>>,
}

impl<'q> QueryBuilder<'q> {
    pub fn new(sql: impl Into<String>) -> Self {
        Self {
            sql: sql.into(),
            values: Vec::new(),
        }
    }

    /// Appends SQL text.
    pub fn push(&mut self, sql: impl Display) -> &mut Self {
        use std::fmt::Write;
        let _ = write!(self.sql, "{sql}");
        self
    }

    /// Appends the next placeholder (`$n`) and binds `value` to it.
    pub fn push_bind(&mut self, value: impl Into<Value<'q>>) -> &mut Self {
        self.values.push(value.into());
        let n = self.values.len();
        self.push(format_args!("${n}"))
    }

    /// Items separated by `separator`, pushed through the returned helper.
    pub fn separated(&mut self, separator: &'static str) -> Separated<'_, 'q> {
        Separated {
            builder: self,
            separator,
            first: true,
        }
    }

    /// Appends `VALUES (…), (…)` with one row per item; `row` pushes an item's columns.
    pub fn push_values<I>(
        &mut self,
        items: impl IntoIterator<Item = I>,
        mut row: impl FnMut(Separated<'_, 'q>, I),
    ) -> &mut Self {
        self.push("VALUES ");
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.push("(");
            row(self.separated(", "), item);
            self.push(")");
        }
        self
    }

    /// The statement built so far.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    pub fn build(self) -> Query<'q> {
        Query {
            sql: Cow::Owned(self.sql),
            values: self.values,
            persistent: true,
        }
    }
}

/// Pushes items with a separator between them (see [`QueryBuilder::separated`]).
pub struct Separated<'b, 'q> {
    builder: &'b mut QueryBuilder<'q>,
    separator: &'static str,
    first: bool,
}

impl<'q> Separated<'_, 'q> {
    fn separate(&mut self) {
        if !self.first {
            self.builder.push(self.separator);
        }
        self.first = false;
    }

    /// Appends SQL text as the next item.
    pub fn push(&mut self, sql: impl Display) -> &mut Self {
        self.separate();
        self.builder.push(sql);
        self
    }

    /// Appends a placeholder bound to `value` as the next item.
    pub fn push_bind(&mut self, value: impl Into<Value<'q>>) -> &mut Self {
        self.separate();
        self.builder.push_bind(value);
        self
    }

    /// Appends SQL text to the current item (no separator).
    pub fn push_unseparated(&mut self, sql: impl Display) -> &mut Self {
        self.builder.push(sql);
        self
    }
}

impl Tx {
    /// Which engine the transaction runs on.
    pub fn engine(&self) -> Engine {
        match self {
            Self::Sqlite(_) => Engine::Sqlite,
            Self::Postgres(_) => Engine::Postgres,
        }
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(tx) => tx.commit().await?,
            Self::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(tx) => tx.rollback().await?,
            Self::Postgres(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_runs_numbered_parameters_and_keeps_dollars_in_literals() {
        let db = Db::connect("sqlite::memory:").await.expect("connect");
        let on = (&db).on();
        assert_eq!(
            for_engine("SELECT $1, '$2 stays', $10 FROM t WHERE a = $2", &on),
            "SELECT ?1, '$2 stays', ?10 FROM t WHERE a = ?2"
        );
        assert_eq!(
            for_engine(
                "INSERT INTO t VALUES ($1, $2), ($3, $4), ($5, $6), ($7, $8), ($9, $10), ($11, $12)",
                &on
            ),
            "INSERT INTO t VALUES (?, ?), (?, ?), (?, ?), (?, ?), (?, ?), (?, ?)"
        );
        assert!(matches!(for_engine("SELECT 1", &on), Cow::Borrowed(_)));
        let (a, b, c): (i64, String, i64) = query("SELECT $2, '$1', $1")
            .bind(7_i64)
            .bind(9_i64)
            .fetch_one(&db)
            .await
            .expect("select");
        assert_eq!((a, b.as_str(), c), (9, "$1", 7));
    }

    #[test]
    fn placeholders_are_numbered_as_values_are_pushed() {
        let mut builder = QueryBuilder::new("INSERT INTO t (a, b) ");
        builder.push_values([(1_i64, "x"), (2, "y")], |mut row, (a, b)| {
            row.push_bind(a).push_bind(b);
        });
        builder.push(" ON CONFLICT DO NOTHING");
        assert_eq!(
            builder.sql(),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) ON CONFLICT DO NOTHING"
        );
        let query = builder.build();
        assert_eq!(query.values.len(), 4);
        assert_eq!(query.values[3], Value::Text(Some(Cow::Borrowed("y"))));
    }

    #[test]
    fn a_null_keeps_its_type() {
        let none: Option<Uuid> = None;
        assert_eq!(Value::from(none), Value::Uuid(None));
    }
}
