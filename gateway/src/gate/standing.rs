//! The standing lists lanes decide alone with (SPEC §2, `standing`): one list per gate, signed
//! with its camera's secret, kept in step with drivers' standing, passes, blocks and plates that
//! owe. Each gate has a *full* list (retained, so a lane that connects gets it at once) and, as
//! things change, a *delta* on it naming everything added and removed since (not retained: a
//! lane that missed one is whole again with the next, re-sent every half minute). When a delta
//! grows past a tenth of its list, a new full list replaces both.
//!
//! The keeper reads the facts from the database (never the gate actor's memory: the actor does
//! not wait for it, and it does not wait for the actor), when told that they changed and every
//! half minute (passes expire, invoices are raised by billing).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use parkflow_protocol::sign::seal;
use parkflow_protocol::standing::{PlateHashes, PlateSets, StandingKey, StandingList};
use parkflow_protocol::{GateId, LotId, Plate, Topic};
use rumqttc::{AsyncClient, QoS};
use secrecy::ExposeSecret;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::availability::AvailabilityHandle;
use crate::cluster::Ownership;
use crate::metrics::{KindLabel, Metrics};
use crate::registry::{LotKind, RegistryHandle};
use crate::store::{Db, StoreError, sessions};

/// Changes are gathered this long before lists are made.
const GATHER: Duration = Duration::from_millis(300);
/// Facts are read again, deltas re-sent and counts refreshed this often.
const RESEND: Duration = Duration::from_secs(30);
/// The largest list published: the embedded broker refuses payloads over 512 KiB (and drops
/// the connection that sent one). About 34,000 plates at 14.2 bytes each once signed.
pub(crate) const MAX_LIST_BYTES: usize = 480 * 1024;

/// Tells the keeper that drivers, passes, blocks or debts changed.
#[derive(Debug, Clone, Default)]
pub(crate) struct StandingChanged(Arc<Notify>);

impl StandingChanged {
    pub(crate) fn tell(&self) {
        self.0.notify_one();
    }
}

/// What lists are made of.
struct Facts {
    leave_first: PlateHashes,
    owing: PlateHashes,
    passes: HashMap<LotId, PlateHashes>,
    blocked: HashMap<LotId, PlateHashes>,
}

/// What one gate was last sent.
struct Kept {
    /// Its camera's wrapped key: a rotated secret makes a new full list.
    key: String,
    full: StandingList,
    delta: Option<StandingList>,
}

impl Kept {
    fn newest(&self) -> &StandingList {
        self.delta.as_ref().unwrap_or(&self.full)
    }
}

pub(crate) struct StandingKeeper {
    db: Db,
    registry: RegistryHandle,
    availability: AvailabilityHandle,
    client: AsyncClient,
    key: StandingKey,
    ownership: Option<Arc<Ownership>>,
    metrics: Arc<Metrics>,
    changed: StandingChanged,
    /// The gate actor, told what plates owe (a sender that does not keep it alive).
    actor: tokio::sync::mpsc::WeakSender<super::GateMessage>,
    /// Each plate's hash, so that a million plates are hashed once, not every round.
    hashes: HashMap<Plate, u64>,
    gates: HashMap<(LotId, GateId), Kept>,
}

