//! The store writer: one task that owns every write of the hot path and group-commits them.
//!
//! Callers submit a [`Batch`] of writes belonging to one event together with the event's ack
//! [`Ticket`]. The writer drains whatever is queued (up to [`MAX_BATCH`] batches), applies it in
//! one transaction, commits, and only then drops the tickets, which acknowledges the messages.
//! A failed commit is retried: a passing failure (connection lost, database restarting, disk or
//! memory full) after a back-off with the whole group, for as long as it lasts — its messages stay
//! unacknowledged meanwhile, and the broker's in-flight window, not this queue, bounds how many
//! wait; otherwise batch by batch, so one bad write cannot hold back the others. A batch the
//! database refuses for good (a constraint) is kept in `dead_letters` (logged and counted) and its
//! message acknowledged: a re-delivery would fail the same way.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parkflow_protocol::{Direction, EventId, GateCommand, GateId, LotId, Plate, PlateColor};
use tokio::sync::mpsc;
use uuid::Uuid;

use parkflow_db::{QueryBuilder, Tx, query};
use parkflow_session::repo;

use super::{Db, StoreError, db_time};
use crate::metrics::Metrics;
use crate::mqtt::ack::Ticket;
use crate::session::{OpenSession, ReviewItem, SessionEnd};

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
    /// The lane answered the read alone (its `offline` report); the command is its decision.
    pub decided_offline: bool,
    /// Of a hold's `amount_due`, what the plate owed from earlier stays.
    pub owed_minor: Option<i64>,
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
    /// Dropped, like the ticket, once the batch's group is durable: whoever holds the receiver
    /// learns that everything queued before it is in the database.
    pub durable: Option<tokio::sync::oneshot::Sender<()>>,
    /// On a gateway node: the lot the writes are for and the token of the lease they were
    /// decided under. The writes are made only while that lease is still the node's.
    pub lease: Option<(LotId, i64)>,
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
    /// On a gateway node, its id: batches are fenced by their leases.
    node: Option<String>,
}

/// Creates the writer and its handle.
pub fn writer(db: Db, metrics: Arc<Metrics>) -> (WriterHandle, Writer) {
    let (tx, rx) = mpsc::channel(WRITER_CHANNEL_CAPACITY);
    (
        WriterHandle { tx },
        Writer {
            db,
            rx,
            metrics,
            node: None,
        },
    )
}

