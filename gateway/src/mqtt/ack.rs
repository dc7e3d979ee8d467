//! Acknowledging QoS 1 messages only once what they carry is durable.
//!
//! Each QoS 1 message gets a [`Ticket`] when it arrives. Whoever finishes with the message (the
//! store writer after its commit, or ingest when it rejects the message) drops the ticket. MQTT
//! wants PUBACKs in arrival order, so the [`Acker`] sends an ack only when every earlier message
//! is finished too. A broker re-delivers unacknowledged messages after a reconnect of the
//! persistent session: a crash before the commit loses nothing.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use rumqttc::{AsyncClient, Publish};
use tokio::sync::mpsc;

/// Messages in flight between arrival and acknowledgement; the broker's in-flight window is smaller.
pub const ACK_CHANNEL_CAPACITY: usize = 65_536;

enum AckEvent {
    Arrived(u64, Publish),
    Finished(u64),
    /// The connection was re-established: outstanding messages will be re-delivered, forget them.
    Reconnected,
}

/// Proof that a message still needs finishing; dropping it marks the message finished.
#[derive(Debug)]
pub struct Ticket {
    seq: u64,
    tx: mpsc::Sender<AckEvent>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // At most one `Finished` per outstanding ticket, and outstanding tickets are bounded by the
        // broker's in-flight window, far below the channel's capacity.
        if self.tx.try_send(AckEvent::Finished(self.seq)).is_err() {
            tracing::error!(
                seq = self.seq,
                "ack channel full or closed; message will be re-delivered"
            );
        }
    }
}

impl std::fmt::Debug for AckEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Arrived(seq, _) => write!(f, "Arrived({seq})"),
            Self::Finished(seq) => write!(f, "Finished({seq})"),
            Self::Reconnected => write!(f, "Reconnected"),
        }
    }
}

/// Issues tickets (used by the event loop task).
pub struct TicketIssuer {
    next: u64,
    tx: mpsc::Sender<AckEvent>,
}

impl TicketIssuer {
    /// Registers a QoS 1 message and returns its ticket.
    pub async fn issue(&mut self, publish: Publish) -> Option<Ticket> {
        let seq = self.next;
        self.next += 1;
        self.tx.send(AckEvent::Arrived(seq, publish)).await.ok()?;
        Some(Ticket {
            seq,
            tx: self.tx.clone(),
        })
    }

    /// Forgets every outstanding message (the broker re-sends them after a reconnect).
    pub async fn reconnected(&mut self) {
        let _ = self.tx.send(AckEvent::Reconnected).await;
    }
}

/// Sends PUBACKs in arrival order.
pub struct Acker {
    rx: mpsc::Receiver<AckEvent>,
    client: AsyncClient,
    pending: VecDeque<(u64, Publish)>,
    finished: BTreeSet<u64>,
}

/// Creates the issuer (for the event loop) and the acker task's state.
pub fn channel(client: AsyncClient) -> (TicketIssuer, Acker) {
    let (tx, rx) = mpsc::channel(ACK_CHANNEL_CAPACITY);
    (
        TicketIssuer { next: 0, tx },
        Acker {
            rx,
            client,
            pending: VecDeque::new(),
            finished: BTreeSet::new(),
        },
    )
}

impl Acker {
    /// Runs until the event loop task and every ticket are gone.
    pub async fn run(mut self) {
        let mut retry = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                event = self.rx.recv() => match event {
                    Some(AckEvent::Arrived(seq, publish)) => self.pending.push_back((seq, publish)),
                    Some(AckEvent::Finished(seq)) => { self.finished.insert(seq); }
                    Some(AckEvent::Reconnected) => { self.pending.clear(); self.finished.clear(); }
                    None => break,
                },
                _ = retry.tick() => {}
            }
            self.flush();
        }
        tracing::debug!("acker stopped");
    }

    /// Acknowledges the finished prefix of the pending messages.
    fn flush(&mut self) {
        while let Some((seq, publish)) = self.pending.front() {
            if !self.finished.remove(seq) {
                break;
            }
            // Never block: the event loop may be waiting on us. A full request queue is retried.
            if self.client.try_ack(publish).is_err() {
                self.finished.insert(*seq);
                break;
            }
            self.pending.pop_front();
        }
        // Tickets of messages forgotten at a reconnect may still finish later: drop their marks.
        if let Some((oldest, _)) = self.pending.front() {
            let oldest = *oldest;
            self.finished.retain(|seq| *seq >= oldest);
        } else if self.finished.len() > ACK_CHANNEL_CAPACITY {
            self.finished.clear();
        }
    }
}