impl StandingKeeper {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        db: Db,
        registry: RegistryHandle,
        availability: AvailabilityHandle,
        client: AsyncClient,
        key: StandingKey,
        ownership: Option<Arc<Ownership>>,
        metrics: Arc<Metrics>,
        gates: super::GateHandle,
    ) -> Self {
        let changed = gates.standing_changed();
        let actor = gates.downgrade();
        Self {
            db,
            registry,
            availability,
            client,
            key,
            ownership,
            metrics,
            changed,
            actor,
            hashes: HashMap::new(),
            gates: HashMap::new(),
        }
    }

    pub(crate) async fn run(mut self, token: CancellationToken) {
        let mut resend = tokio::time::interval(RESEND);
        resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let refresh = tokio::select! {
                () = token.cancelled() => break,
                () = self.changed.0.notified() => {
                    tokio::time::sleep(GATHER).await;
                    false
                }
                _ = resend.tick() => true,
            };
            if let Err(error) = self.round(refresh).await {
                tracing::warn!(error = %error, "standing lists not made this round; next round retries");
            }
        }
    }

    fn hash(&mut self, plate: Plate) -> u64 {
        let key = &self.key;
        *self
            .hashes
            .entry(plate)
            .or_insert_with_key(|plate| key.hash(plate.as_str()))
    }

    async fn facts(&mut self) -> Result<Facts, StoreError> {
        let now = Utc::now();
        let enrolled = sessions::enrolled_plates(&self.db).await?;
        let owing_plates = sessions::owing_plates(&self.db).await?;
        let passes = sessions::passes(&self.db, now).await?;
        let blocked = sessions::blocked_plates(&self.db).await?;
        let mut leave_first = Vec::with_capacity(enrolled.len());
        let mut owing = Vec::with_capacity(owing_plates.len());
        for (plate, suspended) in enrolled {
            let hash = self.hash(plate);
            if suspended {
                owing.push(hash);
            } else {
                leave_first.push(hash);
            }
        }
        let mut owed: HashMap<Plate, Vec<(String, i64)>> = HashMap::new();
        for (plate, currency, minor) in owing_plates {
            owed.entry(plate.clone())
                .or_default()
                .push((currency, minor));
            owing.push(self.hash(plate));
        }
        // The gate actor collects it at the plate's next held exit (it never reads it itself).
        if let Some(actor) = self.actor.upgrade() {
            let _ = actor.send(super::GateMessage::Owed(owed)).await;
        }
        let mut pass_hashes: HashMap<LotId, Vec<u64>> = HashMap::new();
        for (lot, plate, from, _) in passes {
            if from <= now {
                let hash = self.hash(plate);
                pass_hashes.entry(lot).or_default().push(hash);
            }
        }
        let mut blocked_hashes: HashMap<LotId, Vec<u64>> = HashMap::new();
        for (lot, plate) in blocked {
            let hash = self.hash(plate);
            blocked_hashes.entry(lot).or_default().push(hash);
        }
        Ok(Facts {
            leave_first: PlateHashes::new(leave_first),
            owing: PlateHashes::new(owing),
            passes: pass_hashes
                .into_iter()
                .map(|(lot, h)| (lot, PlateHashes::new(h)))
                .collect(),
            blocked: blocked_hashes
                .into_iter()
                .map(|(lot, h)| (lot, PlateHashes::new(h)))
                .collect(),
        })
    }

    /// Makes and sends what changed; with `refresh`, also re-sends deltas and newer counts.
    async fn round(&mut self, refresh: bool) -> Result<(), StoreError> {
        let facts = self.facts().await?;
        let registry = self.registry.snapshot();
        let board = self.availability.board();
        let now = Utc::now();
        let mut seen = Vec::new();
        for gate in registry.gates() {
            let lot = registry.lot(gate.lot);
            if lot.kind != LotKind::OffStreet
                || self
                    .ownership
                    .as_ref()
                    .is_some_and(|o| !o.holds(lot.id.as_str()))
            {
                continue;
            }
            let Some(camera) = gate.camera.as_ref().and_then(|id| registry.device(id)) else {
                continue;
            };
            let secret = camera.secret.expose_secret().as_bytes();
            let key = self.key.wrap(secret);
            let occupied = board
                .registry
                .lot_by_id(&lot.id)
                .and_then(|l| board.lots.get(l.idx as usize))
                .map_or(0, |a| a.counts.occupied);
            let plates = PlateSets {
                leave_first: facts.leave_first.clone(),
                passes: facts.passes.get(&lot.id).cloned().unwrap_or_default(),
                blocked: facts.blocked.get(&lot.id).cloned().unwrap_or_default(),
                owing: facts.owing.clone(),
            };
            let id = (lot.id.clone(), gate.id.clone());
            seen.push(id.clone());
            let kept = self.gates.get(&id).filter(|k| k.key == key);
            let next = next_list(kept, plates, lot, occupied, &key, refresh);
            let (list, resend) = match next {
                Next::Nothing => continue,
                Next::Resend => match kept.and_then(|k| k.delta.clone()) {
                    Some(delta) => (delta, true),
                    None => continue,
                },
                Next::List(list) => (*list, false),
            };
            let list = StandingList {
                issued_at: if resend { list.issued_at } else { now },
                ..list
            };
            let topic = Topic::GateStanding {
                lot: lot.id.clone(),
                gate: gate.id.clone(),
            };
            let payload = seal(&topic, &list, &camera.id, secret);
            if payload.len() > MAX_LIST_BYTES {
                tracing::error!(lot = %lot.id, gate = %gate.id, bytes = payload.len(), "standing list too large to publish; the lane keeps its older list");
                continue;
            }
            let full = list.is_full();
            if let Err(error) = self
                .client
                .publish(topic.to_string(), QoS::AtLeastOnce, full, payload)
                .await
            {
                tracing::warn!(error = %error, "standing list not queued");
                continue;
            }
            self.metrics
                .standing_lists
                .get_or_create(&KindLabel {
                    kind: if full { "full" } else { "delta" },
                })
                .inc();
            if full {
                self.gates.insert(
                    id,
                    Kept {
                        key,
                        full: list,
                        delta: None,
                    },
                );
            } else if let Some(kept) = self.gates.get_mut(&id) {
                kept.delta = Some(list);
            }
        }
        // Gates gone, given up to another node, or without a camera now: forgotten.
        let seen: std::collections::HashSet<_> = seen.into_iter().collect();
        self.gates.retain(|id, _| seen.contains(id));
        Ok(())
    }
}

enum Next {
    Nothing,
    Resend,
    List(Box<StandingList>),
}

/// What a gate is sent next: nothing, its delta again, a delta, or a full list.
fn next_list(
    kept: Option<&Kept>,
    plates: PlateSets,
    lot: &crate::registry::Lot,
    occupied: u32,
    key: &str,
    refresh: bool,
) -> Next {
    let now_ms = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
    let full = |version: u64| StandingList {
        version,
        base: version,
        issued_at: Utc::now(),
        key: key.to_owned(),
        offline_policy: lot.offline_policy,
        capacity: lot.capacity,
        occupied,
        plates: plates.clone(),
        removed: None,
    };
    let Some(kept) = kept else {
        return Next::List(Box::new(full(now_ms)));
    };
    let newest = kept.newest();
    let version = now_ms.max(newest.version + 1);
    let added = plates.minus(&kept.full.plates);
    let removed = kept.full.plates.minus(&plates);
    let terms_changed =
        newest.offline_policy != lot.offline_policy || newest.capacity != lot.capacity;
    let count_changed = refresh && newest.occupied != occupied;
    let same_plates = match &kept.delta {
        Some(delta) => delta.plates == added && delta.removed.as_ref() == Some(&removed),
        None => added.is_empty() && removed.is_empty(),
    };
    if same_plates && !terms_changed && !count_changed {
        return if refresh { Next::Resend } else { Next::Nothing };
    }
    if added.len() + removed.len() > 1_000.max(kept.full.plates.len() / 10) {
        return Next::List(Box::new(full(version)));
    }
    Next::List(Box::new(StandingList {
        base: kept.full.version,
        removed: Some(removed),
        plates: added,
        ..full(version)
    }))
}
