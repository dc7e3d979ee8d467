//! `parkflow bench broker`: the embedded broker (rumqttd as ParkFlow configures it) beside
//! Mosquitto at 127.0.0.1:1883, under the same load generator: publishers send numbered messages
//! as fast as their client lets them, one subscriber counts what arrives (lost, duplicated),
//! at QoS 0 and QoS 1.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parkflow_broker::{Anyone, BrokerConfig, EmbeddedBroker};
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use uuid::Uuid;

use super::ratio;

/// Publishing connections.
const PUBLISHERS: usize = 4;
/// Bytes of each message (a bay event is about this size before signing).
const PAYLOAD: usize = 64;

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A connected (and, with `subscribe`, subscribed) client and its polling task; each message
/// received is reported as the number in its first eight bytes.
pub(crate) async fn client(
    host: &str,
    port: u16,
    id: &str,
    (username, password): (&str, &str),
    on_publish: Option<tokio::sync::mpsc::UnboundedSender<u64>>,
    subscribe: Option<(String, QoS)>,
) -> anyhow::Result<(AsyncClient, tokio::task::JoinHandle<()>)> {
    let mut options = MqttOptions::new(id, host, port);
    options.set_credentials(username, password);
    options.set_max_packet_size(1024 * 1024, 1024 * 1024);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(options, 10_000);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let subscriber = client.clone();
    let task = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => match &subscribe {
                    Some((topic, qos)) => {
                        let _ = subscriber.try_subscribe(topic.as_str(), *qos);
                    }
                    None => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(());
                        }
                    }
                },
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let number = p.payload.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok());
                    if let (Some(tx), Some(bytes)) = (&on_publish, number) {
                        let _ = tx.send(u64::from_be_bytes(bytes));
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    if tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .ok()
        .and_then(Result::ok)
        .is_none()
    {
        task.abort();
        anyhow::bail!("mqtt client {id} did not connect to {host}:{port}");
    }
    Ok((client, task))
}

/// What one run measured.
pub struct Throughput {
    pub msgs_per_s: f64,
    pub lost: u64,
    pub duplicated: u64,
}

/// Sends `messages` numbered messages through the broker at `host:port` and counts them back.
pub async fn measure(host: &str, port: u16, qos: QoS, messages: u64) -> anyhow::Result<Throughput> {
    let run = Uuid::new_v4().simple().to_string();
    let topic = format!("bench/{run}/m");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (_sub, sub_task) = client(
        host,
        port,
        &format!("sub-{run}"),
        ("bench", "bench"),
        Some(tx),
        Some((topic.clone(), qos)),
    )
    .await?;
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        publishers.push(
            client(
                host,
                port,
                &format!("pub-{run}-{p}"),
                ("bench", "bench"),
                None,
                None,
            )
            .await?,
        );
    }
    let per = messages / PUBLISHERS as u64;
    let total = per * PUBLISHERS as u64;
    let start = Instant::now();
    let mut sending = tokio::task::JoinSet::new();
    for (p, (publisher, _)) in publishers.iter().enumerate() {
        let (publisher, topic) = (publisher.clone(), topic.clone());
        sending.spawn(async move {
            for i in 0..per {
                let mut payload = vec![0u8; PAYLOAD];
                payload[..8].copy_from_slice(&(p as u64 * per + i).to_be_bytes());
                publisher
                    .publish(topic.as_str(), qos, false, payload)
                    .await?;
            }
            Ok::<_, rumqttc::ClientError>(())
        });
    }
    let mut seen = HashSet::with_capacity(total as usize);
    let mut duplicated = 0;
    let mut last = Instant::now();
    while (seen.len() as u64) < total {
        match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            Ok(Some(n)) => {
                if !seen.insert(n) {
                    duplicated += 1;
                }
                last = Instant::now();
            }
            Ok(None) => break,
            // Nothing for three seconds once everything was sent: the rest is lost.
            Err(_) if last.elapsed() > Duration::from_secs(3) && sending.is_empty() => break,
            Err(_) => {}
        }
        while let Some(done) = sending.try_join_next() {
            done??;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    sub_task.abort();
    for (_, task) in publishers {
        task.abort();
    }
    Ok(Throughput {
        msgs_per_s: seen.len() as f64 / elapsed,
        lost: total - seen.len() as u64,
        duplicated,
    })
}

/// Runs the scenario: both brokers, QoS 0 then QoS 1.
pub async fn run(messages: u64) -> anyhow::Result<()> {
    println!("scenario=broker messages={messages} publishers={PUBLISHERS} payload_bytes={PAYLOAD}");
    let listen = free_addr()?;
    let embedded = tokio::task::spawn_blocking(move || {
        let mut config = BrokerConfig::new(listen, Arc::new(Anyone));
        // Pass-through, not memory, is measured here: the log holds a whole unpaced run (a
        // subscriber further behind than the log would be skipped ahead, and count as lost).
        config.segment_bytes = 16 * 1024 * 1024;
        EmbeddedBroker::start(config)
    })
    .await??;
    let mut failed = false;
    for (name, qos) in [("qos0", QoS::AtMostOnce), ("qos1", QoS::AtLeastOnce)] {
        let ours = measure("127.0.0.1", listen.port(), qos, messages).await?;
        let theirs = measure("127.0.0.1", 1883, qos, messages).await;
        println!(
            "embedded_{name}_msgs_per_s={:.0} embedded_{name}_lost={} embedded_{name}_duplicated={}",
            ours.msgs_per_s, ours.lost, ours.duplicated
        );
        match theirs {
            Ok(theirs) => {
                println!(
                    "mosquitto_{name}_msgs_per_s={:.0} mosquitto_{name}_lost={} mosquitto_{name}_duplicated={}",
                    theirs.msgs_per_s, theirs.lost, theirs.duplicated
                );
                println!(
                    "{}",
                    ratio(
                        &format!("embedded_vs_mosquitto_{name}"),
                        ours.msgs_per_s / theirs.msgs_per_s,
                        1.0,
                        false
                    )
                );
            }
            Err(error) => println!("mosquitto_{name}=unavailable ({error})"),
        }
        println!(
            "{}",
            ratio(
                &format!("embedded_{name}_lost"),
                ours.lost as f64,
                0.0,
                true
            )
        );
        failed |= qos == QoS::AtLeastOnce && ours.lost > 0;
    }
    tokio::task::spawn_blocking(move || embedded.stop()).await?;
    if failed {
        anyhow::bail!("the embedded broker lost QoS 1 messages");
    }
    Ok(())
}
