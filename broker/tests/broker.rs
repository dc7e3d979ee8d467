//! The embedded broker, driven by a real MQTT client over loopback.

#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use parkflow_broker::{
    Authenticator, BrokerConfig, BrokerError, EmbeddedBroker, Login, Permissions, Unrestricted,
};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, NetworkOptions, Packet, QoS};

/// Alice, a device, and the platform (any client id, its own login).
struct OnlyAlice;

impl Authenticator for OnlyAlice {
    fn authenticate(&self, client_id: String, username: String, password: String) -> Login {
        Box::pin(std::future::ready(
            (client_id == "alice" && username == "alice" && password == "secret")
                || (username == "platform" && password == "root"),
        ))
    }

    fn permissions(&self, _: &str, username: &str) -> Box<dyn Permissions> {
        if username == "platform" {
            Box::new(Unrestricted)
        } else {
            Box::new(UnderT)
        }
    }
}

/// A device's permissions: topics under `t/`, nothing retained, at most 1 KiB.
struct UnderT;

impl Permissions for UnderT {
    fn max_packet_bytes(&self) -> usize {
        2 * 1024
    }

    fn may_publish(&self, topic: &str, retain: bool, payload_bytes: usize) -> bool {
        topic.starts_with("t/") && !retain && payload_bytes <= 1024
    }

    fn may_subscribe(&self, filter: &str) -> bool {
        filter.starts_with("t/")
    }
}

fn free_addr() -> SocketAddr {
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

fn config(addr: SocketAddr) -> BrokerConfig {
    BrokerConfig::new(addr, Arc::new(OnlyAlice))
}

fn options(addr: SocketAddr, client_id: &str, password: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_credentials(client_id, password);
    options.set_keep_alive(Duration::from_secs(5));
    options
}

fn client(addr: SocketAddr, client_id: &str, password: &str) -> (AsyncClient, EventLoop) {
    let (client, mut events) = AsyncClient::new(options(addr, client_id, password), 10);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    events.set_network_options(network);
    (client, events)
}

/// Connects and returns whether the broker answered the CONNECT with a CONNACK.
async fn connects(addr: SocketAddr, client_id: &str, password: &str) -> bool {
    let (_client, mut events) = client(addr, client_id, password);
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    });
    outcome.await.unwrap_or(false)
}

#[tokio::test]
async fn a_registered_device_connects_and_a_stranger_is_refused() {
    let addr = free_addr();
    let broker = EmbeddedBroker::start(config(addr)).unwrap();
    assert_eq!(broker.addr(), addr);
    assert!(connects(addr, "alice", "secret").await);
    assert!(!connects(addr, "alice", "wrong").await);
    assert!(!connects(addr, "mallory", "secret").await);
}

#[tokio::test]
async fn messages_flow_between_clients() {
    let addr = free_addr();
    let _broker = EmbeddedBroker::start(config(addr)).unwrap();
    let (subscriber, mut sub_events) = client(addr, "alice", "secret");
    subscriber.subscribe("t/#", QoS::AtLeastOnce).await.unwrap();
    let received = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match sub_events.poll().await.unwrap() {
                Event::Incoming(Packet::SubAck(_)) => {
                    subscriber
                        .publish("t/1", QoS::AtLeastOnce, false, "hello")
                        .await
                        .unwrap();
                }
                Event::Incoming(Packet::Publish(p)) => return p.payload,
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&received[..], b"hello");
}

#[tokio::test]
async fn a_stopped_broker_frees_its_port_and_starts_again() {
    let addr = free_addr();
    let broker = EmbeddedBroker::start(config(addr)).unwrap();
    broker.stop();
    assert!(!connects(addr, "alice", "secret").await);
    let _again = EmbeddedBroker::start(config(addr)).unwrap();
    assert!(connects(addr, "alice", "secret").await);
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let error = EmbeddedBroker::start(config(addr)).err().unwrap();
    assert!(matches!(error, BrokerError::PortTaken(a) if a == addr));
    assert!(error.to_string().contains("--mqtt-listen"));
}

