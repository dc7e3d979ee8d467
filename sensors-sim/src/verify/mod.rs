//! `--verify`: after a run, compares what the simulator drove (the journal) with what the platform
//! recorded, through the platform's API alone: one session per car that entered, closed at the
//! exit read that let it out, no session the simulator did not cause, every read answered once,
//! and fees that agree with an independent price calculation for a sample.

pub mod fee;

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use parkflow_protocol::{GateAction, GateReason, LotId};
use rust_decimal::Decimal;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::journal::JourneyRecord;
use crate::stats::Stats;
use crate::traffic::ROGUE_PLATE_PREFIX;

/// Rows the sessions listing returns at most; a full page is split in two and asked again.
const PAGE: usize = 1_000;

/// A session's `status` in the API (SPEC §4), as a client reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Open,
    Closed,
    Review,
    Void,
}

/// A session as `GET /v1/sessions` shows it (the fields verification reads).
#[derive(Debug, Clone, Deserialize)]
pub struct RecordedSession {
    pub id: uuid::Uuid,
    pub lot_id: String,
    pub plate: String,
    pub plate_color: Option<String>,
    pub status: SessionStatus,
    pub pass_holder: bool,
    pub entry_event_id: Option<String>,
    pub entered_at: DateTime<Utc>,
    pub exit_event_id: Option<String>,
    pub exited_at: Option<DateTime<Utc>>,
    pub bay_id: Option<String>,
    pub fee: Option<String>,
}

/// Why verification could not run.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("request to {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("tariff of lot {lot} is not readable: {reason}")]
    Tariff { lot: String, reason: String },
}

/// Talks to the platform's API with the platform admin key.
#[derive(Debug, Clone)]
pub struct Verifier {
    api: String,
    admin_key: SecretString,
    http: reqwest::Client,
}

/// What verification found. `lost`, `duplicated` and every other count of a fault must be 0.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    /// Cars let in (a session expected for each).
    pub sent: u64,
    /// Of those, with exactly one session recorded.
    pub recorded: u64,
    /// Cars let in with no session.
    pub lost: u64,
    /// Cars with more than one session, and repeated answers carrying another command id.
    pub duplicated: u64,
    /// Sessions the run caused but should not have: a held car's, one opened by an exit read,
    /// a rogue's.
    pub unexpected: u64,
    /// Sessions in the window that no read of this run caused (another run's, another device's):
    /// reported, not a fault.
    pub foreign: u64,
    /// Cars let out (the exit read that opened the barrier, paid or not).
    pub exits_sent: u64,
    /// Of those, whose session closed at that read, at its time.
    pub exits_recorded: u64,
    /// Let out with their session neither closed at that read nor sent to review.
    pub exits_lost: u64,
    /// Let out after a misread the platform could not match: the case went to review.
    pub exits_to_review: u64,
    /// Held at the exit and never paid: their sessions stay open.
    pub exits_unpaid: u64,
    /// Held by a lane deciding alone, whose late read the platform had answered by letting the
    /// car in (its stay ended in review: the car never came in) or out (its stay stays ended,
    /// a conflict case in review): the platform's record disagrees with the lane's barrier, and
    /// says so to an operator. Reported, not a fault.
    pub held_alone_in_review: u64,
    /// Reads the platform never answered.
    pub unanswered: u64,
    pub fees_checked: u64,
    pub fees_mismatched: u64,
    pub rogue_sent: u64,
    /// Rejections of reads from devices not registered for the topic, during the run.
    pub rogue_refused: u64,
    /// Details of the first faults found (session ids, never plates).
    pub faults: Vec<String>,
}

impl Report {
    /// Whether nothing was lost, duplicated or wrong.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.unexpected == 0
            && self.exits_lost == 0
            && self.unanswered == 0
            && self.fees_mismatched == 0
            && self.rogue_refused >= self.rogue_sent
    }

    /// `key=value` lines, the headline first.
    pub fn render(&self) -> String {
        let mut out = format!(
            "sent={} recorded={} lost={} duplicated={}\n",
            self.sent, self.recorded, self.lost, self.duplicated
        );
        let _ = writeln!(
            out,
            "unexpected={} foreign={} exits_sent={} exits_recorded={} exits_lost={} exits_to_review={} exits_unpaid={} unanswered={} held_alone_in_review={}",
            self.unexpected,
            self.foreign,
            self.exits_sent,
            self.exits_recorded,
            self.exits_lost,
            self.exits_to_review,
            self.exits_unpaid,
            self.unanswered,
            self.held_alone_in_review,
        );
        let _ = writeln!(
            out,
            "fees_checked={} fees_mismatched={} rogue_sent={} rogue_refused={}",
            self.fees_checked, self.fees_mismatched, self.rogue_sent, self.rogue_refused
        );
        for fault in &self.faults {
            let _ = writeln!(out, "fault: {fault}");
        }
        let _ = writeln!(
            out,
            "verify={}",
            if self.passed() { "pass" } else { "fail" }
        );
        out
    }

    fn fault(&mut self, fault: String) {
        if self.faults.len() < 20 {
            self.faults.push(fault);
        }
    }
}

