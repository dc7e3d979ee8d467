//! The store writer: one task that owns every write of the hot path and group-commits them.
//!
//! Callers submit a [`Batch`] of writes belonging to one event together with the event's ack
//! [`Ticket`]. The writer drains whatever is queued (up to [`MAX_BATCH`] batches), applies it in
//! one transaction, commits, and only then drops the tickets, which acknowledges the messages.
//! A failed commit is retried: transient failures (connection lost, database restarting) after a
//! back-off with the whole group; otherwise batch by batch, so one bad write cannot hold back the
//! others. A batch the database still refuses is kept in `dead_letters` (logged and counted) and
//! its message acknowledged: a re-delivery would fail the same way.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parkflow_protocol::{Direction, EventId, GateCommand, GateId, LotId, Plate, PlateColor};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{BeginWrite, Db, StoreError, db_time};
use crate::metrics::Metrics;
use crate::mqtt::ack::Ticket;
use crate::session::{OpenSession, ReviewItem, SessionEnd, SessionStatus};

/// Batches waiting for the writer.
pub const WRITER_CHANNEL_CAPACITY: usize = 20_000;
/// The most batches in one transaction.
pub const MAX_BATCH: usize = 2_000;

/// A gate read and the decision that answered it.
#[derive(Debug, Clone)]
pub struct GateReadRecord {
    pub lot: LotId,
    pub gate: GateId,
    pub event_id: EventId,
    pub plate: Plate,
    pub plate_color: Option<PlateColor>,
    pub confidence: f64,
    pub direction: Direction,
    pub observed_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub command: GateCommand,
    pub amount_due_minor: Option<i64>,
    pub session_id: Option<Uuid>,
}

/// One write.
#[derive(Debug, Clone)]
pub enum Write {
    OpenSession(OpenSession),
    EndSession(SessionEnd),
    Review(ReviewItem),
    GateRead(Box<GateReadRecord>),
}

/// The writes of one event, applied together, and the ticket to drop once they are durable.
#[derive(Debug)]
pub struct Batch {
    pub writes: Vec<Write>,
    pub ticket: Option<Ticket>,
}

/// Submits batches to the writer.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Batch>,
}

impl WriterHandle {
    /// Queues a batch; waits while the writer is [`WRITER_CHANNEL_CAPACITY`] batches behind.
    pub async fn submit(&self, batch: Batch) {
        if let Err(mpsc::error::SendError(batch)) = self.tx.send(batch).await {
            tracing::error!(
                "store writer is gone; batch dropped (its message will be re-delivered)"
            );
            if let Some(ticket) = batch.ticket {
                ticket.abandon();
            }
        }
    }
}

/// The writer task.
pub struct Writer {
    db: Db,
    rx: mpsc::Receiver<Batch>,
    metrics: Arc<Metrics>,
}

/// Creates the writer and its handle.
pub fn writer(db: Db, metrics: Arc<Metrics>) -> (WriterHandle, Writer) {
    let (tx, rx) = mpsc::channel(WRITER_CHANNEL_CAPACITY);
    (WriterHandle { tx }, Writer { db, rx, metrics })
}

impl Writer {
    /// Runs until every handle is dropped and the queue is drained.
    pub async fn run(mut self) {
        let mut group = Vec::with_capacity(MAX_BATCH);
        while self.rx.recv_many(&mut group, MAX_BATCH).await > 0 {
            self.commit(&mut group).await;
            group.clear();
        }
        tracing::debug!("store writer drained and stopped");
    }

    async fn commit(&self, group: &mut Vec<Batch>) {
        let all = || group.iter().flat_map(|b| &b.writes);
        if let Err(error) = retry_transient(|| apply(&self.db, all())).await {
            tracing::warn!(error = %error, batches = group.len(), "group commit failed; committing batch by batch");
            for batch in group.iter() {
                if let Err(error) = retry_transient(|| apply(&self.db, batch.writes.iter())).await {
                    self.dead_letter(batch, &error).await;
                }
            }
        }
        self.metrics.store_batches.inc();
        self.metrics.store_batch_size.observe(group.len() as f64);
        // Dropping the tickets acknowledges the messages, now that their writes are durable.
        group.clear();
    }

