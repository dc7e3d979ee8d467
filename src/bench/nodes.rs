//! `parkflow bench nodes`: the same simulated traffic against one gateway and against two
//! gateway nodes sharing the lots (`--node-id`), side by side, each a separate process with the
//! same external Mosquitto and a fresh PostgreSQL database: decisions (the gateway's own
//! `parkflow_decision_seconds`, arrival to published command), reads each node took, the lots
//! each held, the CPU each used, and what the simulator verified. On one machine the nodes share
//! its cores: the figures show the split and the cost of the leases, not a speed-up.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::chaos::parts::{Broker, Gateway, Mosquitto, PgDatabase, Sim, owners};

/// The demo city with this many gated lots makes the traffic; the simulator's rate per lot.
const CITY: &str = "district";
const ARRIVALS_PER_MINUTE: &str = "120";

/// One node's figures, read from its `/metrics` (with the admin key) and `/proc`.
#[derive(Debug, Default)]
struct NodeFigures {
    reads: f64,
    decision_p50_ms: f64,
    decision_p99_ms: f64,
    cpu_s: f64,
}

pub async fn run(seconds: u64, postgres_url: &str) -> anyhow::Result<()> {
    println!(
        "scenario=nodes city={CITY} seconds={seconds} arrivals_per_minute={ARRIVALS_PER_MINUTE}"
    );
    // One gateway as before; one node alone (the leases' and fences' cost); two nodes.
    for (nodes, leased) in [(1, false), (1, true), (2, true)] {
        round(nodes, leased, seconds, postgres_url)
            .await
            .with_context(|| format!("with {nodes} node(s)"))?;
    }
    Ok(())
}

async fn round(nodes: usize, leased: bool, seconds: u64, postgres_url: &str) -> anyhow::Result<()> {
    let setup = match (nodes, leased) {
        (1, false) => "one",
        (1, true) => "one_node",
        _ => "two_nodes",
    };
    let dir = tempfile::tempdir()?;
    let devices = dir.path().join("devices.json");
    let mut mosquitto = Mosquitto::start(dir.path())?;
    mosquitto.listening().await?;
    let database = PgDatabase::create(postgres_url).await?;
    let db_url = database.url(database.addr)?;
    let mut gateways = Vec::new();
    for i in 0..nodes {
        let name = ["a", "b"][i];
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub)?;
        let file = if i == 0 {
            devices.clone()
        } else {
            sub.join("devices.json")
        };
        let broker = Broker::External(format!("mqtt://{}", mosquitto.addr));
        let mut gateway = Gateway::new(&sub, &db_url, broker, &file)?.city(CITY);
        if leased {
            gateway = gateway.node(name);
        }
        gateway.start()?;
        gateway.ready(Duration::from_secs(300)).await?;
        gateways.push(gateway);
    }
    if nodes > 1 {
        // Both hold their share before the traffic starts.
        let started = std::time::Instant::now();
        while owners(&db_url).await?.len() < nodes && started.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let held = if leased {
        owners(&db_url).await?
    } else {
        BTreeMap::new()
    };
    let before: Vec<f64> = gateways
        .iter()
        .map(|g| cpu_seconds(g).unwrap_or(0.0))
        .collect();
    let sim = Sim::start_at(
        &devices,
        mosquitto.addr,
        &gateways[0].api(),
        seconds,
        ARRIVALS_PER_MINUTE,
        CITY,
        crate::chaos::parts::Lanes::Wait,
    )?;
    let report = sim.report().await?;
    if !report.passed {
        for line in report.text.lines().rev().take(5) {
            println!("sim: {line}");
        }
    }
    let mut figures = Vec::new();
    for (gateway, cpu_before) in gateways.iter().zip(before) {
        let mut node = scrape(gateway).await?;
        node.cpu_s = cpu_seconds(gateway).unwrap_or(0.0) - cpu_before;
        figures.push(node);
    }
    let names = ["a", "b"];
    for (i, node) in figures.iter().enumerate() {
        println!(
            "setup={setup} node={} lots_held={} reads={:.0} decision_p50_ms={:.2} decision_p99_ms={:.2} cpu_s={:.1}",
            if leased { names[i] } else { "-" },
            held.get(names[i]).map_or("all".to_owned(), i64::to_string),
            node.reads,
            node.decision_p50_ms,
            node.decision_p99_ms,
            node.cpu_s,
        );
    }
    println!(
        "setup={setup} sent={} recorded={} lost={} duplicated={} longest_wait_ms={} verify={}",
        report.figure("sent"),
        report.figure("recorded"),
        report.figure("lost"),
        report.figure("duplicated"),
        report.figure("longest_wait_ms"),
        if report.passed { "pass" } else { "fail" },
    );
    for gateway in &mut gateways {
        gateway.kill().await;
    }
    mosquitto.kill().await;
    database.drop_database().await?;
    anyhow::ensure!(
        report.figure("lost") == 0 && report.figure("duplicated") == 0,
        "reads lost or applied twice"
    );
    Ok(())
}

/// A node's decisions and reads from its `/metrics`.
async fn scrape(gateway: &Gateway) -> anyhow::Result<NodeFigures> {
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", gateway.api()))
        .bearer_auth(crate::chaos::parts::ADMIN_KEY)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let value = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("parkflow_decision_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, count) = l.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    Ok(NodeFigures {
        reads: value("parkflow_plate_reads_total"),
        decision_p50_ms: quantile(&buckets, 0.5) * 1e3,
        decision_p99_ms: quantile(&buckets, 0.99) * 1e3,
        cpu_s: 0.0,
    })
}

/// The upper bound of the bucket the `q` quantile falls in (cumulative buckets).
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return 0.0;
    };
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map_or(0.0, |(le, _)| *le)
}

/// The process's CPU time so far (user and system), in seconds.
fn cpu_seconds(gateway: &Gateway) -> Option<f64> {
    let pid = gateway.pid()?;
    let stat =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantile_is_the_bound_of_its_bucket() {
        let buckets = [
            (0.001, 50.0),
            (0.002, 98.0),
            (0.004, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(quantile(&buckets, 0.5), 0.001);
        assert_eq!(quantile(&buckets, 0.99), 0.004);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
