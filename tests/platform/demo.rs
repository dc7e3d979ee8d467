//! The README's first command: `parkflow run --demo` brings up a demo city whose simulated traffic
//! opens and closes priced sessions within a minute, visible in `/metrics`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{eventually, free_addr};

/// Kills the demo when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `/metrics` as the platform admin reads it (it carries revenue figures: no key, no answer).
async fn metrics_text(url: &str, admin_key: &str) -> Option<String> {
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(admin_key)
        .send()
        .await
        .ok()?;
    response.text().await.ok()
}

/// Waits until the platform at `http` answers `/readyz` with 200.
async fn ready(http: &str) {
    eventually(Duration::from_secs(20), "the platform ready", || {
        let url = format!("{http}/readyz");
        async move {
            reqwest::get(&url)
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(drop)
        }
    })
    .await;
}

/// Starts `parkflow run --demo` (plus `extra` flags) on a fresh database and free ports, writing
/// its devices file to `devices`; returns the process and its HTTP address.
fn start_demo(
    dir: &std::path::Path,
    devices: &std::path::Path,
    mqtt: std::net::SocketAddr,
    extra: &[&str],
) -> (Child, String) {
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_parkflow"))
            .args(["run", "--demo", "--http-listen", "127.0.0.1:0"])
            .args(extra)
            .arg("--mqtt-listen")
            .arg(mqtt.to_string())
            .arg("--database-url")
            .arg(format!("sqlite:{}", dir.join("demo.db").display()))
            .arg("--demo-devices")
            .arg(devices)
            .env("PARKFLOW_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("parkflow runs"),
    );
    let stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut http = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("HTTP API") {
            let url = rest.split_whitespace().next().unwrap();
            http = Some(url.trim_end_matches("/v1/").to_owned());
        }
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    (child, http.expect("the demo prints its HTTP address"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_opens_and_closes_priced_sessions_within_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let devices = dir.path().join("devices.json");
    let (_child, http) = start_demo(
        dir.path(),
        &devices,
        free_addr(),
        &["--admin-key", "demo-admin-key-0123456789abcdef01"],
    );

    // The devices file lets an outside device join: every lot leaves a camera unsimulated.
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&devices).unwrap()).unwrap();
    let entries = file["devices"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|d| d["simulated"] == false && d["kind"] == "gate_camera")
    );
    assert!(
        entries
            .iter()
            // At least 128 random bits each (22 URL-safe base64 characters).
            .all(|d| d["secret"].as_str().is_some_and(|s| s.len() >= 22))
    );

    let closed = eventually(
        Duration::from_secs(90),
        "closed sessions in /metrics",
        || {
            let url = format!("{http}/metrics");
            async move {
                let text = metrics_text(&url, "demo-admin-key-0123456789abcdef01").await?;
                let value = |name: &str| -> f64 {
                    text.lines()
                        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                        .unwrap_or(0.0)
                };
                let closed = value("parkflow_sessions_closed_total");
                (closed >= 1.0 && value("parkflow_fees_minor_units_total") > 0.0).then_some(closed)
            }
        },
    )
    .await;
    assert!(closed >= 1.0);
}

