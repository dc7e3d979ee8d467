//! Barrier control back to an off-the-shelf camera: the gate actor's decision, for a lane whose
//! camera is an `anpr_http` camera with HTTP control, becomes the vendor's barrier call. The
//! actor never waits for it: [`BarrierRelay::send`] queues the call (`try_send`), a task makes it
//! with a timeout and retries, and the outcome is kept per lane (`GET /v1/lots/{lot}/lanes`),
//! counted in `parkflow_barrier_calls_total{result}` and, when it fails, logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parkflow_protocol::{GateAction, GateCommand, GateId, LotId};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Vendor;
use crate::metrics::Metrics;

/// Calls waiting to be made, at most (beyond, a call is dropped and counted: the camera's lane
/// shows it failed).
const QUEUE: usize = 1_024;
/// One attempt's limit.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts per call.
const ATTEMPTS: u32 = 3;
/// Calls in flight at once, at most.
const CALLS_AT_ONCE: usize = 256;

/// Where barrier calls may go. Cameras live on private networks, so private addresses are
/// allowed; what an operator must not reach through the platform is: this machine (loopback,
/// unless `loopback` — a camera simulator or bench on the platform's host), link-local and the
/// clouds' metadata services (169.254.169.254; Alibaba's 100.100.100.200; AWS's fd00:ec2::254),
/// unspecified, broadcast and multicast addresses.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Destinations {
    pub loopback: bool,
}

impl Destinations {
    pub(crate) fn permits(self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = ip.to_canonical();
        if ip.is_loopback() {
            return self.loopback;
        }
        if ip.is_unspecified() || ip.is_multicast() {
            return false;
        }
        match ip {
            IpAddr::V4(v4) => {
                !(v4.is_link_local()
                    || v4.is_broadcast()
                    || v4.octets()[0] == 0
                    || v4 == std::net::Ipv4Addr::new(100, 100, 100, 200))
            }
            IpAddr::V6(v6) => {
                let fe80 = (v6.segments()[0] & 0xffc0) == 0xfe80;
                let aws_metadata = v6.segments() == [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254];
                !(fe80 || aws_metadata)
            }
        }
    }

    /// Why a control URL may not be called (`None`: it may). A name is checked again on each
    /// call, against what it resolves to.
    pub(crate) fn refuses(self, url: &reqwest::Url) -> Option<String> {
        let refused = |what: &str| {
            Some(format!(
                "control.url may not point at {what}: barrier calls go to cameras, not to the platform's own machine or network services"
            ))
        };
        match url.host() {
            None => Some("control.url names a host".into()),
            Some(url::Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                (!self.loopback && (name == "localhost" || name.ends_with(".localhost")))
                    .then(|| refused("this machine"))
                    .flatten()
            }
            Some(url::Host::Ipv4(ip)) => (!self.permits(ip.into()))
                .then(|| refused(&ip.to_string()))
                .flatten(),
            Some(url::Host::Ipv6(ip)) => (!self.permits(ip.into()))
                .then(|| refused(&ip.to_string()))
                .flatten(),
        }
    }
}

/// Resolves control URLs' names to the addresses [`Destinations`] permits only, so that a name
/// cannot lead a call where an address could not.
struct Resolver(Destinations);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let destinations = self.0;
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let permitted: Vec<std::net::SocketAddr> = found
                .filter(|addr| destinations.permits(addr.ip()))
                .collect();
            if permitted.is_empty() {
                return Err(format!(
                    "{} resolves to no address a barrier call may go to",
                    name.as_str()
                )
                .into());
            }
            Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// How a camera's barrier is opened over HTTP.
#[derive(Clone)]
pub(crate) struct HttpControl {
    pub vendor: Vendor,
    pub url: String,
    pub username: Option<String>,
    pub password: Option<SecretString>,
}

/// One barrier call to make.
pub(crate) struct Call {
    pub lot: LotId,
    pub gate: GateId,
    pub control: HttpControl,
    pub command: GateCommand,
}

