//! Mosquitto's dynamic security kept in step with the registry (`--broker-acl mosquitto-dynsec`).
//!
//! The platform logs in with the broker's dynsec admin account and, over
//! `$CONTROL/dynamic-security/v1`, gives every active device a broker client (user name, password
//! derived from its key by [`mqtt_password`], client id = device id) and a role of its own listing
//! exactly its [`grants`]; every client may also read availability (role `parkflow-reader`).
//! Anything not granted is refused by the broker's default access (publish and subscribe denied),
//! and the admin account gets `parkflow-platform`, which may do everything.
//!
//! Registration and rotation put the device's client at once (rotation deletes the old one
//! first, which disconnects it); revocation deletes it (disconnected within the command's round
//! trip). A reconciliation at start and every [`RECONCILE_EVERY`] puts what is missing or stale
//! and deletes what the registry no longer has. Clients this platform made carry
//! `parkflow:{its client id}` as their text name, so clients made by hand or by another platform
//! on the same broker are left alone; their text description fingerprints the password and
//! grants, so an unchanged device is not touched (nor disconnected).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Mutex, oneshot, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::MqttConfig;
use crate::registry::access::{AVAILABILITY_FILTER, Access, grants};
use crate::registry::{mqtt_password, password_hash};
use crate::store::registry::BrokerDevice;
use crate::store::{Db, StoreError};

/// How often the broker's clients are compared with the registry.
pub(crate) const RECONCILE_EVERY: Duration = Duration::from_secs(60);
/// How long one batch of commands may take (Mosquitto writes its whole file per command).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// Commands sent in one message.
const BATCH: usize = 50;
const COMMANDS: &str = "$CONTROL/dynamic-security/v1";
const RESPONSES: &str = "$CONTROL/dynamic-security/v1/response";
/// The role of the platform's own (admin) account.
const PLATFORM_ROLE: &str = "parkflow-platform";
/// The role every device has: reading availability.
const READER_ROLE: &str = "parkflow-reader";

/// Why the broker's permissions could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum DynsecError {
    #[error(
        "the broker did not answer on $CONTROL/dynamic-security/v1 within {0:?} (is the dynamic-security plugin loaded, and is the --mqtt-url user its admin?)"
    )]
    NoAnswer(Duration),
    #[error("the broker refused {command}: {error}")]
    Refused { command: String, error: String },
    #[error("the broker's answer could not be read: {0}")]
    Answer(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The batch waiting for its answers: its id and where they go.
type Waiting = std::sync::Mutex<Option<(String, oneshot::Sender<Vec<Response>>)>>;

/// One command's answer.
#[derive(Debug, Deserialize)]
struct Response {
    command: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(rename = "correlationData", default)]
    correlation: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Responses {
    responses: Vec<Response>,
}

/// A client as the broker lists it.
#[derive(Debug, Deserialize)]
struct BrokerClient {
    username: String,
    #[serde(rename = "textname", default)]
    text_name: Option<String>,
    #[serde(rename = "textdescription", default)]
    text_description: Option<String>,
}

/// What one reconciliation did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reconciled {
    /// Devices whose broker client was made or made again.
    pub(crate) put: usize,
    /// Broker clients deleted (their devices revoked or gone).
    pub(crate) deleted: usize,
    /// Active devices whose MQTT password is not derived from their key (registered before
    /// passwords were derived): the broker cannot be given them until they are rotated.
    pub(crate) underivable: usize,
}

/// The connection that administers the broker's dynamic security.
pub(crate) struct Dynsec {
    client: AsyncClient,
    /// The batch waiting for its answer (one at a time).
    waiting: Arc<Waiting>,
    /// Held while a batch is out, so answers pair with their batch.
    turn: Mutex<()>,
    admin: String,
    marker: String,
    ready: watch::Receiver<bool>,
}