    /// Keeps a batch the database refuses for an operator, so it neither blocks the others nor vanishes.
    async fn dead_letter(&self, batch: &Batch, error: &StoreError) {
        self.metrics.store_write_errors.inc();
        tracing::error!(error = %error, constraint = ?error.constraint(), "write rejected by the database; kept as a dead letter");
        let writes = format!("{:?}", batch.writes);
        let cause = format!(
            "{error}: {}",
            std::error::Error::source(error)
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        let kept = retry_transient(|| async {
            crate::store::on_db!(&self.db, pool => sqlx::query(
                "INSERT INTO dead_letters (id, writes, error, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(Uuid::now_v7())
            .bind(&writes)
            .bind(&cause)
            .bind(db_time(chrono::Utc::now()))
            .execute(pool)
            .await
            .map(drop)
            .map_err(StoreError::from))
        })
        .await;
        if let Err(error) = kept {
            tracing::error!(error = %error, "failed to keep a dead letter");
        }
    }
}

/// Runs `attempt` until it succeeds or fails for a reason other than a transient one (a lost
/// connection, a busy database), backing off between tries.
pub(crate) async fn retry_transient<F, Fut>(mut attempt: F) -> Result<(), StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let mut backoff = Duration::from_millis(50);
    loop {
        match attempt().await {
            Err(error) if error.is_transient() => {
                tracing::warn!(error = %error, retry_in = ?backoff, "database busy or unreachable; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            result => return result,
        }
    }
}

/// Rows per multi-row statement: a gate read binds 17 values, and SQLite allows 32,766 a
/// statement. Only full-size statements are kept prepared: each row count is a statement of its
/// own, and the others would push the API's and billing's out of the connection's cache.
const ROWS_PER_INSERT: usize = 1_000;

/// The writes of a group, cut into segments that can each be applied kind by kind: sessions
/// closed first, then sessions opened, review cases, gate reads and queued charges, each kind
/// as multi-row statements. A segment ends before the close of a session it opens, so every
/// close finds its session stored and every read or case its session; a close coming before
/// another open of the same plate (the order the gate produces) stays before it. The result is
/// that of applying the writes in order, except that a close may move ahead of an earlier open of
/// its plate — an order the gate never produces, which in order would break the one-open-session
/// rule and here succeeds.
#[derive(Debug, Default)]
struct Segment<'a> {
    ends: Vec<&'a SessionEnd>,
    opens: Vec<&'a OpenSession>,
    reviews: Vec<&'a ReviewItem>,
    reads: Vec<&'a GateReadRecord>,
}

fn segments<'a>(writes: impl Iterator<Item = &'a Write>) -> Vec<Segment<'a>> {
    let mut segments = vec![Segment::default()];
    let (mut opened, mut closed) = (HashSet::new(), HashSet::new());
    for write in writes {
        if let Write::EndSession(end) = write
            && opened.contains(&end.id)
        {
            segments.push(Segment::default());
            opened.clear();
            closed.clear();
        }
        let Some(segment) = segments.last_mut() else {
            unreachable!("there is always a segment")
        };
        match write {
            Write::OpenSession(session) => {
                opened.insert(session.id);
                segment.opens.push(session);
            }
            // A session closes once: a second close, in order, would find it closed already.
            Write::EndSession(end) => {
                if closed.insert(end.id) {
                    segment.ends.push(end);
                }
            }
            Write::Review(item) => segment.reviews.push(item),
            Write::GateRead(read) => segment.reads.push(read),
        }
    }
    segments
}

