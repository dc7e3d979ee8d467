//! Lot leases: several gateway nodes share one city's lots, each lot owned by exactly one node
//! at a time (issue 15). The one writer of `gateway_nodes`, `lot_leases` and
//! `lot_lease_history`. PostgreSQL only: the times are the database's clock
//! (`clock_timestamp()`), so nodes' clocks never decide who owns what.
//!
//! A node runs [`Leases::round`] every second or so: it says it is alive, renews the leases it
//! holds (one that expired meanwhile is lost: another node may hold it now), counts the live
//! nodes, claims free or expired lots up to its fair share, and names what it holds beyond it,
//! to be given back with [`Leases::release`] once it has stopped acting for those lots. Every
//! change of owner raises the lot's token; a write for a lot is made only inside a transaction
//! that [`fence`]s it: the lease is still this node's, unexpired, with the token it acted under
//! (the lease rows stay locked until the commit, so a takeover waits for that write).

use std::collections::BTreeMap;
use std::time::Duration;

use parkflow_db::{QueryBuilder, Tx, query};

use super::{Db, StoreError};

/// The lots a node holds, with the token of each lease.
pub type Held = BTreeMap<String, i64>;

/// What one round changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    /// Every lot held after the round, with its token.
    pub held: Held,
    /// Claimed in this round (free, or another node's lease had expired).
    pub acquired: Vec<String>,
    /// Held before the round, not renewed: the lease had expired (the node was paused or cut
    /// off). Stop acting for these at once.
    pub lost: Vec<String>,
    /// Held beyond the fair share: stop acting for them, then [`Leases::release`] them.
    pub surplus: Vec<(String, i64)>,
    /// Live nodes, this one included.
    pub nodes: i64,
    /// Nodes whose expired leases this round took over and that are not alive (not seen for a
    /// lease's life): what their broker sessions kept is theirs no more.
    pub dead: Vec<String>,
}

/// Why leases cannot be kept.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("several nodes need PostgreSQL (SQLite is one process's database)")]
    NeedsPostgres,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One node's side of the leases.
#[derive(Debug, Clone)]
pub struct Leases {
    db: Db,
    node: String,
    ttl: Duration,
}

