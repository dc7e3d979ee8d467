//! Deciding at the lane while the platform cannot answer (SPEC §2): the signed `standing` list
//! the platform keeps on each gate, the decision a lane makes from it alone, and the `offline`
//! report of the decisions it made.
//!
//! Plates travel as keyed hashes: 8 bytes of HMAC-SHA256 under the platform's standing key, so
//! a list never shows a plate in the clear. The key itself rides in each list wrapped for its
//! gate (XOR with an HMAC of the gate's secret), so only that gate (and the platform) can hash a
//! plate the same way. A lane hashes the plate it read, normalised, and looks it up.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};

use crate::id::EventId;
use crate::message::{Direction, GateAction, GateReason};
use crate::plate::PlateColor;
use crate::time::rfc3339;

type HmacSha256 = Hmac<sha2::Sha256>;

/// A lane that has had no command for a read this long decides alone (SPEC §2).
pub const DECIDE_ALONE_AFTER: std::time::Duration = std::time::Duration::from_millis(1_500);

/// At most this many decisions travel in one `offline` report.
pub const MAX_REPORTED: usize = 100;

/// The key plates are hashed under in standing lists.
#[derive(Clone, PartialEq, Eq)]
pub struct StandingKey([u8; 32]);

impl std::fmt::Debug for StandingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StandingKey(…)")
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        unreachable!("HMAC takes a key of any length")
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The pad that wraps the standing key for one gate: only its secret makes it.
fn pad(gate_secret: &[u8]) -> [u8; 32] {
    hmac(gate_secret, &[b"parkflow/v1/standing-key"])
}

impl StandingKey {
    /// The platform's key, derived from a secret of its own (every node derives the same one).
    pub fn derive(secret: &[u8]) -> Self {
        Self(hmac(secret, &[b"parkflow/v1/standing-hash"]))
    }

    /// The keyed hash of a normalised plate.
    pub fn hash(&self, plate: &str) -> u64 {
        let digest = hmac(&self.0, &[plate.as_bytes()]);
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }

    /// The key as it travels to one gate.
    pub fn wrap(&self, gate_secret: &[u8]) -> String {
        let pad = pad(gate_secret);
        let wrapped: Vec<u8> = self.0.iter().zip(pad).map(|(k, p)| k ^ p).collect();
        STANDING_B64.encode(wrapped)
    }

    /// The key a list carries, unwrapped with the gate's own secret.
    pub fn unwrap(wrapped: &str, gate_secret: &[u8]) -> Option<Self> {
        let bytes = STANDING_B64.decode(wrapped).ok()?;
        let bytes: [u8; 32] = bytes.try_into().ok()?;
        let pad = pad(gate_secret);
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = bytes[i] ^ pad[i];
        }
        Some(Self(key))
    }
}

const STANDING_B64: base64::engine::GeneralPurpose = STANDARD;

/// A set of keyed plate hashes: sorted, each once; in JSON one base64 string of 8-byte
/// big-endian values (a million plates in 10.7 MB).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlateHashes(Vec<u64>);

impl PlateHashes {
    pub fn new(mut hashes: Vec<u64>) -> Self {
        hashes.sort_unstable();
        hashes.dedup();
        Self(hashes)
    }

    pub fn contains(&self, hash: u64) -> bool {
        self.0.binary_search(&hash).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What `self` has that `other` has not.
    pub fn minus(&self, other: &Self) -> Self {
        Self(
            self.0
                .iter()
                .copied()
                .filter(|h| !other.contains(*h))
                .collect(),
        )
    }
}

impl FromIterator<u64> for PlateHashes {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        Self::new(iter.into_iter().collect())
    }
}

impl Serialize for PlateHashes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(self.0.len() * 8);
        for hash in &self.0 {
            bytes.extend_from_slice(&hash.to_be_bytes());
        }
        serializer.serialize_str(&STANDING_B64.encode(bytes))
    }
}

impl<'de> Deserialize<'de> for PlateHashes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = STANDING_B64
            .decode(text)
            .map_err(serde::de::Error::custom)?;
        if bytes.len() % 8 != 0 {
            return Err(serde::de::Error::custom("plate hashes are 8 bytes each"));
        }
        let hashes = bytes
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
            .collect();
        Ok(Self::new(hashes))
    }
}

/// How a lane answers, while the platform is away, a car its list does not name.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfflinePolicy {
    /// Let it out; the platform invoices its plate afterwards.
    #[default]
    OpenAndInvoice,
    /// Keep the barrier shut and call an attendant.
    HoldForAttendant,
}

impl OfflinePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAndInvoice => "open_and_invoice",
            Self::HoldForAttendant => "hold_for_attendant",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::OpenAndInvoice, Self::HoldForAttendant]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// The plates a list names, by what a lane does with them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlateSets {
    /// Enrolled drivers in good standing: out at once, billed later.
    pub leave_first: PlateHashes,
    /// Passes for this lot valid now: in when full, out at once.
    pub passes: PlateHashes,
    /// Blocked by the operator: held at entry.
    pub blocked: PlateHashes,
    /// Suspended for arrears or owing an invoice: held at the exit, whatever the policy.
    pub owing: PlateHashes,
}