impl Writer {
    /// Makes each group's writes only while node `node` still holds the leases they were
    /// decided under (`store::leases::fence`).
    pub fn fenced(mut self, node: &str) -> Self {
        self.node = Some(node.to_owned());
        self
    }
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
        loop {
            let fence = self.fence(group.iter());
            let all = || group.iter().flat_map(|b| &b.writes);
            match retry_transient_for(&self.metrics, Some(GROUP_RETRY_FOR), || {
                apply_fenced(&self.db, fence.as_ref(), all())
            })
            .await
            {
                Ok(fenced) if fenced.is_empty() => break,
                // Lots this node lost since it decided: their writes are not made (their new
                // owner answers the devices' retries), the others are tried again.
                Ok(fenced) => self.drop_fenced(group, &fenced),
                Err(error) => {
                    tracing::warn!(error = %error, batches = group.len(), "group commit failed; committing batch by batch");
                    for batch in group.iter_mut() {
                        let fence = self.fence(std::iter::once(&*batch));
                        let writes = &batch.writes;
                        match retry_transient(&self.metrics, || {
                            apply_fenced(&self.db, fence.as_ref(), writes.iter())
                        })
                        .await
                        {
                            Ok(fenced) if fenced.is_empty() => {}
                            Ok(_) => self.hand_on(batch),
                            Err(error) => self.dead_letter(batch, &error).await,
                        }
                    }
                    break;
                }
            }
        }
        self.metrics.store_batches.inc();
        self.metrics.store_batch_size.observe(group.len() as f64);
        // Dropping the tickets acknowledges the messages, now that their writes are durable.
        group.clear();
    }

    /// The leases a group's writes were decided under, when this writer fences.
    fn fence<'a>(&self, batches: impl Iterator<Item = &'a Batch>) -> Option<Fence> {
        let node = self.node.clone()?;
        let mut leases: Vec<(String, i64)> = batches
            .filter_map(|b| b.lease.as_ref())
            .map(|(lot, token)| (lot.as_str().to_owned(), *token))
            .collect();
        leases.sort_unstable();
        leases.dedup();
        Some(Fence { node, leases })
    }

    /// Takes out of `group` the batches of fenced lots (see [`Writer::hand_on`]).
    fn drop_fenced(&self, group: &mut Vec<Batch>, fenced: &[(String, i64)]) {
        let mut kept = Vec::with_capacity(group.len());
        for mut batch in group.drain(..) {
            if is_fenced(&batch, fenced) {
                self.hand_on(&mut batch);
            } else {
                kept.push(batch);
            }
        }
        *group = kept;
    }

    /// A fenced batch's writes are not made: its message is published again for the lot's
    /// owner now, which decides it from the database as this node left it (or answers it
    /// again, if the camera's retry reached it first), and records it.
    fn hand_on(&self, batch: &mut Batch) {
        self.metrics.store_writes_fenced.inc();
        tracing::warn!(lot = ?batch.lease, "writes of a lot this node no longer holds not made (fenced); the read goes to its owner");
        if let Some(ticket) = batch.ticket.take() {
            ticket.forward();
        }
    }

    /// Keeps a batch the database refuses for an operator, so it neither blocks the others nor vanishes.
    async fn dead_letter(&self, batch: &Batch, error: &StoreError) {
        self.metrics.store_write_errors.inc();
        tracing::error!(error = %error, constraint = ?error.constraint(), "write rejected by the database; kept as a dead letter");
        let writes = format!("{:?}", batch.writes);
        let cause = format!("{error}: {}", cause(error));
        let kept = retry_transient(&self.metrics, || async {
            query(
                "INSERT INTO dead_letters (id, writes, error, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(Uuid::now_v7())
            .bind(&writes)
            .bind(&cause)
            .bind(db_time(chrono::Utc::now()))
            .execute(&self.db)
            .await
            .map(drop)
        })
        .await;
        if let Err(error) = kept {
            tracing::error!(error = %error, "failed to keep a dead letter");
        }
    }
}

/// A node's leases that a transaction's writes must still hold (`store::leases::fence`).
#[derive(Debug, Clone)]
pub struct Fence {
    pub node: String,
    pub leases: Vec<(String, i64)>,
}

fn is_fenced(batch: &Batch, fenced: &[(String, i64)]) -> bool {
    batch
        .lease
        .as_ref()
        .is_some_and(|(lot, token)| fenced.iter().any(|(l, t)| l == lot.as_str() && t == token))
}

/// Runs `attempt` until it succeeds or fails for a reason other than a transient one (a lost
/// connection, a busy or full database), backing off between tries. While it retries, the
/// `store_writes_failing` gauge counts it (so `/readyz` answers 503).
pub(crate) async fn retry_transient<T, F, Fut>(
    metrics: &Metrics,
    attempt: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    retry_transient_for(metrics, None, attempt).await
}

/// How long a whole group is retried before it is tried batch by batch: a passing failure that
/// only a large group meets (a temporary file for a big statement, the space a big transaction
/// needs) must not hold every gate back while each batch alone would commit.
pub(crate) const GROUP_RETRY_FOR: Duration = Duration::from_secs(30);

