//! `parkflow bench standing`: one gate's standing list (SPEC §2) for a city of N plates that may
//! leave first — its size once signed, the time to make it (hash every plate, sort, encode,
//! sign), a delta of one plate in and one out, and the lane's time to open it — beside the same
//! plates sent in the clear as a signed JSON array (the baseline).

use std::time::Instant;

use anyhow::Context;
use chrono::Utc;
use parkflow_protocol::sign::{open, seal};
use parkflow_protocol::standing::{
    OfflinePolicy, PlateSets, StandingKey, StandingList, StandingView,
};
use parkflow_protocol::{DeviceAuth, DeviceId, GateId, LotId, Topic};

/// The baseline: the plates as a JSON array, in the clear.
#[derive(serde::Serialize)]
struct Clear<'a> {
    plates: &'a [String],
}

/// What the embedded broker carries (its payload limit, less room for the topic).
const EMBEDDED_LIMIT: usize = 480 * 1024;

/// `n` distinct Chinese plates: a province, a letter, five digits.
fn plates(n: usize) -> Vec<String> {
    const LETTERS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
    (0..n)
        .map(|i| {
            let letter = LETTERS[(i / 100_000) % LETTERS.len()] as char;
            format!("浙{letter}{:05}", i % 100_000)
        })
        .collect()
}

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}

/// Runs the scenario for each count of plates.
pub fn run(counts: &[usize]) -> anyhow::Result<()> {
    let lot = LotId::parse("lot-bench")?;
    let gate = GateId::parse("out-1")?;
    let camera = DeviceId::parse("cam-bench")?;
    let secret = b"0123456789abcdef0123456789abcdef";
    let topic = Topic::GateStanding {
        lot: lot.clone(),
        gate: gate.clone(),
    };
    let key = StandingKey::derive(b"bench plate key");
    for &n in counts {
        let plates = plates(n);
        // Baseline: the plates in the clear, signed the same way.
        let started = Instant::now();
        let clear = seal(&topic, &Clear { plates: &plates }, &camera, secret);
        let clear_ms = ms(started);

        let started = Instant::now();
        let sets = PlateSets {
            leave_first: plates.iter().map(|p| key.hash(p)).collect(),
            ..PlateSets::default()
        };
        let list = StandingList {
            version: 1,
            base: 1,
            issued_at: Utc::now(),
            key: key.wrap(secret),
            offline_policy: OfflinePolicy::OpenAndInvoice,
            capacity: 500,
            occupied: 0,
            plates: sets.clone(),
            removed: None,
        };
        let full = seal(&topic, &list, &camera, secret);
        let full_ms = ms(started);

        // A delta: one driver enrolled, another suspended, diffed against the full list as
        // the keeper does.
        let started = Instant::now();
        let mut now = sets.clone();
        now.leave_first = plates
            .iter()
            .skip(1)
            .map(|p| key.hash(p))
            .chain([key.hash("浙Z99999")])
            .collect();
        let delta = StandingList {
            version: 2,
            plates: now.minus(&sets),
            removed: Some(sets.minus(&now)),
            ..list.clone()
        };
        let delta_payload = seal(&topic, &delta, &camera, secret);
        let delta_ms = ms(started);

        // The lane: verify, decode, take it, look a plate up.
        let started = Instant::now();
        let opened = open::<StandingList, _>(&full, &topic.to_string(), DeviceAuth::Signed, |_| {
            Some(secret)
        })
        .context("the lane opens its list")?;
        let mut view = StandingView::default();
        view.apply(opened.body, secret)
            .map_err(|e| anyhow::anyhow!("the lane takes its list: {e}"))?;
        let decided = view.decide(&plates[n / 2], parkflow_protocol::Direction::Exit, 0);
        let lane_ms = ms(started);
        anyhow::ensure!(
            decided.1 == parkflow_protocol::GateReason::BillLater,
            "a listed plate leaves first"
        );
        println!(
            "standing plates={n} full_bytes={} bytes_per_plate={:.1} full_ms={full_ms:.1} clear_bytes={} clear_ms={clear_ms:.1} delta_bytes={} delta_ms={delta_ms:.1} lane_open_ms={lane_ms:.1} fits_embedded_broker={}",
            full.len(),
            full.len() as f64 / n as f64,
            clear.len(),
            delta_payload.len(),
            full.len() <= EMBEDDED_LIMIT,
        );
        anyhow::ensure!(clear.len() > n * 9, "the baseline carries every plate");
        let ratio = full.len() as f64 / clear.len() as f64;
        println!(
            "ratio=standing_bytes_vs_clear plates={n} value={ratio:.2} goal=1.00 {}",
            if ratio <= 1.0 { "pass" } else { "fail" }
        );
    }
    Ok(())
}