impl Dynsec {
    /// Connects as `{client id}-acl` (`{client id}-{node}-acl` on a gateway node: every node
    /// keeps the lists, with the same marker) with the platform's (admin) login; answers are
    /// awaited until `token` is cancelled.
    pub(crate) fn connect(
        config: &MqttConfig,
        node: Option<&str>,
        tls: Option<&Arc<rustls::ClientConfig>>,
        token: CancellationToken,
    ) -> Self {
        let connection = match node {
            Some(node) => format!("{}-{node}-acl", config.client_id),
            None => format!("{}-acl", config.client_id),
        };
        let mut options = MqttOptions::new(connection, &config.host, config.port);
        options
            .set_clean_session(true)
            .set_keep_alive(config.keep_alive)
            .set_max_packet_size(64 * 1024 * 1024, 1024 * 1024);
        if let Some((username, password)) = &config.credentials {
            options.set_credentials(username, password.expose_secret());
        }
        if let Some(tls) = tls {
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.clone()),
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let waiting: Arc<Waiting> = Arc::default();
        let (ready_tx, ready) = watch::channel(false);
        let answers = waiting.clone();
        let subscriber = client.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = token.cancelled() => break,
                    event = eventloop.poll() => event,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Err(error) = subscriber.try_subscribe(RESPONSES, QoS::AtLeastOnce) {
                            tracing::error!(%error, "dynsec: failed to queue the subscription");
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        let granted = ack
                            .return_codes
                            .iter()
                            .all(|code| !matches!(code, rumqttc::SubscribeReasonCode::Failure));
                        if !granted {
                            tracing::error!(
                                "dynsec: the broker refused $CONTROL/dynamic-security/v1/response to the --mqtt-url user: it is not the dynsec admin"
                            );
                        }
                        ready_tx.send_replace(granted);
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        deliver(&answers, &publish.payload);
                    }
                    Ok(_) => {}
                    Err(error) => {
                        // The batch in flight will get no answer on this connection.
                        answers.lock().unwrap_or_else(|e| e.into_inner()).take();
                        if ready_tx.send_replace(false) {
                            tracing::warn!(%error, "dynsec connection lost; reconnecting");
                        }
                        tokio::select! {
                            () = token.cancelled() => break,
                            () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                }
            }
        });
        let admin = config
            .credentials
            .as_ref()
            .map(|(user, _)| user.clone())
            .unwrap_or_default();
        Self {
            client,
            waiting,
            turn: Mutex::new(()),
            admin,
            marker: format!("parkflow:{}", config.client_id),
            ready,
        }
    }

    /// Sets the default access (deny publishing and subscribing) and the platform's and readers'
    /// roles, then reconciles: a start that cannot do this fails, rather than run with a broker
    /// that lets devices do anything or nothing.
    pub(crate) async fn prepare(&self, db: &Db) -> Result<Reconciled, DynsecError> {
        let mut ready = self.ready.clone();
        tokio::time::timeout(ANSWER_TIMEOUT, ready.wait_for(|ready| *ready))
            .await
            .map_err(|_| DynsecError::NoAnswer(ANSWER_TIMEOUT))?
            .map_err(|_| DynsecError::NoAnswer(ANSWER_TIMEOUT))?;
        let everything = |acltype: &str| json!({"acltype": acltype, "topic": "#", "allow": true});
        self.run(
            vec![
                json!({"command": "setDefaultACLAccess", "acls": [
                    {"acltype": "publishClientSend", "allow": false},
                    {"acltype": "publishClientReceive", "allow": true},
                    {"acltype": "subscribe", "allow": false},
                    {"acltype": "unsubscribe", "allow": true},
                ]}),
                json!({"command": "createRole", "rolename": PLATFORM_ROLE,
                       "textname": "The ParkFlow platform: every topic",
                       "acls": [everything("publishClientSend"), everything("publishClientReceive"),
                                everything("subscribePattern"), everything("unsubscribePattern")]}),
                json!({"command": "createRole", "rolename": READER_ROLE,
                       "textname": "Every ParkFlow device: reads availability",
                       "acls": [{"acltype": "subscribePattern", "topic": AVAILABILITY_FILTER, "allow": true}]}),
            ],
            &["Role already exists"],
        )
        .await?;
        // Mosquitto answers a role given twice with "Internal error": ask first, and after a
        // refusal ask again (another platform starting beside this one may have given it).
        if !self.admin_has_platform_role().await? {
            let added = self
                .run(
                    vec![json!({"command": "addClientRole", "username": self.admin, "rolename": PLATFORM_ROLE})],
                    &[],
                )
                .await;
            if let Err(error) = added
                && !self.admin_has_platform_role().await?
            {
                return Err(error);
            }
        }
        self.reconcile(db).await
    }

    async fn admin_has_platform_role(&self) -> Result<bool, DynsecError> {
        let admin = self
            .run(
                vec![json!({"command": "getClient", "username": self.admin})],
                &[],
            )
            .await?;
        Ok(admin
            .first()
            .and_then(|r| r.data.as_ref())
            .and_then(|data| data["client"]["roles"].as_array())
            .is_some_and(|roles| roles.iter().any(|r| r["rolename"] == PLATFORM_ROLE)))
    }

    /// Gives the broker `device` as the registry has it now (replacing, and so disconnecting, an
    /// older client of the same name).
    pub(crate) async fn put(&self, device: &BrokerDevice) -> Result<(), DynsecError> {
        let Some(commands) = self.put_commands(device) else {
            return Err(DynsecError::Refused {
                command: "createClient".into(),
                error: format!(
                    "device {}'s MQTT password is not derived from its key: rotate it",
                    device.id
                ),
            });
        };
        self.run(commands, &["Client not found", "Role not found"])
            .await
            .map(drop)
    }

    /// Deletes the device's client (disconnecting it) and role.
    pub(crate) async fn delete(&self, username: &str, device: &str) -> Result<(), DynsecError> {
        self.run(
            delete_commands(username, device),
            &["Client not found", "Role not found"],
        )
        .await
        .map(drop)
    }

    /// Puts every active device whose client is missing or stale, deletes this platform's clients
    /// that no active device has.
    pub(crate) async fn reconcile(&self, db: &Db) -> Result<Reconciled, DynsecError> {
        let devices = crate::store::registry::broker_devices(db).await?;
        let listed = self
            .run(
                vec![json!({"command": "listClients", "verbose": true, "count": -1})],
                &[],
            )
            .await?;
        let clients: Vec<BrokerClient> = listed
            .into_iter()
            .next()
            .and_then(|r| r.data)
            .and_then(|mut data| data.get_mut("clients").map(Value::take))
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| DynsecError::Answer(e.to_string()))?
            .unwrap_or_default();
        let ours: HashMap<&str, Option<&str>> = clients
            .iter()
            .filter(|c| c.text_name.as_deref() == Some(self.marker.as_str()))
            .map(|c| (c.username.as_str(), c.text_description.as_deref()))
            .collect();
        let mut report = Reconciled::default();
        let mut commands = Vec::new();
        let mut active = std::collections::HashSet::new();
        for device in &devices {
            active.insert(device.mqtt_username.as_str());
            let current = ours.get(device.mqtt_username.as_str()).copied().flatten();
            if current == Some(fingerprint(device).as_str()) {
                continue;
            }
            match self.put_commands(device) {
                Some(put) => {
                    commands.extend(put);
                    report.put += 1;
                }
                None => report.underivable += 1,
            }
        }
        for username in ours.keys().filter(|u| !active.contains(*u)) {
            commands.push(json!({"command": "deleteClient", "username": username}));
            report.deleted += 1;
        }
        for batch in commands.chunks(BATCH) {
            self.run(batch.to_vec(), &["Client not found", "Role not found"])
                .await?;
        }
        if report.underivable > 0 {
            tracing::warn!(
                devices = report.underivable,
                "devices registered before MQTT passwords were derived from device keys cannot log in to this broker until their credentials are rotated (POST /v1/devices/{{id}}/rotate)"
            );
        }
        if report != Reconciled::default() {
            tracing::info!(
                put = report.put,
                deleted = report.deleted,
                "broker permissions brought in step with the registry"
            );
        }
        Ok(report)
    }

    /// Reconciles every [`RECONCILE_EVERY`] until `token` is cancelled.
    pub(crate) async fn keep_in_step(self: Arc<Self>, db: Db, token: CancellationToken) {
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(RECONCILE_EVERY) => {}
            }
            if let Err(error) = self.reconcile(&db).await {
                tracing::error!(error = %error, "broker permissions could not be reconciled; retrying");
            }
        }
    }

    /// The commands that make `device`'s client and role anew; `None` when its password cannot
    /// be derived from its key.
    fn put_commands(&self, device: &BrokerDevice) -> Option<Vec<Value>> {
        let password = mqtt_password(device.secret.expose_secret());
        if password_hash(&password) != device.mqtt_password_hash {
            return None;
        }
        let role = role_name(device.id.as_str());
        let acls: Vec<Value> = grants(&device.client)
            .into_iter()
            .map(|(access, topic)| {
                let acltype = match access {
                    Access::Publish { .. } => "publishClientSend",
                    Access::Subscribe => "subscribeLiteral",
                };
                json!({"acltype": acltype, "topic": topic.to_string(), "allow": true})
            })
            .collect();
        let mut commands = delete_commands(&device.mqtt_username, device.id.as_str());
        commands.push(json!({"command": "createRole", "rolename": role, "acls": acls}));
        commands.push(json!({
            "command": "createClient",
            "username": device.mqtt_username,
            "password": password,
            "clientid": device.id.as_str(),
            "textname": self.marker,
            "textdescription": fingerprint(device),
            "roles": [{"rolename": role}, {"rolename": READER_ROLE}],
        }));
        Some(commands)
    }

    /// Sends `commands` as one message and waits for their answers; an error a command answers
    /// with is a failure unless it is one of `tolerated`.
    async fn run(
        &self,
        commands: Vec<Value>,
        tolerated: &[&str],
    ) -> Result<Vec<Response>, DynsecError> {
        let _turn = self.turn.lock().await;
        let payload = |batch: &str| {
            let commands: Vec<Value> = commands
                .iter()
                .enumerate()
                .map(|(i, command)| {
                    let mut command = command.clone();
                    command["correlationData"] = json!(format!("{batch}/{i}"));
                    command
                })
                .collect();
            serde_json::to_vec(&json!({ "commands": commands }))
                .unwrap_or_else(|_| unreachable!("JSON values serialize"))
        };
        // The broker disconnects the admin's connections when the admin's roles change (another
        // platform starting beside this one): a batch whose connection was lost is sent again
        // (every batch is safe to repeat: puts delete first, creations tolerate what exists).
        let mut attempts = 0;
        let responses = loop {
            attempts += 1;
            let mut ready = self.ready.clone();
            tokio::time::timeout(ANSWER_TIMEOUT, ready.wait_for(|ready| *ready))
                .await
                .map_err(|_| DynsecError::NoAnswer(ANSWER_TIMEOUT))?
                .map_err(|_| DynsecError::NoAnswer(ANSWER_TIMEOUT))?;
            let batch = Uuid::new_v4().simple().to_string();
            let (tx, rx) = oneshot::channel();
            *self.waiting.lock().unwrap_or_else(|e| e.into_inner()) = Some((batch.clone(), tx));
            self.client
                .publish(COMMANDS, QoS::AtLeastOnce, false, payload(&batch))
                .await
                .map_err(|_| DynsecError::NoAnswer(ANSWER_TIMEOUT))?;
            match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
                Ok(Ok(responses)) => break responses,
                Ok(Err(_lost)) if attempts < 3 => {}
                _ => return Err(DynsecError::NoAnswer(ANSWER_TIMEOUT)),
            }
        };
        for response in &responses {
            if let Some(error) = &response.error
                && !tolerated.contains(&error.as_str())
            {
                return Err(DynsecError::Refused {
                    command: response.command.clone(),
                    error: error.clone(),
                });
            }
        }
        Ok(responses)
    }
}