/// The last barrier call of a lane, as its operator sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct CallOutcome {
    pub command_id: uuid::Uuid,
    #[schema(value_type = String)]
    pub action: GateAction,
    #[serde(with = "parkflow_protocol::time::rfc3339")]
    pub at: DateTime<Utc>,
    pub ok: bool,
    pub attempts: u32,
    /// Why it failed (the last attempt's error).
    pub error: Option<String>,
}

/// Lanes' last barrier calls, by lot and gate.
pub(crate) type Outcomes = Arc<Mutex<HashMap<(LotId, GateId), CallOutcome>>>;

/// Queues barrier calls for the task that makes them.
#[derive(Clone)]
pub(crate) struct BarrierRelay {
    /// Where its calls may go.
    pub destinations: Destinations,
    tx: mpsc::Sender<Call>,
    outcomes: Outcomes,
    /// The command each lane was last given.
    last: Arc<Mutex<HashMap<(LotId, GateId), uuid::Uuid>>>,
}

/// The task that makes a relay's calls ([`RelayTask::run`]).
pub(crate) struct RelayTask {
    rx: mpsc::Receiver<Call>,
    client: Caller,
    outcomes: Outcomes,
    metrics: Arc<Metrics>,
}

impl RelayTask {
    /// Makes the calls until `token` is cancelled.
    pub(crate) async fn run(self, token: CancellationToken) {
        run(self.rx, self.client, self.outcomes, self.metrics, token).await;
    }
}

/// Makes barrier calls: the HTTP client, and each camera's last challenge (with the count of a
/// Digest nonce's uses), so that a camera that wants credentials (Hikvision's ISAPI wants Digest)
/// refuses once and is then answered directly, without a refused round trip before every open.
#[derive(Clone)]
struct Caller {
    http: reqwest::Client,
    challenges: Arc<Mutex<HashMap<String, (String, u32)>>>,
    destinations: Destinations,
}

impl Caller {
    /// The `Authorization` for `url` from the challenge it last sent, if it sent one: the next
    /// Digest answer, or Basic for a camera that asked for Basic.
    fn authorization(&self, url: &str, method: &str, user: &str, password: &str) -> Option<String> {
        let mut challenges = self.challenges.lock().unwrap_or_else(|e| e.into_inner());
        let (challenge, used) = challenges.get_mut(url)?;
        if challenge.trim_start().starts_with("Basic") {
            use base64::Engine as _;
            let pair =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            return Some(format!("Basic {pair}"));
        }
        *used += 1;
        super::digest::respond(challenge, method, &uri_of(url), user, password, *used)
    }

    fn keep_challenge(&self, url: &str, challenge: &str) {
        self.challenges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(url.to_owned(), (challenge.to_owned(), 0));
    }
}

/// The request-target a Digest answer names: the URL's path and query.
fn uri_of(url: &str) -> String {
    reqwest::Url::parse(url).map_or_else(
        |_| "/".to_owned(),
        |u| match u.query() {
            Some(query) => format!("{}?{query}", u.path()),
            None => u.path().to_owned(),
        },
    )
}