impl Leases {
    /// `ttl`: how long a lease lasts unless renewed — a dead node's lots move after at most
    /// this (plus a round).
    pub fn new(db: Db, node: &str, ttl: Duration) -> Result<Self, LeaseError> {
        if db.engine() != parkflow_db::Engine::Postgres {
            return Err(LeaseError::NeedsPostgres);
        }
        Ok(Self {
            db,
            node: node.to_owned(),
            ttl,
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// One round (see the module's documentation). `held`: what the node held after its last
    /// round.
    pub async fn round(&self, held: &Held) -> Result<Round, StoreError> {
        let ttl = self.ttl.as_secs_f64();
        let mut tx = self.db.begin_write().await?;
        query(
            "INSERT INTO gateway_nodes (node_id, seen_at) VALUES ($1, clock_timestamp())
             ON CONFLICT (node_id) DO UPDATE SET seen_at = clock_timestamp()",
        )
        .bind(&self.node)
        .execute(&mut tx)
        .await?;
        let renewed: Vec<(String, i64)> = query(
            "UPDATE lot_leases SET expires_at = clock_timestamp() + make_interval(secs => $2)
             WHERE node_id = $1 AND expires_at > clock_timestamp() RETURNING lot_id, token",
        )
        .bind(&self.node)
        .bind(ttl)
        .fetch_all(&mut tx)
        .await?;
        let mut round = Round {
            held: renewed.into_iter().collect(),
            ..Round::default()
        };
        round.lost = held
            .iter()
            .filter(|(lot, token)| round.held.get(*lot) != Some(token))
            .map(|(lot, _)| lot.clone())
            .collect();
        let (nodes,): (i64,) = query(
            "SELECT COUNT(*) FROM gateway_nodes
             WHERE seen_at > clock_timestamp() - make_interval(secs => $1)",
        )
        .bind(ttl)
        .fetch_one(&mut tx)
        .await?;
        round.nodes = nodes.max(1);
        let (lots,): (i64,) = query("SELECT COUNT(*) FROM lots")
            .fetch_one(&mut tx)
            .await?;
        let share = usize::try_from((lots + round.nodes - 1) / round.nodes).unwrap_or(0);
        // The renewals commit on their own: a claim that waits for another node's write (its
        // lease rows are locked until that commits) must not hold this node's own lease rows,
        // which its writer locks to fence every write.
        tx.commit().await?;
        if round.held.len() < share {
            match self.claim(share - round.held.len(), ttl).await {
                Ok((claimed, dead)) => {
                    for (lot, token) in claimed {
                        round.held.insert(lot.clone(), token);
                        round.acquired.push(lot);
                    }
                    round.dead = dead;
                }
                // A lot locked by a write of its owner until now: claimed at a next round.
                Err(error) => tracing::warn!(%error, "lots not claimed this round"),
            }
        }
        // Beyond the fair share (a node came back): lots go back in an order unrelated to their
        // ids (ids group lots of a kind — gated lots, street zones — and so their traffic), as
        // they were claimed.
        let mut held: Vec<(&String, &i64)> = round.held.iter().collect();
        held.sort_by_cached_key(|(lot, _)| spread(lot));
        round.surplus = held
            .into_iter()
            .skip(share)
            .map(|(lot, token)| (lot.clone(), *token))
            .collect();
        Ok(round)
    }

    /// Claims up to `wanted` free or expired lots in one transaction: the lots and their
    /// tokens, and the previous owners of expired leases that are not alive.
    async fn claim(
        &self,
        wanted: usize,
        ttl: f64,
    ) -> Result<(Vec<(String, i64)>, Vec<String>), StoreError> {
        let mut tx = self.db.begin_write().await?;
        // A lot whose row another node's write holds is left for a next round.
        query("SET LOCAL lock_timeout = '500ms'")
            .execute(&mut tx)
            .await?;
        let (mut claimed, mut dead) = (Vec::new(), Vec::new());
        {
            let free: Vec<(String, Option<String>)> = query(
                "SELECT l.id, x.node_id FROM lots l LEFT JOIN lot_leases x ON x.lot_id = l.id
                 WHERE x.lot_id IS NULL OR x.expires_at <= clock_timestamp()
                 ORDER BY md5(l.id) LIMIT $1",
            )
            .bind(i64::try_from(wanted).unwrap_or(i64::MAX))
            .fetch_all(&mut tx)
            .await?;
            let mut previous = std::collections::BTreeSet::new();
            for (lot, before) in free {
                // Another node may take it first: then its lease is live and this changes nothing.
                let taken: Option<(i64,)> = query(
                    "INSERT INTO lot_leases (lot_id, node_id, token, expires_at)
                     VALUES ($1, $2, 1, clock_timestamp() + make_interval(secs => $3))
                     ON CONFLICT (lot_id) DO UPDATE SET node_id = excluded.node_id,
                         token = lot_leases.token + 1, expires_at = excluded.expires_at
                     WHERE lot_leases.expires_at <= clock_timestamp()
                     RETURNING token",
                )
                .bind(&lot)
                .bind(&self.node)
                .bind(ttl)
                .fetch_optional(&mut tx)
                .await?;
                let Some((token,)) = taken else {
                    continue;
                };
                // The previous owner's lease ended when it expired, before now.
                query(
                    "UPDATE lot_lease_history SET released_at = clock_timestamp()
                     WHERE lot_id = $1 AND released_at IS NULL AND token < $2",
                )
                .bind(&lot)
                .bind(token)
                .execute(&mut tx)
                .await?;
                query(
                    "INSERT INTO lot_lease_history (lot_id, token, node_id, acquired_at)
                     VALUES ($1, $2, $3, clock_timestamp())",
                )
                .bind(&lot)
                .bind(token)
                .bind(&self.node)
                .execute(&mut tx)
                .await?;
                claimed.push((lot, token));
                previous.extend(before.filter(|node| *node != self.node));
            }
            for node in previous {
                let (alive,): (bool,) = query(
                    "SELECT EXISTS (SELECT 1 FROM gateway_nodes WHERE node_id = $1
                       AND seen_at > clock_timestamp() - make_interval(secs => $2))",
                )
                .bind(&node)
                .bind(ttl)
                .fetch_one(&mut tx)
                .await?;
                if !alive {
                    dead.push(node);
                }
            }
        }
        tx.commit().await?;
        Ok((claimed, dead))
    }

    /// Gives leases back (the node has stopped acting for these lots): another node may claim
    /// them at once.
    pub async fn release(&self, lots: &[(String, i64)]) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().await?;
        for (lot, token) in lots {
            let released = query(
                "UPDATE lot_leases SET expires_at = clock_timestamp()
                 WHERE lot_id = $1 AND node_id = $2 AND token = $3
                   AND expires_at > clock_timestamp()",
            )
            .bind(lot)
            .bind(&self.node)
            .bind(*token)
            .execute(&mut tx)
            .await?;
            if released > 0 {
                query(
                    "UPDATE lot_lease_history SET released_at = clock_timestamp()
                     WHERE lot_id = $1 AND token = $2",
                )
                .bind(lot)
                .bind(*token)
                .execute(&mut tx)
                .await?;
            }
        }
        tx.commit().await
    }
}

/// A lot's place in the order lots are shared out: a hash of its id, the same on every node.
fn spread(lot: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same order in every process.
    let mut hasher = std::hash::DefaultHasher::new();
    lot.hash(&mut hasher);
    hasher.finish()
}

/// Which of `lots` `node` no longer holds under the given token, unexpired (fenced: their
/// writes must not be made); locks the lease rows it does hold until `tx` ends, so that no
/// other node takes one over before this write commits.
pub async fn fence(
    tx: &mut Tx,
    node: &str,
    lots: &[(&str, i64)],
) -> Result<Vec<(String, i64)>, StoreError> {
    if lots.is_empty() {
        return Ok(Vec::new());
    }
    let mut select = QueryBuilder::new(
        "SELECT lot_id, token FROM lot_leases WHERE expires_at > clock_timestamp() AND node_id = ",
    );
    select.push_bind(node);
    select.push(" AND lot_id IN (");
    let mut list = select.separated(", ");
    for (lot, _) in lots {
        list.push_bind(*lot);
    }
    select.push(") FOR SHARE");
    let live: Vec<(String, i64)> = select.build().fetch_all(&mut *tx).await?;
    let live: BTreeMap<String, i64> = live.into_iter().collect();
    Ok(lots
        .iter()
        .filter(|(lot, token)| live.get(*lot) != Some(token))
        .map(|(lot, token)| ((*lot).to_owned(), *token))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::provision::{lots_only, provision};

    /// A fresh database on the PostgreSQL server the whole-platform tests use, with `lots`
    /// lots; `None` when no server is named.
    async fn city(lots: usize) -> Option<(Db, Scratch)> {
        let server = std::env::var("PARKFLOW_TEST_POSTGRES_URL").ok()?;
        let name = format!("leases_{}", uuid::Uuid::new_v4().simple());
        let admin = Db::connect(&server).await.ok()?;
        query(format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        let (base, _) = server.rsplit_once('/').unwrap();
        let db = Db::connect(&format!("{base}/{name}")).await.unwrap();
        let ids: Vec<String> = (0..lots).map(|i| format!("lot-{i}")).collect();
        let plan = lots_only(&ids.iter().map(String::as_str).collect::<Vec<_>>());
        provision(&db, &plan, chrono::Utc::now()).await.unwrap();
        Some((db, Scratch { admin, name }))
    }

    /// The test's database, dropped at the end.
    struct Scratch {
        admin: Db,
        name: String,
    }

    impl Scratch {
        async fn drop_with(self, db: Db) {
            db.close().await;
            query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&self.admin)
            .await
            .unwrap();
        }
    }

    #[tokio::test]
    async fn sqlite_cannot_hold_leases() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite:{}", dir.path().join("l.db").display()))
            .await
            .unwrap();
        assert!(matches!(
            Leases::new(db, "a", Duration::from_secs(3)),
            Err(LeaseError::NeedsPostgres)
        ));
    }

    /// Two nodes share the lots; one dies and the other takes them all with new tokens; the dead
    /// one, waking, is fenced; it comes back and the lots are shared again; the history shows
    /// one owner per lot at every moment.
    #[tokio::test]
    async fn lots_are_shared_taken_over_fenced_and_shared_again() {
        let Some((db, scratch)) = city(5).await else {
            return;
        };
        let ttl = Duration::from_secs(1);
        let a = Leases::new(db.clone(), "node-a", ttl).unwrap();
        let b = Leases::new(db.clone(), "node-b", ttl).unwrap();

        // Alone, a takes every lot.
        let round_a = a.round(&Held::new()).await.unwrap();
        assert_eq!((round_a.held.len(), round_a.nodes), (5, 1));
        // b arrives: a's leases are live, so b takes nothing yet; a then sees two nodes and
        // names its surplus, gives it back, and b takes it.
        let round_b = b.round(&Held::new()).await.unwrap();
        assert!(round_b.held.is_empty());
        let round_a = a.round(&round_a.held).await.unwrap();
        assert_eq!((round_a.nodes, round_a.surplus.len()), (2, 2));
        a.release(&round_a.surplus).await.unwrap();
        let mut held_a = round_a.held.clone();
        for (lot, _) in &round_a.surplus {
            held_a.remove(lot);
        }
        let round_b = b.round(&round_b.held).await.unwrap();
        assert_eq!(round_b.acquired.len(), 2);
        assert!(held_a.keys().all(|lot| !round_b.held.contains_key(lot)));

        // a stops (killed, or paused): after its leases expire, b takes every lot.
        tokio::time::sleep(ttl + Duration::from_millis(200)).await;
        let mut held_b = b.round(&round_b.held).await.unwrap().held;
        held_b = b.round(&held_b).await.unwrap().held;
        assert_eq!(held_b.len(), 5);
        for (lot, token) in &held_a {
            assert!(held_b[lot] > *token, "a takeover raises the token");
        }

        // a wakes up and tries to write for a lot it held: fenced.
        let (lot, token) = held_a.iter().next().unwrap();
        let mut tx = db.begin_write().await.unwrap();
        assert_eq!(
            fence(&mut tx, "node-a", &[(lot, *token)]).await.unwrap(),
            vec![(lot.clone(), *token)]
        );
        drop(tx);
        let mut tx = db.begin_write().await.unwrap();
        assert!(
            fence(&mut tx, "node-b", &[(lot, held_b[lot])])
                .await
                .unwrap()
                .is_empty()
        );
        drop(tx);
        // Its next round tells it what it lost.
        let round_a = a.round(&held_a).await.unwrap();
        assert_eq!(round_a.lost.len(), held_a.len());
        assert!(round_a.held.is_empty());
        // Back, it gets a share again once b gives its surplus back.
        let round_b = b.round(&held_b).await.unwrap();
        assert_eq!(round_b.surplus.len(), 2);
        b.release(&round_b.surplus).await.unwrap();
        let round_a = a.round(&round_a.held).await.unwrap();
        assert_eq!(round_a.held.len(), 2);

        // One owner per lot at every moment: each lease began no earlier than the one before
        // it ended.
        let overlaps: Vec<(String,)> = query(
            "SELECT h.lot_id FROM lot_lease_history h JOIN lot_lease_history n
               ON n.lot_id = h.lot_id AND n.token > h.token
             WHERE h.released_at IS NULL OR n.acquired_at < h.released_at",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        assert!(overlaps.is_empty(), "{overlaps:?}");
        // `parkflow audit` checks the same.
        let report = parkflow_billing::audit::audit(&db).await.unwrap();
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        // … and would see a second owner.
        let (lot, _) = round_a.held.iter().next().unwrap();
        query(
            "INSERT INTO lot_lease_history (lot_id, token, node_id, acquired_at)
             VALUES ($1, 999, 'node-z', clock_timestamp())",
        )
        .bind(lot)
        .execute(&db)
        .await
        .unwrap();
        let report = parkflow_billing::audit::audit(&db).await.unwrap();
        assert!(
            report
                .violations
                .iter()
                .any(|v| v.rule == "lot owned by two nodes at once"),
            "{:?}",
            report.violations
        );
        let (leases,): (i64,) = query("SELECT COUNT(*) FROM lot_lease_history")
            .fetch_one(&db)
            .await
            .unwrap();
        assert!(leases >= 5 + 2 + 5);
        scratch.drop_with(db).await;
    }
}