/// `parkflow sim --verify` drives an idle demo platform's devices from the devices file it wrote,
/// first in real time, then a few hours at 120× (stamped in the recent past), and finds every car
/// that entered with one session closed at its exit read, fees that agree with an independent
/// calculation, every read answered once, rogue reads refused; every bay event sent (duplicates
/// included) is applied or recognised as a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_verifies_that_nothing_was_lost_or_duplicated() {
    let dir = tempfile::tempdir().unwrap();
    let devices = dir.path().join("devices.json");
    let mqtt = free_addr();
    let (_platform, http) = start_demo(
        dir.path(),
        &devices,
        mqtt,
        &[
            "--demo-idle",
            "--admin-key",
            "verify-admin-key-0123456789abcdef",
        ],
    );
    ready(&http).await;

    let sim = |extra: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_parkflow"))
            .args(["sim", "--verify", "--duration-secs", "10", "--devices"])
            .arg(&devices)
            .arg("--mqtt-url")
            .arg(format!("mqtt://{mqtt}"))
            .args([
                "--api-url",
                &http,
                "--admin-key",
                "verify-admin-key-0123456789abcdef",
            ])
            .args(extra)
            .env("PARKFLOW_LOG", "warn")
            .output()
            .expect("parkflow sim runs");
        let report = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{report}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        report
    };
    let figure = |report: &str, line: &str, key: &str| -> f64 {
        report
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} in the report: {report}"))
    };

    // The lots' off-the-shelf camera lanes played too: Hikvision events over HTTP.
    let real_time = sim(&["--max-stay-secs", "15", "--play-anpr"]);
    assert!(real_time.contains("verify=pass"), "{real_time}");
    let sessions: serde_json::Value = reqwest::Client::new()
        .get(format!("{http}/v1/sessions?limit=1000"))
        .bearer_auth("verify-admin-key-0123456789abcdef")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        sessions
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["entry_event_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("hikvision:"))),
        "no stay entered through an ANPR lane: {sessions}"
    );
    assert!(figure(&real_time, "sent=", "sent") > 0.0, "{real_time}");
    assert_eq!(figure(&real_time, "sent=", "lost"), 0.0, "{real_time}");
    assert_eq!(
        figure(&real_time, "sent=", "duplicated"),
        0.0,
        "{real_time}"
    );
    assert!(
        figure(&real_time, "fees_checked", "fees_checked") > 0.0,
        "{real_time}"
    );
    assert!(
        figure(&real_time, "fees_checked", "rogue_sent") > 0.0,
        "{real_time}"
    );

    // Two hours of a lot in ten seconds, with stays of up to an hour: fees of several units.
    let fast = sim(&["--speed", "720", "--max-stay-secs", "3600"]);
    assert!(fast.contains("verify=pass"), "{fast}");
    assert!(figure(&fast, "sent=", "sent") > 0.0, "{fast}");
    assert!(
        figure(&fast, "fees_checked", "fees_checked") > 0.0,
        "{fast}"
    );

    let events = [&real_time, &fast]
        .iter()
        .map(|r| figure(r, "final street", "bay_events") + figure(r, "final street", "duplicates"))
        .sum::<f64>();
    assert!(events > 0.0);
    eventually(
        Duration::from_secs(10),
        "every bay event applied or seen as a repeat",
        || {
            let url = format!("{http}/metrics");
            async move {
                let text = metrics_text(&url, "verify-admin-key-0123456789abcdef").await?;
                let value = |name: &str| -> f64 {
                    text.lines()
                        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                        .unwrap_or(0.0)
                };
                let seen = value("parkflow_bay_events_total{outcome=\"applied\"}")
                    + value("parkflow_bay_events_total{outcome=\"stale\"}");
                (seen == events).then_some(())
            }
        },
    )
    .await;
}

/// `parkflow run --demo` run again on the same database keeps its city: every device keeps the
/// credentials it was given (a restart that drew fresh ones refused every device in the field,
/// while `/readyz` said ready).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_restarted_on_its_database_keeps_its_devices_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let devices = dir.path().join("devices.json");
    let secrets = |path: &std::path::Path| -> std::collections::BTreeMap<String, (String, String)> {
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        file["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["id"].as_str().unwrap().to_owned(),
                    (
                        d["secret"].as_str().unwrap().to_owned(),
                        d["mqtt_password"].as_str().unwrap().to_owned(),
                    ),
                )
            })
            .collect()
    };
    let flags = [
        "--demo-idle",
        "--admin-key",
        "restart-admin-key-0123456789abcdef",
    ];
    let (first, _) = start_demo(dir.path(), &devices, free_addr(), &flags);
    drop(first);
    let before = secrets(&devices);
    assert!(!before.is_empty());

    let mqtt = free_addr();
    let (_second, http) = start_demo(dir.path(), &devices, mqtt, &flags);
    assert_eq!(secrets(&devices), before, "a device's credentials changed");
    ready(&http).await;

    // A camera of the first run logs in to the second with what it was given then.
    let (id, (_, password)) = before
        .iter()
        .find(|(id, _)| id.starts_with("cam-"))
        .expect("a gate camera");
    let mut options = rumqttc::MqttOptions::new(id, mqtt.ip().to_string(), mqtt.port());
    options.set_credentials(id, password);
    let (_client, mut events) = rumqttc::AsyncClient::new(options, 10);
    let accepted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => {
                    break ack.code == rumqttc::ConnectReturnCode::Success;
                }
                Ok(_) => {}
                Err(_) => break false,
            }
        }
    })
    .await;
    assert_eq!(
        accepted,
        Ok(true),
        "the camera was refused after the restart"
    );

    // Each lot has a lane for an off-the-shelf camera: its credentials are in the file, and a
    // Hikvision event pushed with them is a read.
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&devices).unwrap()).unwrap();
    let anpr = file["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "anpr_http")
        .expect("an ANPR camera in the devices file");
    assert_eq!(anpr["vendor"], "hikvision");
    let event = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/anpr/hikvision_anpr.xml"),
    )
    .unwrap()
    .replace(
        "2025-03-14T08:21:07.512+08:00",
        &chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    );
    let answer = reqwest::Client::new()
        .post(format!("{http}/v1/anpr/{}", anpr["id"].as_str().unwrap()))
        .basic_auth(anpr["id"].as_str().unwrap(), anpr["mqtt_password"].as_str())
        .header("content-type", "text/xml")
        .body(event)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
}
