//! `parkflow bench <scenario>`: each scenario runs the real path and a baseline back to back in one
//! invocation, prints one `key=value` line per figure, then `ratio=<name> value=<x> goal=<y> pass|fail`.
//! Figures are for BENCHMARKS.md; nothing here is a test.

pub mod anpr;
pub mod api;
mod background;
pub mod barrier;
pub mod broker;
pub mod city;
pub mod nodes;
pub mod persist;
pub mod settle;
pub mod standing;

use std::time::Duration;

use anyhow::Context;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// The PostgreSQL server `bench all` also runs the database scenarios on, when set.
pub const POSTGRES_ENV: &str = "PARKFLOW_BENCH_POSTGRES_URL";

/// Runs `scenario(url, engine)` on SQLite in a temp file, or, given a `postgres://` URL, in a
/// fresh database created on that server and dropped afterwards.
pub async fn on_engine<F, Fut>(database_url: Option<String>, scenario: F) -> anyhow::Result<()>
where
    F: FnOnce(String, &'static str) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let Some(url) = database_url else {
        let dir = std::env::temp_dir().join(format!("parkflow-bench-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let url = format!("sqlite:{}", dir.join("bench.db").display());
        let result = scenario(url, "sqlite").await;
        let _ = std::fs::remove_dir_all(&dir);
        return result;
    };
    anyhow::ensure!(
        url.starts_with("postgres:") || url.starts_with("postgresql:"),
        "expected a postgres:// URL"
    );
    let mut admin = PgConnection::connect(&url)
        .await
        .context("failed to connect to postgres")?;
    let name = format!("parkflow_bench_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    let mut fresh = url::Url::parse(&url)?;
    fresh.set_path(&name);
    let result = scenario(fresh.to_string(), "postgres").await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .context("failed to drop the bench database")?;
    admin.close().await?;
    result
}

/// `parkflow bench all`: every scenario one after another (`quick`: small, for CI — it checks
/// that each runs and that nothing is lost or duplicated, not the speed).
pub async fn all(quick: bool) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    let scale = |quick_value: usize, full: usize| if quick { quick_value } else { full };
    let postgres = std::env::var(POSTGRES_ENV)
        .ok()
        .filter(|url| !url.is_empty());
    let mut outcomes: Vec<(&str, anyhow::Result<()>)> = vec![
        (
            "barrier",
            barrier::run(scale(200, 2_000), 10_000, None, false).await,
        ),
        ("anpr", anpr::run(scale(200, 2_000)).await),
        ("broker", broker::run(scale(20_000, 200_000) as u64).await),
        ("ingest", city::ingest(scale(8_000, 200_000), false).await),
        ("burst", city::run(scale(8_000, 848_000), true, false).await),
        (
            "api",
            api::run(scale(500, 5_000), if quick { 1 } else { 5 }).await,
        ),
        ("persist", persist::run(scale(5_000, 200_000), None).await),
        (
            "standing",
            standing::run(if quick {
                &[10_000]
            } else {
                &[10_000, 100_000, 1_000_000]
            }),
        ),
        ("settle", settle::run(scale(5_000, 1_000_000), None).await),
    ];
    if let Some(url) = postgres {
        outcomes.push((
            "persist postgres",
            persist::run(scale(5_000, 200_000), Some(url.clone())).await,
        ));
        outcomes.push((
            "settle postgres",
            settle::run(scale(5_000, 1_000_000), Some(url)).await,
        ));
    }
    for (name, outcome) in outcomes {
        if let Err(error) = outcome {
            println!("scenario={name} failed: {error:#}");
            failed.push(name);
        }
    }
    anyhow::ensure!(failed.is_empty(), "scenarios failed: {}", failed.join(", "));
    println!("scenarios=all failed=0");
    Ok(())
}

/// Percentiles of a sample of durations, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples
                .get(i)
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1_000.0)
        };
        Self {
            p50: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
            max: at(1.0),
        }
    }

    /// `prefix_p50_ms=… prefix_p99_ms=… …`
    pub fn line(&self, prefix: &str) -> String {
        format!(
            "{prefix}_p50_ms={:.3} {prefix}_p99_ms={:.3} {prefix}_p999_ms={:.3} {prefix}_max_ms={:.3}",
            self.p50, self.p99, self.p999, self.max
        )
    }
}

/// The closing line of a figure compared with its goal.
/// The value of `series` (its name with labels, as exported) in Prometheus text `exposition`;
/// 0 when absent.
pub fn metric_value(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn ratio(name: &str, value: f64, goal: f64, lower_is_better: bool) -> String {
    let pass = if lower_is_better {
        value <= goal
    } else {
        value >= goal
    };
    format!(
        "ratio={name} value={value:.3} goal={goal} {}",
        if pass { "pass" } else { "fail" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_sorted_sample() {
        let mut samples: Vec<Duration> = (1..=1000).rev().map(Duration::from_millis).collect();
        let latency = Latency::of(&mut samples);
        assert_eq!(
            (latency.p50.round(), latency.p99.round(), latency.max),
            (501.0, 990.0, 1000.0)
        );
    }

    #[test]
    fn a_ratio_passes_on_the_right_side_of_its_goal() {
        assert!(ratio("x", 1.2, 1.5, true).ends_with("pass"));
        assert!(ratio("x", 1.6, 1.5, true).ends_with("fail"));
        assert!(ratio("x", 0.8, 0.7, false).ends_with("pass"));
    }
}
