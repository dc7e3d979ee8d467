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
pub(crate) const ACK_CHANNEL_CAPACITY: usize = 65_536;

enum AckEvent {
    Arrived(u64, Publish),
    Finished(u64),
    /// Finished by handing it on: published again, as it came, for whoever runs its lot now.
    Forward(u64),
    /// The connection was re-established: outstanding messages will be re-delivered, forget them.
    Reconnected,
}

/// Proof that a message still needs finishing; dropping it marks the message finished: a broker
/// message is acknowledged (in arrival order), an HTTP request ([`Ticket::recorded`]) answered.
#[derive(Debug)]
pub struct Ticket {
    seq: u64,
    to: Finish,
    abandoned: bool,
}

/// Whom a finished ticket tells.
#[derive(Debug)]
enum Finish {
    /// The acker, which acknowledges the broker message.
    Acker(mpsc::Sender<AckEvent>),
    /// Whoever waits to answer an HTTP request (an ANPR camera's event).
    Waiter(Option<tokio::sync::oneshot::Sender<()>>),
}

impl Ticket {
    /// A ticket for a read that came over HTTP: the receiver hears when it is finished (on
    /// record), and hears nothing (the sender dropped) when it was given up.
    pub(crate) fn recorded() -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ticket = Self {
            seq: 0,
            to: Finish::Waiter(Some(tx)),
            abandoned: false,
        };
        (ticket, rx)
    }

    /// Gives the message up unfinished (its owner is gone): it is never acknowledged, so the
    /// broker delivers it again after the reconnection (and nothing after it is acknowledged
    /// before then — acknowledgements go in arrival order); an HTTP sender is told to retry.
    pub fn abandon(mut self) {
        self.abandoned = true;
    }

    /// Finishes the message by publishing it again, unchanged (its signature still holds), for
    /// the gateway node that runs its lot now, then acknowledging it: a message this node
    /// received for a lot it no longer holds is not lost with it. (An HTTP read cannot be
    /// published again: its sender is told to retry, and reaches the right node then.)
    pub fn forward(mut self) {
        self.abandoned = true;
        let Finish::Acker(tx) = &self.to else {
            return;
        };
        if tx.try_send(AckEvent::Forward(self.seq)).is_err() {
            tracing::error!(
                seq = self.seq,
                "ack channel full or closed; message will be re-delivered"
            );
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.abandoned {
            return;
        }
        match &mut self.to {
            // At most one `Finished` per outstanding ticket, and outstanding tickets are bounded
            // by the broker's in-flight window, far below the channel's capacity.
            Finish::Acker(tx) => {
                if tx.try_send(AckEvent::Finished(self.seq)).is_err() {
                    tracing::error!(
                        seq = self.seq,
                        "ack channel full or closed; message will be re-delivered"
                    );
                }
            }
            Finish::Waiter(waiter) => {
                if let Some(waiter) = waiter.take() {
                    let _ = waiter.send(());
                }
            }
        }
    }
}

impl std::fmt::Debug for AckEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Arrived(seq, _) => write!(f, "Arrived({seq})"),
            Self::Finished(seq) => write!(f, "Finished({seq})"),
            Self::Forward(seq) => write!(f, "Forward({seq})"),
            Self::Reconnected => write!(f, "Reconnected"),
        }
    }
}

/// Issues tickets (used by the event loop task).
pub(crate) struct TicketIssuer {
    next: u64,
    tx: mpsc::Sender<AckEvent>,
}

impl TicketIssuer {
    /// Registers a QoS 1 message and returns its ticket.
    pub(crate) async fn issue(&mut self, publish: Publish) -> Option<Ticket> {
        let seq = self.next;
        self.next += 1;
        self.tx.send(AckEvent::Arrived(seq, publish)).await.ok()?;
        Some(Ticket {
            seq,
            to: Finish::Acker(self.tx.clone()),
            abandoned: false,
        })
    }

    /// Forgets every outstanding message (the broker re-sends them after a reconnect).
    pub(crate) async fn reconnected(&mut self) {
        let _ = self.tx.send(AckEvent::Reconnected).await;
    }
}

/// The order acknowledgements must keep: messages arrive numbered; they finish in any order;
/// an acknowledgement may go out only for a finished message all of whose predecessors went out.
#[derive(Debug)]
pub(crate) struct AckOrder<T> {
    pending: VecDeque<(u64, T)>,
    finished: BTreeSet<u64>,
}

impl<T> Default for AckOrder<T> {
    fn default() -> Self {
        Self {
            pending: VecDeque::new(),
            finished: BTreeSet::new(),
        }
    }
}

impl<T> AckOrder<T> {
    pub(crate) fn arrived(&mut self, seq: u64, message: T) {
        self.pending.push_back((seq, message));
    }

    pub(crate) fn finished(&mut self, seq: u64) {
        // A message forgotten at a reconnect may still finish later: it is older than every pending one.
        if self
            .pending
            .front()
            .is_some_and(|(oldest, _)| seq >= *oldest)
        {
            self.finished.insert(seq);
        }
    }

    /// Forgets everything outstanding (the broker re-delivers it after a reconnect).
    pub(crate) fn clear(&mut self) {
        self.pending.clear();
        self.pending.shrink_to(1_024);
        self.finished.clear();
    }

    /// The oldest message, if it is finished and may be acknowledged now.
    pub(crate) fn next_ready(&self) -> Option<&T> {
        self.pending
            .front()
            .filter(|(seq, _)| self.finished.contains(seq))
            .map(|(_, message)| message)
    }

