//! The JSON messages of protocol v1 (SPEC §2), one type per topic.
//!
//! Every message a device signs also carries the `topic` it is published on, so a valid message
//! cannot be replayed on another topic; [`Message`] adds that field to any body.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::id::{BayId, EventId, LotId};
use crate::plate::PlateColor;
use crate::time::rfc3339;

/// A message body together with the topic it claims to be published on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message<T> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(flatten)]
    pub body: T,
}

/// `lots/{lot}/bays/{bay}/occupancy`: a bay sensor saw its bay change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OccupancyEvent {
    pub event_id: EventId,
    pub occupied: bool,
    #[serde(with = "rfc3339")]
    pub observed_at: DateTime<Utc>,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_pct: Option<u8>,
}

/// `lots/{lot}/bays/{bay}/heartbeat`: a bay sensor's periodic "still here", with its current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde(with = "rfc3339")]
    pub observed_at: DateTime<Utc>,
    pub occupied: bool,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_pct: Option<u8>,
}

/// `lots/{lot}/bays/{bay}/plate`: a bay camera read the plate of the car in its bay.
/// The plate is carried as read; the platform normalises and validates it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BayPlateRead {
    pub event_id: EventId,
    pub plate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plate_color: Option<PlateColor>,
    pub confidence: f64,
    #[serde(with = "rfc3339")]
    pub observed_at: DateTime<Utc>,
}

/// Which way a car passes a gate.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Entry,
    Exit,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Entry => "entry",
            Self::Exit => "exit",
        }
    }
}

/// `lots/{lot}/gates/{gate}/plate`: a gate camera read a plate in its lane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatePlateRead {
    pub event_id: EventId,
    pub plate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plate_color: Option<PlateColor>,
    pub confidence: f64,
    pub direction: Direction,
    #[serde(with = "rfc3339")]
    pub observed_at: DateTime<Utc>,
}

/// What the barrier does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateAction {
    Open,
    Hold,
    /// The platform has the decision a lane made alone (`offline`) and reported: stop sending it.
    AckOffline,
}

impl GateAction {
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Open, Self::Hold, Self::AckOffline]
            .into_iter()
            .find(|a| a.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Hold => "hold",
            Self::AckOffline => "ack_offline",
        }
    }
}

/// Why the platform decided what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateReason {
    /// A session was opened at entry.
    Entered,
    /// An enrolled driver in good standing (or a pass holder) leaves; billed later.
    BillLater,
    /// A pass holder enters or leaves.
    PassHolder,
    /// The car leaves without a matching entry (or with a doubtful match); the case goes to review.
    ReviewLater,
    /// A repeated read of a car already answered at this gate.
    RepeatedRead,
    /// Opened by an operator by hand.
    Manual,
    /// Paid at the exit; the barrier opens.
    Paid,
    /// Nothing is due (a stay within the grace period): the car leaves.
    NothingDue,
    /// The lot is full and the plate holds no pass.
    LotFull,
    /// The operator blocked this plate.
    Blocked,
    /// Not enrolled or suspended for arrears: pay `amount_due` at `pay_url` first.
    PaymentRequired,
    /// The camera's clock is off (its read is from too far ahead or too long ago to be trusted):
    /// the barrier stays shut and the lane calls an attendant; the device needs its clock set.
    DeviceClock,
    /// Decided by the lane alone: a car its list does not name let out under the lot's
    /// `open_and_invoice` policy; its plate is invoiced.
    InvoiceLater,
    /// Decided by the lane alone: held for an attendant (`hold_for_attendant`, or no list yet).
    Attendant,
    /// An `ack_offline`: the platform has reconciled the lane's decision.
    Reconciled,
}

impl GateReason {
    pub const ALL: [GateReason; 15] = [
        Self::Entered,
        Self::BillLater,
        Self::PassHolder,
        Self::ReviewLater,
        Self::RepeatedRead,
        Self::Manual,
        Self::Paid,
        Self::NothingDue,
        Self::LotFull,
        Self::Blocked,
        Self::PaymentRequired,
        Self::DeviceClock,
        Self::InvoiceLater,
        Self::Attendant,
        Self::Reconciled,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Entered => "entered",
            Self::BillLater => "bill_later",
            Self::PassHolder => "pass_holder",
            Self::ReviewLater => "review_later",
            Self::RepeatedRead => "repeated_read",
            Self::Manual => "manual",
            Self::Paid => "paid",
            Self::NothingDue => "nothing_due",
            Self::LotFull => "lot_full",
            Self::Blocked => "blocked",
            Self::PaymentRequired => "payment_required",
            Self::DeviceClock => "device_clock",
            Self::InvoiceLater => "invoice_later",
            Self::Attendant => "attendant",
            Self::Reconciled => "reconciled",
        }
    }
}