impl PlateSets {
    /// What `self` has that `other` has not, set by set.
    pub fn minus(&self, other: &Self) -> Self {
        Self {
            leave_first: self.leave_first.minus(&other.leave_first),
            passes: self.passes.minus(&other.passes),
            blocked: self.blocked.minus(&other.blocked),
            owing: self.owing.minus(&other.owing),
        }
    }

    pub fn len(&self) -> usize {
        self.leave_first.len() + self.passes.len() + self.blocked.len() + self.owing.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `lots/{lot}/gates/{gate}/standing`: what the gate needs to decide alone. A *full* list
/// (`base` = `version`, retained) names every plate; a *delta* (`base` < `version`, not
/// retained) names what was added to and removed from the full list `base` since, all of it, so
/// a lane that missed a delta is whole again with the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StandingList {
    pub version: u64,
    pub base: u64,
    #[serde(with = "rfc3339")]
    pub issued_at: DateTime<Utc>,
    /// The hash key, wrapped for this gate ([`StandingKey::wrap`]).
    pub key: String,
    pub offline_policy: OfflinePolicy,
    /// The lot's capacity, and the cars inside when the list was made: a lane holds entries
    /// (but for passes) once its own count reaches the capacity.
    pub capacity: u32,
    pub occupied: u32,
    /// A full list's plates, or a delta's additions.
    #[serde(flatten)]
    pub plates: PlateSets,
    /// A delta's removals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<PlateSets>,
}

impl StandingList {
    pub fn is_full(&self) -> bool {
        self.base == self.version && self.removed.is_none()
    }
}

/// What a lane knows from its lists: the last full list and the newest delta on it.
#[derive(Debug, Clone, Default)]
pub struct StandingView {
    full: Option<(StandingKey, StandingList)>,
    delta: Option<StandingList>,
}

/// Why a lane did not take a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StandingError {
    #[error("the list's key does not unwrap")]
    Key,
    #[error("a delta on a full list this lane does not hold")]
    UnknownBase,
    #[error("older than the list this lane holds")]
    Stale,
}

impl StandingView {
    /// Takes a verified list for this gate.
    pub fn apply(&mut self, list: StandingList, gate_secret: &[u8]) -> Result<(), StandingError> {
        if list.version <= self.version() {
            return Err(StandingError::Stale);
        }
        if list.is_full() {
            let key = StandingKey::unwrap(&list.key, gate_secret).ok_or(StandingError::Key)?;
            self.full = Some((key, list));
            self.delta = None;
            return Ok(());
        }
        match &self.full {
            Some((_, full)) if full.version == list.base => {
                self.delta = Some(list);
                Ok(())
            }
            _ => Err(StandingError::UnknownBase),
        }
    }

    /// The version decisions are made with (0: no list yet).
    pub fn version(&self) -> u64 {
        match (&self.delta, &self.full) {
            (Some(delta), _) => delta.version,
            (None, Some((_, full))) => full.version,
            (None, None) => 0,
        }
    }

    /// The newest list's terms (policy, capacity), if any list is held.
    fn terms(&self) -> Option<&StandingList> {
        self.delta.as_ref().or(self.full.as_ref().map(|(_, f)| f))
    }

    fn has(&self, plate_hash: u64, set: impl Fn(&PlateSets) -> &PlateHashes) -> bool {
        let Some((_, full)) = &self.full else {
            return false;
        };
        match &self.delta {
            Some(delta) => {
                let removed = delta
                    .removed
                    .as_ref()
                    .is_some_and(|r| set(r).contains(plate_hash));
                !removed
                    && (set(&full.plates).contains(plate_hash)
                        || set(&delta.plates).contains(plate_hash))
            }
            None => set(&full.plates).contains(plate_hash),
        }
    }

    /// The lane's own decision for a normalised plate read, with `inside` its count of the cars
    /// in the lot (the list's count plus the entries less the exits it let through since).
    /// Without any list a lane opens entries and holds exits for an attendant.
    pub fn decide(
        &self,
        plate: &str,
        direction: Direction,
        inside: u32,
    ) -> (GateAction, GateReason) {
        let (Some((key, _)), Some(terms)) = (&self.full, self.terms()) else {
            return match direction {
                Direction::Entry => (GateAction::Open, GateReason::Entered),
                Direction::Exit => (GateAction::Hold, GateReason::Attendant),
            };
        };
        let hash = key.hash(plate);
        let pass = self.has(hash, |s| &s.passes);
        match direction {
            Direction::Entry if self.has(hash, |s| &s.blocked) => {
                (GateAction::Hold, GateReason::Blocked)
            }
            Direction::Entry if pass => (GateAction::Open, GateReason::PassHolder),
            Direction::Entry if inside >= terms.capacity => (GateAction::Hold, GateReason::LotFull),
            Direction::Entry => (GateAction::Open, GateReason::Entered),
            Direction::Exit if pass => (GateAction::Open, GateReason::PassHolder),
            Direction::Exit if self.has(hash, |s| &s.owing) => {
                (GateAction::Hold, GateReason::PaymentRequired)
            }
            Direction::Exit if self.has(hash, |s| &s.leave_first) => {
                (GateAction::Open, GateReason::BillLater)
            }
            Direction::Exit => match terms.offline_policy {
                OfflinePolicy::OpenAndInvoice => (GateAction::Open, GateReason::InvoiceLater),
                OfflinePolicy::HoldForAttendant => (GateAction::Hold, GateReason::Attendant),
            },
        }
    }