/// [`retry_transient`], giving a passing failure up after `limit` (and returning it).
pub(crate) async fn retry_transient_for<T, F, Fut>(
    metrics: &Metrics,
    limit: Option<Duration>,
    mut attempt: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(50);
    let mut failing = None;
    loop {
        match attempt().await {
            Err(error) if error.is_transient() && limit.is_none_or(|l| started.elapsed() < l) => {
                failing.get_or_insert_with(|| Failing::new(metrics));
                tracing::warn!(error = %error, cause = %cause(&error), retry_in = ?backoff, "database write failing for now; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            result => return result,
        }
    }
}

/// Counts a writer in `store_writes_failing` while it lives.
struct Failing<'a>(&'a Metrics);

impl<'a> Failing<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.store_writes_failing.inc();
        Self(metrics)
    }
}

impl Drop for Failing<'_> {
    fn drop(&mut self) {
        self.0.store_writes_failing.dec();
    }
}

/// The database's own words for an error (sqlx's display alone says only "query failed").
fn cause(error: &StoreError) -> String {
    std::error::Error::source(error)
        .map(ToString::to_string)
        .unwrap_or_default()
}

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

/// Applies `writes` in one transaction, segment by segment (see [`Segment`]): the session
/// lifecycle's repository writes the sessions and cases, this module the reads.
pub async fn apply<'a>(db: &Db, writes: impl Iterator<Item = &'a Write>) -> Result<(), StoreError> {
    let fenced = apply_fenced(db, None, writes).await?;
    debug_assert!(fenced.is_empty());
    Ok(())
}

/// [`apply`], made only if the node still holds every lease of `fence` (their rows locked until
/// the commit, so no other node takes a lot over meanwhile). Answers the leases it no longer
/// holds — then nothing was written.
pub async fn apply_fenced<'a>(
    db: &Db,
    fence: Option<&Fence>,
    writes: impl Iterator<Item = &'a Write>,
) -> Result<Vec<(String, i64)>, StoreError> {
    let segments = segments(writes);
    let mut tx = db.begin_write().await?;
    if let Some(fence) = fence {
        // The fence locks the lease rows until the commit, so that no node takes a lot over
        // meanwhile; a node paused here (a stalled VM) would hold them, and every takeover,
        // for as long as it stays paused: the database ends such a transaction after a second.
        query("SET LOCAL idle_in_transaction_session_timeout = 1000")
            .execute(&mut tx)
            .await?;
        let leases: Vec<(&str, i64)> = fence
            .leases
            .iter()
            .map(|(lot, token)| (lot.as_str(), *token))
            .collect();
        let lost = super::leases::fence(&mut tx, &fence.node, &leases).await?;
        if !lost.is_empty() {
            return Ok(lost);
        }
    }
    for segment in &segments {
        repo::end_sessions(&mut tx, &segment.ends).await?;
        repo::open_sessions(&mut tx, &segment.opens).await?;
        repo::open_cases(&mut tx, &segment.reviews).await?;
        insert_reads(&mut tx, &segment.reads).await?;
    }
    tx.commit().await?;
    Ok(Vec::new())
}

/// Records gate reads with the commands that answered them: a read stored already stays, unless
/// its lane reports that it decided the read alone — what the lane did is what happened, so its
/// decision replaces the platform's (once: a read decided offline is never replaced again).
async fn insert_reads(tx: &mut Tx, reads: &[&GateReadRecord]) -> Result<(), StoreError> {
    let (offline, online): (Vec<&GateReadRecord>, Vec<&GateReadRecord>) =
        reads.iter().partition(|r| r.decided_offline);
    insert_read_rows(
        tx,
        &online,
        " ON CONFLICT (lot_id, gate_id, event_id) DO NOTHING",
    )
    .await?;
    // One row per read in a statement (an upsert may not touch a row twice): the last stands.
    let mut last = std::collections::HashMap::new();
    for read in offline {
        last.insert((&read.lot, &read.gate, &read.event_id), read);
    }
    let offline: Vec<&GateReadRecord> = last.into_values().collect();
    insert_read_rows(
        tx,
        &offline,
        " ON CONFLICT (lot_id, gate_id, event_id) DO UPDATE SET command_id = excluded.command_id, \
         action = excluded.action, reason = excluded.reason, issued_at = excluded.issued_at, \
         amount_due_minor = excluded.amount_due_minor, currency = excluded.currency, \
         pay_url = excluded.pay_url, owed_minor = excluded.owed_minor, \
         session_id = COALESCE(excluded.session_id, gate_reads.session_id), \
         decided_offline = excluded.decided_offline \
         WHERE NOT gate_reads.decided_offline",
    )
    .await
}