/// Devices beyond this machine connect over TLS (a certificate the test makes for `localhost`):
/// the login and the messages travel encrypted, and the plain listener stays as it was.
#[tokio::test]
async fn devices_connect_over_tls_with_the_brokers_certificate() {
    let dir = std::env::temp_dir().join(format!("parkflow-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();

    let (plain, tls_addr) = (free_addr(), free_addr());
    let mut config = config(plain);
    config.tls = Some(parkflow_broker::TlsListener {
        listen: tls_addr,
        cert,
        key,
    });
    let _broker = EmbeddedBroker::start(config).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let over_tls = |client_id: &str, password: &str| {
        let mut options = MqttOptions::new(client_id, "localhost", tls_addr.port());
        options.set_credentials(client_id, password);
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls.clone())),
        ));
        AsyncClient::new(options, 10)
    };
    let (client, mut events) = over_tls("alice", "secret");
    client.subscribe("t/tls", QoS::AtLeastOnce).await.unwrap();
    client
        .publish("t/tls", QoS::AtLeastOnce, false, "over tls")
        .await
        .unwrap();
    let received = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::Publish(publish)) = events.poll().await.unwrap() {
                return publish.payload;
            }
        }
    })
    .await
    .expect("the message came back over tls");
    assert_eq!(&received[..], b"over tls");
    // The login is checked over TLS as over plain TCP; plain TCP still works on its own port.
    let (_refused, mut refused_events) = over_tls("alice", "wrong");
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match refused_events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return false,
                Ok(_) => continue,
                Err(_) => return true,
            }
        }
    })
    .await
    .unwrap_or(true);
    assert!(refused, "a wrong password is refused over tls too");
    assert!(connects(plain, "alice", "secret").await);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Connects as alice (with `will`, if any), does `attack` once connected, and tells whether the
/// broker then closes the connection (or refused it).
async fn cut_for(
    addr: SocketAddr,
    will: Option<LastWill>,
    attack: impl AsyncFnOnce(&AsyncClient),
) -> bool {
    let mut options = options(addr, "alice", "secret");
    options.set_max_packet_size(1 << 20, 1 << 20);
    if let Some(will) = will {
        options.set_last_will(will);
    }
    let (client, mut events) = AsyncClient::new(options, 10);
    let connected = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap();
    if !connected {
        return true;
    }
    attack(&client).await;
    tokio::time::timeout(Duration::from_secs(2), async {
        while events.poll().await.is_ok() {}
    })
    .await
    .is_ok()
}

/// Every message `events` brings within `wait`, as (topic, retained).
async fn heard(events: &mut EventLoop, wait: Duration) -> Vec<(String, bool)> {
    let mut heard = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = events.poll().await.unwrap() {
                heard.push((p.topic.clone(), p.retain));
            }
        }
    })
    .await;
    heard
}

/// The attacks of issue 13 on the embedded broker, as an opened-up device sends them: reading
/// everything, speaking on a topic not its own, leaving a retained message (rumqttd would keep
/// it for good), a 100 KiB packet, a last will on another's topic. Each closes that device's
/// connection before rumqttd routes anything; nothing of it reaches the platform or stays behind,
/// and the device's honest messages still flow.
#[tokio::test]
async fn a_device_beyond_its_permissions_is_cut_and_nothing_of_it_is_kept() {
    let addr = free_addr();
    let _broker = EmbeddedBroker::start(config(addr)).unwrap();
    let platform_client = |client_id: &str| {
        let mut options = options(addr, client_id, "root");
        options.set_credentials("platform", "root");
        AsyncClient::new(options, 10)
    };
    let (platform, mut platform_events) = platform_client("platform-watch");
    platform.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !matches!(
            platform_events.poll().await.unwrap(),
            Event::Incoming(Packet::SubAck(_))
        ) {}
    })
    .await
    .unwrap();

    let qos = QoS::AtLeastOnce;
    assert!(cut_for(addr, None, async |c| c.subscribe("#", qos).await.unwrap()).await);
    assert!(cut_for(addr, None, async |c| c.subscribe("x/#", qos).await.unwrap()).await);
    let publishing = |topic: &'static str, retain: bool, payload: Vec<u8>| {
        cut_for(addr, None, async move |c| {
            c.publish(topic, qos, retain, payload).await.unwrap();
        })
    };
    assert!(
        publishing("x/1", false, b"x".to_vec()).await,
        "another's topic"
    );
    assert!(publishing("t/kept", true, b"k".to_vec()).await, "retained");
    assert!(
        publishing("t/big", false, vec![b'x'; 100 * 1024]).await,
        "100 KiB"
    );
    let will = LastWill::new("x/will", "gone", qos, true);
    assert!(
        cut_for(addr, Some(will), async |_| {}).await,
        "a will on another's topic"
    );
    // Within its permissions, alice is not cut, and her message arrives.
    assert!(!publishing("t/ok", false, b"ok".to_vec()).await);

    let seen = heard(&mut platform_events, Duration::from_millis(500)).await;
    assert_eq!(
        seen,
        vec![("t/ok".to_owned(), false)],
        "only alice's honest message"
    );
    // A newcomer finds no retained message left by her.
    let (late, mut late_events) = platform_client("platform-late");
    late.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        heard(&mut late_events, Duration::from_millis(500)).await,
        vec![]
    );
}