    /// The cars inside when the newest list was made (0 without a list).
    pub fn occupied(&self) -> u32 {
        self.terms().map_or(0, |t| t.occupied)
    }
}

/// One decision a lane made alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfflineDecision {
    /// The read it answers (the lane keeps sending that read as well).
    pub event_id: EventId,
    pub plate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plate_color: Option<PlateColor>,
    pub direction: Direction,
    #[serde(with = "rfc3339")]
    pub observed_at: DateTime<Utc>,
    pub action: GateAction,
    pub reason: GateReason,
    /// The list it was decided with (0: none).
    pub standing_version: u64,
}

/// `lots/{lot}/gates/{gate}/offline`: decisions a lane made alone, re-sent until each is
/// answered by a command with `action` `ack_offline` and its `event_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfflineReport {
    pub decisions: Vec<OfflineDecision>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(
        version: u64,
        base: u64,
        plates: PlateSets,
        removed: Option<PlateSets>,
    ) -> StandingList {
        StandingList {
            version,
            base,
            issued_at: Utc::now(),
            key: StandingKey::derive(b"platform").wrap(b"gate-secret"),
            offline_policy: OfflinePolicy::OpenAndInvoice,
            capacity: 2,
            occupied: 0,
            plates,
            removed,
        }
    }

    fn sets(key: &StandingKey, leave_first: &[&str], owing: &[&str]) -> PlateSets {
        PlateSets {
            leave_first: leave_first.iter().map(|p| key.hash(p)).collect(),
            owing: owing.iter().map(|p| key.hash(p)).collect(),
            ..PlateSets::default()
        }
    }

    #[test]
    fn the_key_unwraps_only_with_the_gates_secret() {
        let key = StandingKey::derive(b"platform");
        let wrapped = key.wrap(b"gate-secret");
        assert_eq!(
            StandingKey::unwrap(&wrapped, b"gate-secret"),
            Some(key.clone())
        );
        assert_ne!(StandingKey::unwrap(&wrapped, b"other-secret"), Some(key));
    }

    #[test]
    fn hashes_round_trip_through_json() {
        let hashes: PlateHashes = [3u64, 1, u64::MAX, 3].into_iter().collect();
        let json = serde_json::to_string(&hashes).unwrap();
        let back: PlateHashes = serde_json::from_str(&json).unwrap();
        assert_eq!(back, hashes);
        assert_eq!(back.len(), 3);
        assert!(serde_json::from_str::<PlateHashes>("\"AAAA\"").is_err());
    }

    #[test]
    fn a_lane_decides_from_its_full_list_and_the_newest_delta() {
        let key = StandingKey::derive(b"platform");
        let mut view = StandingView::default();
        assert_eq!(
            view.decide("A12345", Direction::Exit, 0),
            (GateAction::Hold, GateReason::Attendant)
        );
        view.apply(
            list(10, 10, sets(&key, &["A12345"], &[]), None),
            b"gate-secret",
        )
        .unwrap();
        assert_eq!(
            view.decide("A12345", Direction::Exit, 0),
            (GateAction::Open, GateReason::BillLater)
        );
        assert_eq!(
            view.decide("B99999", Direction::Exit, 0),
            (GateAction::Open, GateReason::InvoiceLater)
        );
        // The driver is suspended: a delta moves the plate from leave-first to owing.
        let delta = list(
            12,
            10,
            sets(&key, &[], &["A12345"]),
            Some(sets(&key, &["A12345"], &[])),
        );
        view.apply(delta, b"gate-secret").unwrap();
        assert_eq!(view.version(), 12);
        assert_eq!(
            view.decide("A12345", Direction::Exit, 0),
            (GateAction::Hold, GateReason::PaymentRequired)
        );
        // A delta on a base this lane never had, or an older list, is not taken.
        assert_eq!(
            view.apply(
                list(13, 11, PlateSets::default(), Some(PlateSets::default())),
                b"gate-secret"
            ),
            Err(StandingError::UnknownBase)
        );
        assert_eq!(
            view.apply(list(11, 11, PlateSets::default(), None), b"gate-secret"),
            Err(StandingError::Stale)
        );
        // Full: entries hold once the lane counts the lot full.
        assert_eq!(
            view.decide("C11111", Direction::Entry, 2),
            (GateAction::Hold, GateReason::LotFull)
        );
    }
}