/// How long after it is issued a gate may carry out a command (SPEC §2: `expires_at` at most
/// 30 s after `issued_at`). A captured `open` is worth nothing to whoever replays it later.
pub const COMMAND_LIFETIME: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// `lots/{lot}/gates/{gate}/command`: the platform's answer to one plate read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateCommand {
    pub command_id: Uuid,
    pub event_id: EventId,
    pub action: GateAction,
    pub reason: GateReason,
    #[serde(with = "rfc3339")]
    pub issued_at: DateTime<Utc>,
    /// After this a gate ignores the command ([`COMMAND_LIFETIME`] after `issued_at`).
    #[serde(with = "rfc3339")]
    pub expires_at: DateTime<Utc>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub amount_due: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay_url: Option<String>,
}

impl GateCommand {
    /// A command without payment details, issued at `issued_at` and live for
    /// [`COMMAND_LIFETIME`].
    pub fn new(
        command_id: Uuid,
        event_id: EventId,
        action: GateAction,
        reason: GateReason,
        issued_at: DateTime<Utc>,
    ) -> Self {
        Self {
            command_id,
            event_id,
            action,
            reason,
            issued_at,
            expires_at: issued_at + COMMAND_LIFETIME,
            amount_due: None,
            currency: None,
            pay_url: None,
        }
    }

    /// Whether a gate may carry the command out at `now` (by its own clock): not expired, and
    /// not claiming a longer life than the protocol allows.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        now <= self.expires_at && self.expires_at <= self.issued_at + COMMAND_LIFETIME
    }

    /// The same command (same id and decision) sent again at `now`, for a gate that asked
    /// again: issued anew once it has expired, so that the gate can still carry it out.
    pub fn resent_at(&self, now: DateTime<Utc>) -> Self {
        if now < self.expires_at {
            return self.clone();
        }
        Self {
            issued_at: now,
            expires_at: now + COMMAND_LIFETIME,
            ..self.clone()
        }
    }
}

/// What a gate reports about its barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BarrierState {
    Opened,
    Closed,
    Fault,
}

/// `lots/{lot}/gates/{gate}/state`: a gate reports its barrier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<Uuid>,
    pub state: BarrierState,
    #[serde(with = "rfc3339")]
    pub observed_at: DateTime<Utc>,
}

/// One occupancy event inside a bridge batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BridgeEvent {
    pub lot: LotId,
    pub bay: BayId,
    pub event_id: EventId,
    pub occupied: bool,
    #[serde(with = "rfc3339")]
    pub observed_at: DateTime<Utc>,
    pub seq: u64,
}

/// `bridge/{device}/occupancy`: a network-server bridge forwards up to [`BridgeBatch::MAX_EVENTS`] events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BridgeBatch {
    pub events: Vec<BridgeEvent>,
}

impl BridgeBatch {
    pub const MAX_EVENTS: usize = 1_000;
}

/// How full a lot is, in the FIWARE vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub enum LotStatus {
    SpacesAvailable,
    AlmostFull,
    Full,
    Closed,
}

/// `lots/{lot}/availability` (retained): a lot's live counts for anyone to read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Availability {
    pub lot: LotId,
    pub total: u32,
    pub free: u32,
    pub occupied: u32,
    pub unknown: u32,
    pub status: LotStatus,
    #[serde(with = "rfc3339")]
    pub observed_at: DateTime<Utc>,
}

/// Whether a device is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    Online,
    Offline,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
        }
    }
}

/// `devices/{device}/status` (retained): a device's connection came or went. Signed like every
/// device message; the device's last will is the signed `offline` of the same `connection`, so
/// the platform applies an `offline` only for the connection it last saw `online`, and a forged
/// or replayed one changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub status: DeviceStatus,
    /// A random value the device picks for each connection (at most
    /// [`StatusReport::MAX_CONNECTION_LEN`] characters).
    pub connection: String,
    #[serde(with = "rfc3339")]
    pub observed_at: DateTime<Utc>,
}