/// Hands an answer to the batch waiting for it (answers to other administrators' commands on the
/// same broker are not ours and are dropped).
fn deliver(waiting: &Waiting, payload: &[u8]) {
    let Ok(Responses { responses }) = serde_json::from_slice::<Responses>(payload) else {
        tracing::warn!("dynsec: an answer that is not dynamic-security JSON was ignored");
        return;
    };
    let batch = responses
        .first()
        .and_then(|r| r.correlation.as_deref())
        .and_then(|c| c.split_once('/'))
        .map(|(batch, _)| batch.to_owned());
    let mut waiting = waiting.lock().unwrap_or_else(|e| e.into_inner());
    if waiting.as_ref().map(|(id, _)| Some(id)) == Some(batch.as_ref())
        && let Some((_, tx)) = waiting.take()
    {
        let _ = tx.send(responses);
    }
}

fn role_name(device: &str) -> String {
    format!("parkflow-device/{device}")
}

fn delete_commands(username: &str, device: &str) -> Vec<Value> {
    vec![
        json!({"command": "deleteClient", "username": username}),
        json!({"command": "deleteRole", "rolename": role_name(device)}),
    ]
}

/// What the broker must hold for `device`, hashed: its password hash and its grants.
fn fingerprint(device: &BrokerDevice) -> String {
    let grants: Vec<String> = grants(&device.client)
        .iter()
        .map(|(access, topic)| format!("{access:?} {topic}"))
        .collect();
    let mut digest = password_hash(&format!(
        "{}|{}|{}",
        device.id,
        device.mqtt_password_hash,
        grants.join("|")
    ));
    digest.truncate(32);
    digest
}