    /// The pending message `seq`, if it is still pending.
    pub(crate) fn get(&self, seq: u64) -> Option<&T> {
        self.pending
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, message)| message)
    }

    /// Marks the oldest message acknowledged.
    pub(crate) fn acknowledged(&mut self) {
        if let Some((seq, _)) = self.pending.pop_front() {
            self.finished.remove(&seq);
        }
        // A burst can leave hundreds of thousands of slots (40 MB) behind; give them back once
        // the queue is a quarter full, as a vector grows: amortised, one move per slot.
        let floor = self.pending.len().max(1_024);
        if self.pending.capacity() > 4 * floor {
            self.pending.shrink_to(2 * floor);
        }
    }
}

/// Sends PUBACKs in arrival order.
pub(crate) struct Acker {
    rx: mpsc::Receiver<AckEvent>,
    client: AsyncClient,
    order: AckOrder<Publish>,
    /// Messages to publish again before they are finished (`Ticket::forward`).
    forward: VecDeque<u64>,
    /// What was handed on lately (a hash of topic and payload, and when): a message that comes
    /// back to be handed on again (this node was still subscribed to its lot) goes on once.
    forwarded: std::collections::HashMap<u64, std::time::Instant>,
    hasher: std::hash::RandomState,
}

/// How long a message handed on is remembered, so that it is handed on once.
const FORWARDED_FOR: Duration = Duration::from_secs(30);

/// Creates the issuer (for the event loop) and the acker task's state.
pub(crate) fn channel(client: AsyncClient) -> (TicketIssuer, Acker) {
    let (tx, rx) = mpsc::channel(ACK_CHANNEL_CAPACITY);
    (
        TicketIssuer { next: 0, tx },
        Acker {
            rx,
            client,
            order: AckOrder::default(),
            forward: VecDeque::new(),
            forwarded: std::collections::HashMap::new(),
            hasher: std::hash::RandomState::new(),
        },
    )
}

impl Acker {
    /// Runs until the event loop task and every ticket are gone.
    pub(crate) async fn run(mut self) {
        let mut retry = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                event = self.rx.recv() => match event {
                    Some(AckEvent::Arrived(seq, publish)) => self.order.arrived(seq, publish),
                    Some(AckEvent::Finished(seq)) => self.order.finished(seq),
                    Some(AckEvent::Forward(seq)) => self.forward.push_back(seq),
                    Some(AckEvent::Reconnected) => {
                        self.order.clear();
                        self.forward.clear();
                    }
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
        use std::hash::BuildHasher;
        let now = std::time::Instant::now();
        if self.forwarded.len() > 1_000 {
            self.forwarded
                .retain(|_, at| now.duration_since(*at) < FORWARDED_FOR);
        }
        while let Some(&seq) = self.forward.front() {
            if let Some(publish) = self.order.get(seq) {
                let key = self
                    .hasher
                    .hash_one((publish.topic.as_str(), publish.payload.as_ref()));
                if self
                    .forwarded
                    .get(&key)
                    .is_some_and(|at| now.duration_since(*at) < FORWARDED_FOR)
                {
                    // Handed on already: it came back, and goes no further.
                    self.order.finished(seq);
                    self.forward.pop_front();
                    continue;
                }
                // Never block; a full request queue is retried at the next tick.
                if self
                    .client
                    .try_publish(
                        publish.topic.clone(),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        publish.payload.clone(),
                    )
                    .is_err()
                {
                    break;
                }
                self.forwarded.insert(key, now);
                self.order.finished(seq);
            }
            self.forward.pop_front();
        }
        while let Some(publish) = self.order.next_ready() {
            // Never block: the event loop may be waiting on us. A full request queue is retried.
            if self.client.try_ack(publish).is_err() {
                break;
            }
            self.order.acknowledged();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_abandoned_ticket_never_finishes_its_message() {
        let (tx, mut rx) = mpsc::channel(8);
        let abandoned = Ticket {
            seq: 1,
            to: Finish::Acker(tx.clone()),
            abandoned: false,
        };
        abandoned.abandon();
        drop(Ticket {
            seq: 2,
            to: Finish::Acker(tx),
            abandoned: false,
        });
        assert!(matches!(rx.try_recv(), Ok(AckEvent::Finished(2))));
        assert!(rx.try_recv().is_err(), "nothing for the abandoned one");
    }

    #[test]
    fn a_drained_queue_gives_a_burst_s_slots_back() {
        let mut order = AckOrder::default();
        for seq in 0..100_000 {
            order.arrived(seq, seq);
        }
        for seq in 0..100_000 {
            order.finished(seq);
        }
        assert_eq!(ready(&mut order).len(), 100_000);
        assert!(order.pending.capacity() <= 4 * 1_024);
    }

    fn ready(order: &mut AckOrder<u64>) -> Vec<u64> {
        let mut acked = Vec::new();
        while let Some(message) = order.next_ready() {
            acked.push(*message);
            order.acknowledged();
        }
        acked
    }

    #[test]
    fn acknowledgements_keep_arrival_order() {
        let mut order = AckOrder::default();
        for seq in 0..4 {
            order.arrived(seq, seq);
        }
        order.finished(2);
        order.finished(1);
        assert!(ready(&mut order).is_empty(), "message 0 is not durable yet");
        order.finished(0);
        assert_eq!(ready(&mut order), vec![0, 1, 2]);
        order.finished(3);
        assert_eq!(ready(&mut order), vec![3]);
    }

    #[test]
    fn a_reconnect_forgets_what_was_outstanding() {
        let mut order = AckOrder::default();
        order.arrived(0, 0);
        order.arrived(1, 1);
        order.clear();
        order.finished(0);
        order.arrived(2, 2);
        order.finished(1);
        assert!(
            ready(&mut order).is_empty(),
            "messages from before the reconnect are never acknowledged"
        );
        order.finished(2);
        assert_eq!(ready(&mut order), vec![2]);
    }
}