impl BarrierRelay {
    /// The relay, and the task that makes its calls (only to `destinations`).
    pub(crate) fn new(metrics: Arc<Metrics>, destinations: Destinations) -> (Self, RelayTask) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let outcomes = Outcomes::default();
        // No redirects: the call goes where the operator said, nowhere a camera points it.
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(Resolver(destinations)))
            .build()
            .unwrap_or_default();
        let task = RelayTask {
            rx,
            client: Caller {
                http: client,
                challenges: Arc::default(),
                destinations,
            },
            outcomes: outcomes.clone(),
            metrics,
        };
        (
            Self {
                destinations,
                tx,
                outcomes,
                last: Arc::default(),
            },
            task,
        )
    }

    /// Queues `call` without waiting: the decision path never blocks on a camera. A command the
    /// lane's barrier was already given (a repeated event answered again: a camera re-sending,
    /// Axis's `update` and `lost` of the same car) or one expired is not called again: the
    /// barrier must not open a second time for the car behind.
    pub(crate) fn send(&self, call: Call) {
        if call.command.expires_at < Utc::now() {
            return;
        }
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let lane = (call.lot.clone(), call.gate.clone());
            if last.get(&lane) == Some(&call.command.command_id) {
                return;
            }
            last.insert(lane, call.command.command_id);
        }
        if let Err(error) = self.tx.try_send(call) {
            let call = match error {
                mpsc::error::TrySendError::Full(call) | mpsc::error::TrySendError::Closed(call) => {
                    call
                }
            };
            tracing::error!(lot = %call.lot, gate = %call.gate, "barrier call queue full: call dropped");
            record(
                &self.outcomes,
                &call,
                0,
                Err("the platform's barrier call queue was full".into()),
            );
        }
    }

    /// The last call of each lane of `lot`.
    pub(crate) fn outcomes_of(&self, lot: &LotId) -> Vec<(GateId, CallOutcome)> {
        let outcomes = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        let mut of_lot: Vec<_> = outcomes
            .iter()
            .filter(|((l, _), _)| l == lot)
            .map(|((_, gate), outcome)| (gate.clone(), outcome.clone()))
            .collect();
        of_lot.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        of_lot
    }
}

async fn run(
    mut rx: mpsc::Receiver<Call>,
    client: Caller,
    outcomes: Outcomes,
    metrics: Arc<Metrics>,
    token: CancellationToken,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(CALLS_AT_ONCE));
    loop {
        let call = tokio::select! {
            () = token.cancelled() => break,
            call = rx.recv() => match call { Some(call) => call, None => break },
        };
        // Each call on its own task: a slow camera does not hold up another lane's barrier. At
        // most CALLS_AT_ONCE are in flight; beyond, the queue fills and calls are dropped (and
        // shown failed on their lane) rather than tasks piling up behind dead cameras.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (client, outcomes, metrics) = (client.clone(), outcomes.clone(), metrics.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let (attempts, result) = call_with_retries(&client, &call).await;
            let label = if result.is_ok() { "ok" } else { "failed" };
            metrics
                .barrier_calls
                .get_or_create(&crate::metrics::OutcomeLabel { outcome: label })
                .inc();
            if let Err(error) = &result {
                tracing::warn!(lot = %call.lot, gate = %call.gate, attempts, %error, "barrier call failed");
            }
            record(&outcomes, &call, attempts, result);
        });
    }
}

fn record(outcomes: &Outcomes, call: &Call, attempts: u32, result: Result<(), String>) {
    let outcome = CallOutcome {
        command_id: call.command.command_id,
        action: call.command.action,
        at: Utc::now(),
        ok: result.is_ok(),
        attempts,
        error: result.err(),
    };
    outcomes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((call.lot.clone(), call.gate.clone()), outcome);
}