impl StatusReport {
    pub const MAX_CONNECTION_LEN: usize = 64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_read_from_the_spec_parses_with_its_topic() {
        let json = r#"{"topic":"parkflow/v1/lots/l1/gates/g1/plate","event_id":"e-1","plate":"浙A12345",
            "plate_color":"blue","confidence":0.97,"direction":"entry","observed_at":"2026-11-29T08:00:00.000Z"}"#;
        let message: Message<GatePlateRead> = serde_json::from_str(json).unwrap();
        assert_eq!(
            message.topic.as_deref(),
            Some("parkflow/v1/lots/l1/gates/g1/plate")
        );
        assert_eq!(message.body.direction, Direction::Entry);
        assert_eq!(message.body.plate_color, Some(PlateColor::Blue));
    }

    #[test]
    fn a_hold_command_carries_money_as_a_decimal_string() {
        let issued_at = DateTime::parse_from_rfc3339("2026-11-29T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let command = GateCommand {
            amount_due: Some(Decimal::new(1250, 2)),
            currency: Some("CNY".into()),
            pay_url: Some("http://localhost/pay".into()),
            ..GateCommand::new(
                Uuid::nil(),
                EventId::parse("e-1").unwrap(),
                GateAction::Hold,
                GateReason::PaymentRequired,
                issued_at,
            )
        };
        let json = serde_json::to_value(&command).unwrap();
        assert_eq!(json["amount_due"], "12.50");
        assert_eq!(json["action"], "hold");
        assert_eq!(json["reason"], "payment_required");
        assert_eq!(json["issued_at"], "2026-11-29T08:00:00.000Z");
        assert_eq!(json["expires_at"], "2026-11-29T08:00:30.000Z");
        assert_eq!(
            serde_json::from_value::<GateCommand>(json).unwrap(),
            command
        );
    }

    #[test]
    fn a_command_lives_thirty_seconds_and_a_resent_one_lives_again() {
        let issued = Utc::now();
        let command = GateCommand::new(
            Uuid::nil(),
            EventId::parse("e-1").unwrap(),
            GateAction::Open,
            GateReason::Entered,
            issued,
        );
        assert!(command.is_live(issued + chrono::TimeDelta::seconds(30)));
        let later = issued + chrono::TimeDelta::seconds(31);
        assert!(!command.is_live(later), "a replayed open is not obeyed");
        let stretched = GateCommand {
            expires_at: issued + chrono::TimeDelta::hours(1),
            ..command.clone()
        };
        assert!(
            !stretched.is_live(issued),
            "no command lives longer than the protocol allows"
        );
        assert_eq!(command.resent_at(issued), command);
        let resent = command.resent_at(later);
        assert_eq!(resent.command_id, command.command_id);
        assert!(resent.is_live(later));
    }

    #[test]
    fn an_open_command_omits_the_payment_fields() {
        let command = GateCommand::new(
            Uuid::nil(),
            EventId::parse("e-1").unwrap(),
            GateAction::Open,
            GateReason::Entered,
            Utc::now(),
        );
        let json = serde_json::to_value(&command).unwrap();
        assert!(json.get("amount_due").is_none() && json.get("pay_url").is_none());
    }

    #[test]
    fn wrong_types_are_rejected() {
        let json =
            r#"{"event_id":"e","occupied":"yes","observed_at":"2026-11-29T08:00:00Z","seq":1}"#;
        assert!(serde_json::from_str::<OccupancyEvent>(json).is_err());
        let json = r#"{"event_id":"e","occupied":true,"observed_at":"yesterday","seq":1}"#;
        assert!(serde_json::from_str::<OccupancyEvent>(json).is_err());
        let json =
            r#"{"event_id":"e","occupied":true,"observed_at":"2026-11-29T08:00:00Z","seq":-1}"#;
        assert!(serde_json::from_str::<OccupancyEvent>(json).is_err());
    }

    #[test]
    fn actions_and_reasons_parse_what_they_print() {
        for reason in GateReason::ALL {
            assert_eq!(GateReason::parse(reason.as_str()), Some(reason));
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
        assert_eq!(GateAction::parse("hold"), Some(GateAction::Hold));
        assert_eq!(GateReason::parse("nonsense"), None);
    }

    #[test]
    fn availability_status_uses_fiware_words() {
        assert_eq!(
            serde_json::to_string(&LotStatus::SpacesAvailable).unwrap(),
            "\"spacesAvailable\""
        );
        assert_eq!(
            serde_json::to_string(&LotStatus::AlmostFull).unwrap(),
            "\"almostFull\""
        );
    }
}
