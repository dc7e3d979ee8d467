//! Device identity (issue: operators, drivers and security): an operator registers a camera and
//! gets its credentials once; the camera works; rotating its credentials shuts the old ones out at
//! once (login and signatures); revoking it shuts it out; another operator cannot touch it.

use std::time::Duration;

use crate::support::{
    ADMIN_KEY, Broker, Database, Setup, TestDevice, TestPlatform, World, eventually,
};
use parkflow_gateway::registry::GateDirection;
use parkflow_gateway::store::provision::OperatorPlan;
use parkflow_protocol::{DeviceId, Direction, GateAction, GateId};
use reqwest::{Method, StatusCode};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet};
use serde_json::json;

/// Whether the broker lets `id` log in with `password`.
async fn logs_in(platform: &TestPlatform, id: &str, password: &str) -> bool {
    let mut options = MqttOptions::new(id, &platform.mqtt.0, platform.mqtt.1);
    options.set_credentials(id, password);
    let (_client, mut eventloop): (AsyncClient, _) = AsyncClient::new(options, 10);
    let first = tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await;
    matches!(
        first,
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) if ack.code == ConnectReturnCode::Success
    )
}

async fn key(platform: &TestPlatform, operator: &str) -> String {
    let (status, body) = platform
        .call_as(
            ADMIN_KEY,
            Method::POST,
            "/v1/keys",
            Some(json!({"role": "operator_admin", "operator_id": operator})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["key"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_camera_works_until_rotated_or_revoked() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let mut world = World::new(setup, 100);
    let gate = GateId::parse("in-2").unwrap();
    world.plan.lots[0]
        .gates
        .push((gate.clone(), GateDirection::Entry));
    world.plan.operators.push(OperatorPlan {
        id: "op-other".into(),
        name: "Another operator".into(),
    });
    let platform = TestPlatform::start(setup, &world).await;
    let (own, other) = (
        key(&platform, "op-test").await,
        key(&platform, "op-other").await,
    );
    let id = DeviceId::parse(&format!("cam-new-{}", world.lot)).unwrap();
    let register = json!({"id": id.as_str(), "kind": "gate_camera", "gate": "in-2"});
    let devices = format!("/v1/lots/{}/devices", world.lot);

    let (status, _) = platform
        .call_as(&other, Method::POST, &devices, Some(register.clone()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another operator's lot");
    let (status, created) = platform
        .call_as(&own, Method::POST, &devices, Some(register.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, _) = platform
        .call_as(&own, Method::POST, &devices, Some(register))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = platform
        .call_as(
            &own,
            Method::POST,
            &devices,
            Some(json!({"id": "cam-nowhere", "kind": "gate_camera", "gate": "no-such-gate"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, listed) = platform.call_as(&own, Method::GET, &devices, None).await;
    let listed = listed.as_array().unwrap();
    assert!(listed.iter().any(|d| d["id"] == id.as_str()));
    assert!(
        listed
            .iter()
            .all(|d| d.get("secret").is_none() && d.get("mqtt_password").is_none()),
        "credentials are shown once"
    );

    // The new camera connects and its reads are answered.
    let password = created["mqtt_password"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    world.secrets.push((id.clone(), password.clone(), secret));
    let mut camera = TestDevice::connect(&platform, &world, &id, &gate).await;
    let read = camera.read(world.enrolled.as_str(), Direction::Entry);
    assert_eq!(camera.decide(&read).await.action, GateAction::Open);

    // Rotated: the old password no longer logs in, the old key's signatures are refused.
    let rotate = format!("/v1/devices/{id}/rotate");
    assert_eq!(
        platform
            .call_as(&other, Method::POST, &rotate, None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (status, rotated) = platform.call_as(&own, Method::POST, &rotate, None).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_password = rotated["mqtt_password"].as_str().unwrap().to_owned();
    assert!(!logs_in(&platform, id.as_str(), &password).await);
    assert!(logs_in(&platform, id.as_str(), &new_password).await);
    drop(camera);
    let before = platform
        .metric("parkflow_events_rejected_total{reason=\"bad_signature\"}")
        .await;
    let old_key = TestDevice::connect(
        &platform,
        &world_with(&world, &id, &new_password),
        &id,
        &gate,
    )
    .await;
    let stale = old_key.read(world.unenrolled.as_str(), Direction::Entry);
    old_key.publish(&stale).await;
    eventually(
        Duration::from_secs(10),
        "the old key's read refused",
        || async {
            let now = platform
                .metric("parkflow_events_rejected_total{reason=\"bad_signature\"}")
                .await;
            (now > before).then_some(())
        },
    )
    .await;
    drop(old_key);

    // Revoked: it cannot log in any more, and it is gone for another operator too.
    let path = format!("/v1/devices/{id}");
    assert_eq!(
        platform
            .call_as(&other, Method::DELETE, &path, None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        platform.call_as(&own, Method::DELETE, &path, None).await.0,
        StatusCode::NO_CONTENT
    );
    assert!(!logs_in(&platform, id.as_str(), &new_password).await);
    let (status, _) = platform.call_as(&own, Method::POST, &rotate, None).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a revoked device stays revoked"
    );
    platform.stop().await;
}

/// The world, with `id` connecting with the rotated password but still signing with its old key.
fn world_with(world: &World, id: &DeviceId, password: &str) -> World {
    let mut world = world.clone();
    for entry in &mut world.secrets {
        if &entry.0 == id {
            entry.1 = password.to_owned();
        }
    }
    world
}

/// Whether the broker lets `username` log in with `password` under MQTT client id `client_id`.
async fn logs_in_as(
    platform: &TestPlatform,
    client_id: &str,
    username: &str,
    password: &str,
) -> bool {
    let mut options = MqttOptions::new(client_id, &platform.mqtt.0, platform.mqtt.1);
    options.set_credentials(username, password);
    let (_client, mut eventloop): (AsyncClient, _) = AsyncClient::new(options, 10);
    let first = tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await;
    matches!(
        first,
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) if ack.code == ConnectReturnCode::Success
    )
}

/// The attack (issue 13): an operator registers a device under the platform's own MQTT client id
/// and logs in with it; the broker drops the platform's connection and hands the device the
/// platform's persistent session, and every barrier waits. The platform's ids (`parkflow-…`) are
/// refused as device ids, and no device's credentials log in under one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_device_takes_the_platforms_client_id() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let world = World::new(setup, 100);
    let platform = TestPlatform::start(setup, &world).await;
    let own = key(&platform, "op-test").await;
    let devices = format!("/v1/lots/{}/devices", world.lot);
    let platform_ids = [
        platform.client_id.clone(),
        format!("{}-bays", platform.client_id),
    ];
    for id in platform_ids
        .iter()
        .map(String::as_str)
        .chain(["parkflow-gateway"])
    {
        let register = json!({"id": id, "kind": "bridge"});
        let (status, body) = platform
            .call_as(&own, Method::POST, &devices, Some(register))
            .await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!("reserved_id")),
            "{id}: {body}"
        );
    }
    // A camera's own credentials under the platform's client ids are refused.
    let (password, _) = world.device(&world.entry_camera);
    let username = world.entry_camera.as_str();
    assert!(logs_in_as(&platform, username, username, &password).await);
    for client_id in &platform_ids {
        assert!(!logs_in_as(&platform, client_id, username, &password).await);
    }
    // The platform kept its connection: a read is still answered.
    let mut camera =
        TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let read = camera.read(world.enrolled.as_str(), Direction::Entry);
    assert_eq!(camera.decide(&read).await.action, GateAction::Open);
    platform.stop().await;
}

/// The secret a device's row holds, as stored.
async fn stored_secret(platform: &TestPlatform, device: &DeviceId) -> String {
    let db = parkflow_db::Db::connect(&platform.database_url)
        .await
        .unwrap();
    let (secret,): (String,) = parkflow_db::query("SELECT secret FROM devices WHERE id = $1")
        .bind(device.as_str())
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    secret
}

/// Device signing secrets are sealed at rest under the secrets key: the database alone (a dump, a
/// backup) does not give them. Secrets stored in clear before a key was configured are sealed at
/// the next start; the devices go on working; another key opens none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_secrets_are_sealed_at_rest() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let world = World::new(setup, 10);
    let mut platform = TestPlatform::start_with(setup, &world, |config| {
        config.secrets_key = None;
    })
    .await;
    let clear = stored_secret(&platform, &world.entry_camera).await;
    assert!(!parkflow_db::sealed::is_sealed(&clear));

    platform.reconfigure(|config| {
        config.secrets_key = Some(crate::support::SECRETS_KEY.into());
    });
    platform.pause().await;
    platform.resume().await;
    let sealed = stored_secret(&platform, &world.entry_camera).await;
    assert!(parkflow_db::sealed::is_sealed(&sealed), "{sealed}");
    assert!(!sealed.contains(&clear));
    // The camera still signs with the secret it holds, and is obeyed.
    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let decided = entry
        .decide(&entry.read("浙T55555", Direction::Entry))
        .await;
    assert_eq!(decided.action, GateAction::Open);

    // A camera registered now: its secret is shown once and stored sealed.
    let (status, registered) = platform
        .call(
            Some(ADMIN_KEY),
            Method::POST,
            &format!("/v1/lots/{}/gates", world.lot),
            Some(&json!({"id": "in-sealed", "direction": "entry"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{registered}");
    let (status, camera) = platform
        .call(
            Some(ADMIN_KEY),
            Method::POST,
            &format!("/v1/lots/{}/devices", world.lot),
            Some(&json!({"id": "cam-sealed", "kind": "gate_camera", "gate": "in-sealed"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{camera}");
    let shown = camera["secret"].as_str().unwrap();
    let stored = stored_secret(&platform, &DeviceId::parse("cam-sealed").unwrap()).await;
    assert!(parkflow_db::sealed::is_sealed(&stored) && !stored.contains(shown));

    // Another key opens nothing: the registry does not load.
    let db = parkflow_db::Db::connect(&platform.database_url)
        .await
        .unwrap()
        .with_secrets_key(
            parkflow_db::SecretsKey::new("another-key-of-thirty-two-characters").unwrap(),
        );
    assert!(
        parkflow_gateway::registry::RegistryHandle::load(&db)
            .await
            .is_err()
    );
    db.close().await;
    platform.stop().await;
}

/// A camera revoked while connected is disconnected at once, not left reading every plate
/// until it reconnects: the embedded broker checks logins only at CONNECT, so the platform takes
/// the device's session over. Then it cannot come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_camera_is_disconnected_at_once_and_stays_out() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let world = World::new(setup, 10);
    let platform = TestPlatform::start(setup, &world).await;
    let (_, password, _) = world
        .secrets
        .iter()
        .find(|(id, ..)| id == &world.exit_camera)
        .unwrap()
        .clone();
    // The camera, connected as itself, listening to everything the embedded broker lets it.
    let mut options = MqttOptions::new(
        world.exit_camera.as_str(),
        &platform.mqtt.0,
        platform.mqtt.1,
    );
    options.set_credentials(world.exit_camera.as_str(), &password);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = eventloop.poll().await.unwrap() {
            break;
        }
    }
    client
        .subscribe("parkflow/v1/#", rumqttc::QoS::AtMostOnce)
        .await
        .unwrap();

    let path = format!("/v1/devices/{}", world.exit_camera);
    let revoked_at = std::time::Instant::now();
    let (status, _) = platform
        .call(Some(ADMIN_KEY), Method::DELETE, &path, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Its connection ends within two seconds of the revocation.
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if eventloop.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "still connected {:?} after the revocation",
        revoked_at.elapsed()
    );
    // And it is refused when it comes back.
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return ack.code != ConnectReturnCode::Success;
                }
                Ok(_) => {}
                Err(_) => return true,
            }
        }
    })
    .await
    .unwrap();
    assert!(refused, "a revoked camera logged in again");
    platform.stop().await;
}
