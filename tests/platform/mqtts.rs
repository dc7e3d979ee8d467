//! The platform's own broker connection over TLS (`--mqtt-url mqtts://…`, issue 13): its login
//! and every plate read and command it exchanges with the broker are encrypted. The broker here
//! is ParkFlow's embedded one started on its own with a TLS listener and a certificate made for
//! `localhost`, standing in for an external broker; the cameras use its plain listener.

use std::sync::Arc;

use parkflow::platform::MqttSetup;
use parkflow_broker::{Anyone, BrokerConfig, EmbeddedBroker, TlsListener};
use parkflow_gateway::MqttTls;
use parkflow_protocol::{Direction, GateAction};

use crate::support::{Broker, Database, Setup, TestDevice, TestPlatform, World, free_addr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_talks_to_its_broker_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let (plain, tls) = (free_addr(), free_addr());
    let mut broker = BrokerConfig::new(plain, Arc::new(Anyone));
    broker.tls = Some(TlsListener {
        listen: tls,
        cert: cert.clone(),
        key,
    });
    let broker = tokio::task::spawn_blocking(move || EmbeddedBroker::start(broker))
        .await
        .unwrap()
        .unwrap();

    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let world = World::new(setup, 10);
    let mut platform = TestPlatform::start_with(setup, &world, move |config| {
        config.mqtt = MqttSetup::External {
            host: "localhost".into(),
            port: tls.port(),
            credentials: Some(("gateway".into(), "gateway-pass".into())),
            tls: Some(MqttTls {
                ca: Some(cert.clone()),
            }),
        };
    })
    .await;
    // The platform reached its broker over TLS (ready means connected); the camera uses the
    // broker's plain listener.
    platform.mqtt = ("127.0.0.1".into(), plain.port());
    let mut camera =
        TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let read = camera.read(world.enrolled.as_str(), Direction::Entry);
    assert_eq!(camera.decide(&read).await.action, GateAction::Open);
    drop(camera);
    platform.stop().await;
    tokio::task::spawn_blocking(move || broker.stop())
        .await
        .unwrap();
}