async fn insert_read_rows(
    tx: &mut Tx,
    reads: &[&GateReadRecord],
    on_conflict: &str,
) -> Result<(), StoreError> {
    for chunk in reads.chunks(repo::ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::new(
            "INSERT INTO gate_reads (lot_id, gate_id, event_id, plate, plate_color, confidence, \
             direction, observed_at, received_at, command_id, action, reason, issued_at, \
             amount_due_minor, currency, pay_url, session_id, decided_offline, owed_minor) ",
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
                .push_bind(read.session_id)
                .push_bind(read.decided_offline)
                .push_bind(read.owed_minor);
        });
        insert.push(on_conflict);
        insert
            .build()
            .persistent(chunk.len() == repo::ROWS_PER_STATEMENT)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionStatus;

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

    /// A disk that fills up mid-traffic: the writer keeps every write, retries, and reports
    /// nothing durable (so acknowledges no message) until space is freed; then all of it is
    /// stored once and nothing is a dead letter. (A SQLite database at its page limit refuses
    /// writes with `SQLITE_FULL` exactly as a full filesystem does.)
    #[tokio::test]
    async fn a_full_disk_holds_writes_back_until_space_is_freed_and_loses_none() {
        use crate::store::provision::{lots_only, provision};
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
        use std::str::FromStr;

        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("full.db").display());
        let db = Db::connect(&url).await.unwrap();
        let plan = lots_only(&["lot-1"]);
        provision(&db, &plan, Utc::now()).await.unwrap();
        let (pages,): (i64,) = query("PRAGMA page_count").fetch_one(&db).await.unwrap();
        db.close().await;

        // One connection whose database may grow by two pages: full after a few sessions.
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .pragma("max_page_count", (pages + 2).to_string());
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        let db = Db::from(parkflow_db::Pool::Sqlite(pool.clone()));
        let metrics = Arc::new(Metrics::new());
        let (handle, writer) = writer(db.clone(), metrics.clone());
        let running = tokio::spawn(writer.run());

        const SESSIONS: u128 = 300;
        let mut durable = Vec::new();
        for n in 0..SESSIONS {
            let (tx, rx) = tokio::sync::oneshot::channel();
            handle
                .submit(Batch {
                    writes: vec![open(n + 1, &format!("浙A{:05}", n))],
                    ticket: None,
                    durable: Some(tx),
                    lease: None,
                })
                .await;
            durable.push(rx);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while metrics.store_writes_failing.get() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the disk never filled"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let last = durable.last_mut().unwrap();
        assert!(
            matches!(
                last.try_recv(),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty)
            ),
            "a write reported durable while the disk was full"
        );

        // Space is freed: the same connection may grow again.
        let mut connection = pool.acquire().await.unwrap();
        sqlx::query("PRAGMA max_page_count = 1000000")
            .execute(&mut *connection)
            .await
            .unwrap();
        drop(connection);
        for rx in durable {
            tokio::time::timeout(Duration::from_secs(20), rx)
                .await
                .expect("durable once space was freed")
                .unwrap_err();
        }
        drop(handle);
        running.await.unwrap();
        let (sessions,): (i64,) = query("SELECT COUNT(*) FROM sessions")
            .fetch_one(&db)
            .await
            .unwrap();
        let (dead,): (i64,) = query("SELECT COUNT(*) FROM dead_letters")
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!((sessions, dead), (SESSIONS as i64, 0));
        assert_eq!(metrics.store_writes_failing.get(), 0);
        let (check,): (String,) = query("PRAGMA integrity_check")
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(check, "ok");
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