impl Verifier {
    /// `api` is the platform's base URL (`http://host:port`).
    pub fn new(api: &str, admin_key: SecretString, http: reqwest::Client) -> Self {
        Self {
            api: api.trim_end_matches('/').to_owned(),
            admin_key,
            http,
        }
    }

    async fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<reqwest::Response, VerifyError> {
        let url = format!("{}{path}", self.api);
        let response = self
            .http
            .get(&url)
            .bearer_auth(self.admin_key.expose_secret())
            .query(query)
            .send()
            .await
            .map_err(|source| VerifyError::Http {
                url: url.clone(),
                source,
            })?;
        if !response.status().is_success() {
            return Err(VerifyError::Status {
                url,
                status: response.status().as_u16(),
            });
        }
        Ok(response)
    }

    /// Every session of `lot` entered in `[from, to)`, however many: a full page is split in two.
    pub async fn sessions(
        &self,
        lot: &LotId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<RecordedSession>, VerifyError> {
        let mut found = Vec::new();
        let mut ranges = vec![(from, to)];
        while let Some((from, to)) = ranges.pop() {
            let query = [
                ("lot", lot.to_string()),
                ("entered_from", from.to_rfc3339()),
                ("entered_to", to.to_rfc3339()),
                ("limit", PAGE.to_string()),
            ];
            let url = format!("{}/v1/sessions", self.api);
            let page: Vec<RecordedSession> = self
                .get("/v1/sessions", &query)
                .await?
                .json()
                .await
                .map_err(|source| VerifyError::Http { url, source })?;
            let middle = from + (to - from) / 2;
            if page.len() >= PAGE && middle > from {
                ranges.push((from, middle));
                ranges.push((middle, to));
            } else {
                found.extend(page);
            }
        }
        Ok(found)
    }

    async fn tariff(&self, lot: &str) -> Result<fee::Tariff, VerifyError> {
        let path = format!("/v1/lots/{lot}/tariff");
        let body =
            self.get(&path, &[])
                .await?
                .text()
                .await
                .map_err(|source| VerifyError::Http {
                    url: path.clone(),
                    source,
                })?;
        serde_json::from_str(&body).map_err(|e| VerifyError::Tariff {
            lot: lot.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Compares `journeys` (driven from `from` on, simulated time) with what the platform recorded;
    /// The rogue's reads count as refused when none of them caused a session nor got its target
    /// gate a command (judged from this run's own devices and the platform's records, never from
    /// the platform's counters, which a restart resets). Checks the fees of up to `fee_sample` closed sessions.
    pub async fn verify(
        &self,
        journeys: &[JourneyRecord],
        stats: &Stats,
        from: DateTime<Utc>,
        fee_sample: usize,
    ) -> Result<Report, VerifyError> {
        let lots: BTreeSet<&LotId> = journeys.iter().map(|j| &j.lot).collect();
        let to = Utc::now() + chrono::Duration::minutes(11);
        let mut recorded = Vec::new();
        for lot in lots {
            recorded.extend(self.sessions(lot, from, to).await?);
        }
        // On-street stays are the bay sensors' and are not part of the gated journal.
        recorded.retain(|s| s.bay_id.is_none());
        let mut report = compare(journeys, &recorded);
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        report.unanswered = get(&stats.reads_unanswered);
        report.duplicated += get(&stats.answers_conflicting);
        report.rogue_sent = get(&stats.rogue_reads);
        let rogue_sessions = recorded
            .iter()
            .filter(|s| s.plate.starts_with(ROGUE_PLATE_PREFIX))
            .count() as u64;
        // A rogue read is refused when it caused no session and no gate was answered for it.
        report.rogue_refused = report
            .rogue_sent
            .saturating_sub(rogue_sessions.max(get(&stats.rogue_answered)));
        self.check_fees(&recorded, fee_sample, &mut report).await?;
        Ok(report)
    }

    async fn check_fees(
        &self,
        recorded: &[RecordedSession],
        sample: usize,
        report: &mut Report,
    ) -> Result<(), VerifyError> {
        let closed: Vec<&RecordedSession> = recorded
            .iter()
            .filter(|s| {
                s.status == SessionStatus::Closed && s.fee.is_some() && s.exited_at.is_some()
            })
            .collect();
        let step = (closed.len() / sample.max(1)).max(1);
        let mut tariffs: HashMap<&str, fee::Tariff> = HashMap::new();
        for session in closed.into_iter().step_by(step).take(sample) {
            if !tariffs.contains_key(session.lot_id.as_str()) {
                let tariff = self.tariff(&session.lot_id).await?;
                tariffs.insert(&session.lot_id, tariff);
            }
            let (Some(tariff), Some(exited_at), Some(stored)) = (
                tariffs.get(session.lot_id.as_str()),
                session.exited_at,
                session
                    .fee
                    .as_deref()
                    .and_then(|f| f.parse::<Decimal>().ok()),
            ) else {
                continue;
            };
            report.fees_checked += 1;
            let expected = tariff.fee(
                session.entered_at,
                exited_at,
                session.plate_color.as_deref(),
                session.pass_holder,
            );
            if expected != Some(stored) {
                report.fees_mismatched += 1;
                report.fault(format!(
                    "session {} fee {stored}, independently {}",
                    session.id,
                    expected.map_or("unpriceable".into(), |e| e.to_string())
                ));
            }
        }
        Ok(())
    }
}

/// The journal against the sessions recorded for its lots (the pure part of verification).
pub fn compare(journeys: &[JourneyRecord], recorded: &[RecordedSession]) -> Report {
    let mut report = Report::default();
    let mut by_entry: HashMap<&str, Vec<&RecordedSession>> = HashMap::new();
    for session in recorded {
        if let Some(id) = &session.entry_event_id {
            by_entry.entry(id.as_str()).or_default().push(session);
        }
    }
    let mut claimed = 0usize;
    let exit_reads: std::collections::HashSet<&str> = journeys
        .iter()
        .filter_map(|j| j.exit.as_ref())
        .flat_map(|exit| exit.event_ids.iter().map(|id| id.as_str()))
        .collect();
    for journey in journeys {
        let sessions: Vec<&RecordedSession> = journey
            .entry
            .event_ids
            .iter()
            .flat_map(|id| by_entry.get(id.as_str()).into_iter().flatten().copied())
            .collect();
        claimed += sessions.len();
        let let_in = journey.entry.action == GateAction::Open;
        if !let_in {
            if journey.entry.alone
                && !sessions.is_empty()
                && sessions.iter().all(|s| s.status == SessionStatus::Review)
            {
                // The platform let in a car its lane held alone: that stay ended in review.
                report.held_alone_in_review += 1;
            } else if !sessions.is_empty() {
                report.unexpected += sessions.len() as u64;
                report.fault(format!("a held entry has session {}", sessions[0].id));
            }
            continue;
        }
        report.sent += 1;
        let session = match sessions.as_slice() {
            [] => {
                report.lost += 1;
                report.fault(format!(
                    "no session for entry read {}",
                    journey.entry.event_ids[0]
                ));
                continue;
            }
            [one] => {
                report.recorded += 1;
                *one
            }
            [first, ..] => {
                report.duplicated += sessions.len() as u64 - 1;
                report.fault(format!(
                    "{} sessions for entry read {}, first {}",
                    sessions.len(),
                    journey.entry.event_ids[0],
                    first.id
                ));
                continue;
            }
        };
        if session.plate != journey.plate.as_str() {
            report.lost += 1;
            report.recorded -= 1;
            report.fault(format!("session {} carries another plate", session.id));
        }
        let Some(exit) = &journey.exit else {
            continue;
        };
        let let_out = exit.action == GateAction::Open || journey.paid_at_exit;
        if !let_out {
            report.exits_unpaid += 1;
            if exit.alone && session.status != SessionStatus::Open {
                // The platform let out a car its lane held alone: a conflict case in review.
                report.held_alone_in_review += 1;
            } else if session.status != SessionStatus::Open {
                report.exits_lost += 1;
                report.fault(format!(
                    "session {} of a car held at the exit is {:?}",
                    session.id, session.status
                ));
            }
            continue;
        }
        report.exits_sent += 1;
        let closed_here = session.exit_event_id.as_deref() == Some(exit.event_ids[0].as_str())
            && session.exited_at.map(|t| t.timestamp_millis())
                == Some(exit.observed_at.timestamp_millis())
            && matches!(
                session.status,
                SessionStatus::Closed | SessionStatus::Review
            );
        if closed_here {
            report.exits_recorded += 1;
        } else if exit.reason == GateReason::ReviewLater && session.status == SessionStatus::Open {
            // A misread the fuzzy match could not place: the car left, the case is in review.
            report.exits_to_review += 1;
        } else {
            report.exits_lost += 1;
            report.fault(format!(
                "session {} ({:?}) did not close at exit read {}",
                session.id, session.status, exit.event_ids[0]
            ));
        }
    }
    let unclaimed = recorded.len().saturating_sub(claimed);
    let caused_wrongly: Vec<&RecordedSession> = recorded
        .iter()
        .filter(|s| {
            s.plate.starts_with(ROGUE_PLATE_PREFIX)
                || s.entry_event_id
                    .as_deref()
                    .is_some_and(|id| exit_reads.contains(id))
        })
        .collect();
    report.unexpected += caused_wrongly.len() as u64;
    report.foreign = (unclaimed - caused_wrongly.len()) as u64;
    if let Some(first) = caused_wrongly.first() {
        report.fault(format!(
            "{} sessions opened by a rogue's or an exit read, first {}",
            caused_wrongly.len(),
            first.id
        ));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Answered;
    use parkflow_protocol::{EventId, Plate, PlateColor};

    fn id(n: u32) -> EventId {
        EventId::parse(&format!("ev-{n}")).unwrap()
    }

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-02T02:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + chrono::Duration::minutes(minutes)
    }

    fn journey(n: u32, exit: Option<(GateAction, GateReason)>) -> JourneyRecord {
        JourneyRecord {
            lot: LotId::parse("lot-1").unwrap(),
            plate: Plate::parse("浙A12345").unwrap(),
            plate_color: PlateColor::Blue,
            entry: Answered {
                event_ids: vec![id(n)],
                observed_at: at(0),
                action: GateAction::Open,
                reason: GateReason::Entered,
                alone: false,
            },
            exit: exit.map(|(action, reason)| Answered {
                event_ids: vec![id(n + 1000)],
                observed_at: at(70),
                action,
                reason,
                alone: false,
            }),
            misread: false,
            paid_at_exit: false,
        }
    }

    fn session(n: u32, closed: bool) -> RecordedSession {
        RecordedSession {
            id: uuid::Uuid::new_v4(),
            lot_id: "lot-1".into(),
            plate: "浙A12345".into(),
            plate_color: Some("blue".into()),
            status: if closed {
                SessionStatus::Closed
            } else {
                SessionStatus::Open
            },
            pass_holder: false,
            entry_event_id: Some(format!("ev-{n}")),
            entered_at: at(0),
            exit_event_id: closed.then(|| format!("ev-{}", n + 1000)),
            exited_at: closed.then(|| at(70)),
            bay_id: None,
            fee: closed.then(|| "11.00".into()),
        }
    }

    const LEFT: Option<(GateAction, GateReason)> = Some((GateAction::Open, GateReason::BillLater));

    #[test]
    fn every_car_with_its_one_session_passes() {
        let report = compare(
            &[journey(1, LEFT), journey(2, None)],
            &[session(1, true), session(2, false)],
        );
        assert_eq!(
            (report.sent, report.recorded, report.exits_recorded),
            (2, 2, 1)
        );
        assert!(report.passed(), "{}", report.render());
    }

    #[test]
    fn a_missing_session_is_lost_and_a_second_one_duplicated() {
        let report = compare(
            &[journey(1, LEFT), journey(2, LEFT)],
            &[session(2, true), session(2, true)],
        );
        assert_eq!((report.lost, report.duplicated), (1, 1));
        assert!(!report.passed());
    }

    #[test]
    fn an_exit_not_recorded_fails_and_another_runs_session_is_foreign() {
        let report = compare(&[journey(1, LEFT)], &[session(1, false), session(9, false)]);
        assert_eq!((report.foreign, report.exits_lost), (1, 1));
        assert!(!report.passed());
    }

    #[test]
    fn a_session_opened_by_an_exit_read_or_a_rogue_fails() {
        let mut by_exit = session(1001, false);
        by_exit.entered_at = at(70);
        let mut rogue = session(50, false);
        rogue.plate = format!("{ROGUE_PLATE_PREFIX}00001");
        let report = compare(&[journey(1, LEFT)], &[session(1, true), by_exit, rogue]);
        assert_eq!((report.unexpected, report.foreign), (2, 0));
        assert!(!report.passed());
    }

    #[test]
    fn a_misread_exit_sent_to_review_is_not_a_loss() {
        let report = compare(
            &[journey(
                1,
                Some((GateAction::Open, GateReason::ReviewLater)),
            )],
            &[session(1, false)],
        );
        assert_eq!((report.exits_to_review, report.exits_lost), (1, 0));
        assert!(report.passed());
    }
}
