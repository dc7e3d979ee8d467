//! The store writer: one task that owns every write of the hot path and group-commits them.
//!
//! Callers submit a [`Batch`] of writes belonging to one event together with the event's ack
//! [`Ticket`]. The writer drains whatever is queued (up to [`MAX_BATCH`] batches), applies it in
//! one transaction, commits, and only then drops the tickets, which acknowledges the messages.
//! A failed commit is retried: transient failures (connection lost, database restarting) after a
//! back-off with the whole group; otherwise batch by batch, so one bad write cannot hold back the
//! others. A batch the database still refuses is kept in `dead_letters` (logged and counted) and
//! its message acknowledged: a re-delivery would fail the same way.

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

/// Applies `writes` in one transaction.
pub async fn apply<'a>(db: &Db, writes: impl Iterator<Item = &'a Write>) -> Result<(), StoreError> {
    crate::store::on_db!(db, pool => {
        let mut tx = pool.begin_write().await?;
        for write in writes {
            match write {
                Write::OpenSession(s) => {
                    sqlx::query(
                        "INSERT INTO sessions (id, lot_id, plate, plate_color, status, pass_holder, entry_gate,
                             entry_event_id, entered_at, updated_at)
                         VALUES ($1, $2, $3, $4, 'open', $5, $6, $7, $8, $9)
                         ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(s.id)
                    .bind(s.lot.as_str())
                    .bind(s.plate.as_str())
                    .bind(s.plate_color.map(PlateColor::as_str))
                    .bind(s.pass_holder)
                    .bind(s.entry_gate.as_ref().map(GateId::as_str))
                    .bind(s.entry_event.as_ref().map(EventId::as_str))
                    .bind(db_time(s.entered_at))
                    .bind(db_time(s.entered_at))
                    .execute(&mut *tx)
                    .await?;
                }
                Write::EndSession(end) => {
                    let ended = sqlx::query(
                        "UPDATE sessions SET status = $2, exit_gate = $3, exit_event_id = $4, exited_at = $5,
                             exit_match = $6, exit_match_score = $7, tariff_from = $8, fee_minor = $9, currency = $10,
                             billed_plate = $11, plate_color = COALESCE(plate_color, $12), pass_holder = $13, updated_at = $5
                         WHERE id = $1 AND status = 'open'",
                    )
                    .bind(end.id)
                    .bind(end.status.as_str())
                    .bind(end.exit_gate.as_ref().map(GateId::as_str))
                    .bind(end.exit_event.as_ref().map(EventId::as_str))
                    .bind(db_time(end.exited_at))
                    .bind(end.exit_match.map(|(m, _)| m.as_str()))
                    .bind(end.exit_match.map(|(_, score)| score))
                    .bind(end.tariff_from.map(db_time))
                    .bind(end.fee.as_ref().map(|(minor, _)| *minor))
                    .bind(end.fee.as_ref().map(|(_, currency)| currency.as_str()))
                    .bind(end.billed_plate.as_ref().map(Plate::as_str))
                    .bind(end.plate_color.map(PlateColor::as_str))
                    .bind(end.pass_holder)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    // A priced session now waits for its charge (billing's queue), in the same commit.
                    if ended == 1 && end.status == SessionStatus::Closed {
                        sqlx::query("INSERT INTO charge_queue (session_id, queued_at) VALUES ($1, $2) ON CONFLICT (session_id) DO NOTHING")
                            .bind(end.id)
                            .bind(db_time(end.exited_at))
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                Write::Review(item) => {
                    sqlx::query(
                        "INSERT INTO review_items (id, lot_id, kind, session_id, gate_id, event_id, plate, score, created_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                         ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(item.id)
                    .bind(item.lot.as_str())
                    .bind(item.kind.as_str())
                    .bind(item.session_id)
                    .bind(item.gate.as_ref().map(GateId::as_str))
                    .bind(item.event_id.as_ref().map(EventId::as_str))
                    .bind(item.plate.as_ref().map(Plate::as_str))
                    .bind(item.score)
                    .bind(db_time(item.created_at))
                    .execute(&mut *tx)
                    .await?;
                }
                Write::GateRead(read) => {
                    sqlx::query(
                        "INSERT INTO gate_reads (lot_id, gate_id, event_id, plate, plate_color, confidence, direction,
                             observed_at, received_at, command_id, action, reason, issued_at, amount_due_minor,
                             currency, pay_url, session_id)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
                         ON CONFLICT (lot_id, gate_id, event_id) DO NOTHING",
                    )
                    .bind(read.lot.as_str())
                    .bind(read.gate.as_str())
                    .bind(read.event_id.as_str())
                    .bind(read.plate.as_str())
                    .bind(read.plate_color.map(PlateColor::as_str))
                    .bind(read.confidence)
                    .bind(read.direction.as_str())
                    .bind(db_time(read.observed_at))
                    .bind(db_time(read.received_at))
                    .bind(read.command.command_id)
                    .bind(read.command.action.as_str())
                    .bind(read.command.reason.as_str())
                    .bind(db_time(read.command.issued_at))
                    .bind(read.amount_due_minor)
                    .bind(read.command.currency.as_deref())
                    .bind(read.command.pay_url.as_deref())
                    .bind(read.session_id)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
    });
    Ok(())
}