/// Applies `writes` in one transaction, segment by segment (see [`Segment`]).
pub async fn apply<'a>(db: &Db, writes: impl Iterator<Item = &'a Write>) -> Result<(), StoreError> {
    let segments = segments(writes);
    crate::store::on_db!(db, pool => {
        let mut tx = pool.begin_write().await?;
        for segment in &segments {
            // A priced session waits for its charge (billing's queue), in the same commit.
            let mut queued: Vec<(Uuid, String, DateTime<Utc>)> = Vec::new();
            for chunk in segment.ends.chunks(ROWS_PER_INSERT) {
                let mut update = sqlx::QueryBuilder::new(
                    "WITH ended (end_id, end_status, end_gate, end_event_id, end_at, end_match, end_match_score,
                         end_tariff_from, end_fee_minor, end_currency, end_billed_plate, end_plate_color,
                         end_pass_holder) AS (",
                );
                update.push_values(chunk, |mut row, end| {
                    row.push_bind(end.id)
                        .push_bind(end.status.as_str())
                        .push_bind(end.exit_gate.as_ref().map(GateId::as_str))
                        .push_bind(end.exit_event.as_ref().map(EventId::as_str))
                        .push_bind(db_time(end.exited_at))
                        .push_bind(end.exit_match.map(|(m, _)| m.as_str()))
                        .push_bind(end.exit_match.map(|(_, score)| score))
                        .push_bind(end.tariff_from.map(db_time))
                        .push_bind(end.fee.as_ref().map(|(minor, _)| *minor))
                        .push_bind(end.fee.as_ref().map(|(_, currency)| currency.as_str()))
                        .push_bind(end.billed_plate.as_ref().map(Plate::as_str))
                        .push_bind(end.plate_color.map(PlateColor::as_str))
                        .push_bind(end.pass_holder);
                });
                update.push(
                    ") UPDATE sessions SET status = end_status, exit_gate = end_gate, exit_event_id = end_event_id,
                         exited_at = end_at, exit_match = end_match, exit_match_score = end_match_score,
                         tariff_from = end_tariff_from, fee_minor = end_fee_minor, currency = end_currency,
                         billed_plate = end_billed_plate, plate_color = COALESCE(plate_color, end_plate_color),
                         pass_holder = end_pass_holder, updated_at = end_at
                     FROM ended WHERE id = end_id AND status = 'open'
                     RETURNING id, status, exited_at",
                );
                queued.extend(update.build_query_as().persistent(chunk.len() == ROWS_PER_INSERT).fetch_all(&mut *tx).await?);
            }
            queued.retain(|(_, status, _)| status == SessionStatus::Closed.as_str());
            for chunk in segment.opens.chunks(ROWS_PER_INSERT) {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO sessions (id, lot_id, plate, plate_color, status, pass_holder, entry_gate,
                         entry_event_id, entered_at, updated_at) ",
                );
                insert.push_values(chunk, |mut row, s| {
                    row.push_bind(s.id)
                        .push_bind(s.lot.as_str())
                        .push_bind(s.plate.as_str())
                        .push_bind(s.plate_color.map(PlateColor::as_str))
                        .push_bind("open")
                        .push_bind(s.pass_holder)
                        .push_bind(s.entry_gate.as_ref().map(GateId::as_str))
                        .push_bind(s.entry_event.as_ref().map(EventId::as_str))
                        .push_bind(db_time(s.entered_at))
                        .push_bind(db_time(s.entered_at));
                });
                insert.push(" ON CONFLICT (id) DO NOTHING");
                insert.build().persistent(chunk.len() == ROWS_PER_INSERT).execute(&mut *tx).await?;
            }
            for chunk in segment.reviews.chunks(ROWS_PER_INSERT) {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO review_items (id, lot_id, kind, session_id, gate_id, event_id, plate, score, created_at) ",
                );
                insert.push_values(chunk, |mut row, item| {
                    row.push_bind(item.id)
                        .push_bind(item.lot.as_str())
                        .push_bind(item.kind.as_str())
                        .push_bind(item.session_id)
                        .push_bind(item.gate.as_ref().map(GateId::as_str))
                        .push_bind(item.event_id.as_ref().map(EventId::as_str))
                        .push_bind(item.plate.as_ref().map(Plate::as_str))
                        .push_bind(item.score)
                        .push_bind(db_time(item.created_at));
                });
                insert.push(" ON CONFLICT (id) DO NOTHING");
                insert.build().persistent(chunk.len() == ROWS_PER_INSERT).execute(&mut *tx).await?;
            }
            for chunk in segment.reads.chunks(ROWS_PER_INSERT) {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO gate_reads (lot_id, gate_id, event_id, plate, plate_color, confidence, direction,
                         observed_at, received_at, command_id, action, reason, issued_at, amount_due_minor,
                         currency, pay_url, session_id) ",
                );
                insert.push_values(chunk, |mut row, read| {
                    row.push_bind(read.lot.as_str())
                        .push_bind(read.gate.as_str())
                        .push_bind(read.event_id.as_str())
                        .push_bind(read.plate.as_str())
                        .push_bind(read.plate_color.map(PlateColor::as_str))
                        .push_bind(read.confidence)
                        .push_bind(read.direction.as_str())
                        .push_bind(db_time(read.observed_at))
                        .push_bind(db_time(read.received_at))
                        .push_bind(read.command.command_id)
                        .push_bind(read.command.action.as_str())
                        .push_bind(read.command.reason.as_str())
                        .push_bind(db_time(read.command.issued_at))
                        .push_bind(read.amount_due_minor)
                        .push_bind(read.command.currency.as_deref())
                        .push_bind(read.command.pay_url.as_deref())
                        .push_bind(read.session_id);
                });
                insert.push(" ON CONFLICT (lot_id, gate_id, event_id) DO NOTHING");
                insert.build().persistent(chunk.len() == ROWS_PER_INSERT).execute(&mut *tx).await?;
            }
            for chunk in queued.chunks(ROWS_PER_INSERT) {
                let mut insert = sqlx::QueryBuilder::new("INSERT INTO charge_queue (session_id, queued_at) ");
                insert.push_values(chunk, |mut row, (id, _, exited_at)| {
                    row.push_bind(id).push_bind(exited_at);
                });
                insert.push(" ON CONFLICT (session_id) DO NOTHING");
                insert.build().persistent(chunk.len() == ROWS_PER_INSERT).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(id: u128, plate: &str) -> Write {
        Write::OpenSession(OpenSession {
            id: Uuid::from_u128(id),
            lot: LotId::parse("lot-1").unwrap(),
            plate: Plate::parse(plate).unwrap(),
            plate_color: None,
            pass_holder: false,
            entry_gate: None,
            entry_event: None,
            entered_at: Utc::now(),
        })
    }

    fn end(id: u128) -> Write {
        Write::EndSession(SessionEnd {
            id: Uuid::from_u128(id),
            status: SessionStatus::Closed,
            exit_gate: None,
            exit_event: None,
            exited_at: Utc::now(),
            exit_match: None,
            tariff_from: None,
            billed_plate: None,
            plate_color: None,
            pass_holder: false,
            fee: Some((100, "CNY".into())),
        })
    }

    /// Each segment as (opened ids, closed ids).
    fn shape(writes: &[Write]) -> Vec<(Vec<u128>, Vec<u128>)> {
        segments(writes.iter())
            .iter()
            .map(|s| {
                (
                    s.opens.iter().map(|o| o.id.as_u128()).collect(),
                    s.ends.iter().map(|e| e.id.as_u128()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn writes_of_many_sessions_share_one_segment() {
        let writes = [open(1, "浙A11111"), end(7), open(2, "浙A22222"), end(8)];
        assert_eq!(shape(&writes), [(vec![1, 2], vec![7, 8])]);
    }

    #[test]
    fn a_session_closed_in_the_group_that_opened_it_starts_a_segment() {
        // Entered, left and entered again within one group: the close follows its open, and the
        // second open (the same plate) follows the close.
        let writes = [
            open(1, "浙A11111"),
            end(1),
            open(2, "浙A11111"),
            end(9),
            end(2),
        ];
        assert_eq!(
            shape(&writes),
            [(vec![1], vec![]), (vec![2], vec![1, 9]), (vec![], vec![2])]
        );
    }

    #[test]
    fn a_repeated_close_is_applied_once() {
        let writes = [end(3), end(3), open(4, "浙A44444")];
        assert_eq!(shape(&writes), [(vec![4], vec![3])]);
    }
}