/// Makes the call, up to [`ATTEMPTS`] times with a short back-off; the attempts and the outcome.
async fn call_with_retries(client: &Caller, call: &Call) -> (u32, Result<(), String>) {
    let mut last = Err(String::new());
    for attempt in 1..=ATTEMPTS {
        last = once(client, call).await;
        if last.is_ok() {
            return (attempt, last);
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
    }
    (ATTEMPTS, last)
}

/// One attempt: the vendor's barrier call for `open` (a `hold` leaves a vendor's barrier down and
/// calls nothing), or the generic relay's JSON for every command. With credentials, a camera's
/// kept Digest challenge is answered; a camera that refuses asks again (`401`), and its challenge
/// is answered at once, Digest if it offers it, else Basic.
async fn once(client: &Caller, call: &Call) -> Result<(), String> {
    let control = &call.control;
    // Addresses are checked here (names as they resolve): a URL stored before a rule changed,
    // or written to the database directly, is refused all the same.
    let url = reqwest::Url::parse(&control.url).map_err(|e| e.to_string())?;
    if let Some(refused) = client.destinations.refuses(&url) {
        return Err(refused);
    }
    let method = match control.vendor {
        Vendor::Hikvision | Vendor::Dahua if call.command.action != GateAction::Open => {
            return Ok(());
        }
        Vendor::Hikvision => reqwest::Method::PUT,
        Vendor::Dahua => reqwest::Method::GET,
        Vendor::Axis | Vendor::Platerecognizer | Vendor::Openalpr => reqwest::Method::POST,
    };
    let request = |authorization: Option<String>| {
        let request = client.http.request(method.clone(), &control.url);
        let request = match control.vendor {
            Vendor::Hikvision => request
                .header("content-type", "application/xml")
                .body(HIKVISION_OPEN),
            Vendor::Dahua => request,
            Vendor::Axis | Vendor::Platerecognizer | Vendor::Openalpr => request.json(&RelayBody {
                action: call.command.action,
                reason: call.command.reason,
                command_id: call.command.command_id,
                event_id: call.command.event_id.as_str(),
                lot: call.lot.as_str(),
                gate: call.gate.as_str(),
            }),
        };
        match authorization {
            Some(value) => request.header(reqwest::header::AUTHORIZATION, value),
            None => request,
        }
    };
    let credentials = control.username.as_deref().map(|user| {
        (
            user,
            control.password.as_ref().map_or("", |p| p.expose_secret()),
        )
    });
    let kept = credentials.and_then(|(user, password)| {
        client.authorization(&control.url, method.as_str(), user, password)
    });
    let mut response = request(kept).send().await.map_err(|e| e.to_string())?;
    if response.status() == reqwest::StatusCode::UNAUTHORIZED
        && let Some((user, password)) = credentials
    {
        let offered: Vec<String> = response
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        // Digest when offered (the password never crosses the network), else Basic.
        let challenge = offered
            .iter()
            .find(|c| c.trim_start().starts_with("Digest "))
            .or_else(|| offered.iter().find(|c| c.trim_start().starts_with("Basic")));
        if let Some(challenge) = challenge {
            client.keep_challenge(&control.url, challenge);
        }
        if let Some(authorization) =
            client.authorization(&control.url, method.as_str(), user, password)
        {
            response = request(Some(authorization))
                .send()
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("the camera answered {}", response.status()))
    }
}

/// Hikvision ISAPI barrier-gate control: open.
const HIKVISION_OPEN: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<BarrierGate version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema"><ctrlMode>open</ctrlMode></BarrierGate>"#;

/// What a generic HTTP relay receives: the decision, as on MQTT.
#[derive(Serialize)]
struct RelayBody<'a> {
    action: GateAction,
    reason: parkflow_protocol::GateReason,
    command_id: uuid::Uuid,
    event_id: &'a str,
    lot: &'a str,
    gate: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barrier_calls_go_to_cameras_not_to_the_platforms_machine_or_cloud_services() {
        let production = Destinations::default();
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        for camera in [
            "http://10.0.0.5/ISAPI/Parking/channels/1/barrierGate",
            "http://192.168.1.64/cgi-bin/configManager.cgi",
            "http://172.16.8.2/relay",
            "https://camera-3.lot.example/relay",
            "http://[fd12:3456::5]/relay",
        ] {
            assert_eq!(production.refuses(&url(camera)), None, "{camera}");
        }
        for forbidden in [
            "http://127.0.0.1:8080/v1/keys",
            "http://localhost/",
            "http://api.localhost/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://100.100.100.200/latest/meta-data/",
            "http://[fd00:ec2::254]/latest/meta-data/",
            "http://[fe80::1]/",
            "http://0.0.0.0/",
            "http://255.255.255.255/",
            "http://224.0.0.1/",
        ] {
            assert!(production.refuses(&url(forbidden)).is_some(), "{forbidden}");
        }
        let on_this_host = Destinations { loopback: true };
        assert_eq!(on_this_host.refuses(&url("http://127.0.0.1:9/")), None);
        assert!(
            on_this_host
                .refuses(&url("http://169.254.169.254/"))
                .is_some()
        );
    }
}
