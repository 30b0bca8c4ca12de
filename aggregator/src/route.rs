//! Which ClickHouse server a Kafka partition's batches go to. Pure: the writer does the I/O.
//!
//! On one server, every partition goes there. On a cluster of S shards x R replicas, partition
//! `p` belongs to shard `p % S`, so its staging, fenced move and checkpoints stay on one shard,
//! and its home replica is `(p / S) % R`, which spreads the partitions of a shard over its
//! replicas. A partition leaves home only while home fails, and tries home again after
//! [`RETURN_HOME_AFTER`]. Two instances that own the same partition one after the other (a
//! rebalance) therefore write to the same replica whenever it is up, and the fence in the
//! move sees the other's checkpoints.
//!
//! A replica the partition has just switched to (and every replica at start-up) is not used
//! until it has caught up with the shard's replication log for `qoe_checkpoints`
//! (`SYSTEM SYNC REPLICA`): until then it may lack a checkpoint the other replica committed,
//! and resuming or fencing from it could count a batch twice. [`Router::route`] says when.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a partition stays away from its home replica after home failed.
pub const RETURN_HOME_AFTER: Duration = Duration::from_secs(10);

/// Shards of replicas, by index into the writer's list of servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// `shards[s][r]`: index of replica `r` of shard `s`.
    pub shards: Vec<Vec<usize>>,
}

impl Topology {
    /// One server.
    pub fn single() -> Topology {
        Topology {
            shards: vec![vec![0]],
        }
    }

    pub fn is_cluster(&self) -> bool {
        self.shards.len() > 1 || self.shards.iter().any(|s| s.len() > 1)
    }

    pub fn shard_of(&self, partition: i32) -> usize {
        (partition.unsigned_abs() as usize) % self.shards.len()
    }

    fn home(&self, partition: i32) -> usize {
        let shard = &self.shards[self.shard_of(partition)];
        (partition.unsigned_abs() as usize / self.shards.len()) % shard.len()
    }
}

/// Where one partition writes now.
#[derive(Debug, Clone, Copy)]
struct Route {
    /// Replica index within the shard.
    replica: usize,
    /// Whether that replica has caught up since the partition switched to it.
    synced: bool,
    /// When the partition left its home replica.
    left_home: Option<Instant>,
}

/// The routes of all partitions of one writer.
#[derive(Debug)]
pub struct Router {
    topology: Topology,
    routes: Mutex<HashMap<i32, Route>>,
}

impl Router {
    pub fn new(topology: Topology) -> Router {
        Router {
            topology,
            routes: Mutex::new(HashMap::new()),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    fn with_route<T>(&self, partition: i32, now: Instant, f: impl FnOnce(&mut Route) -> T) -> T {
        let home = self.topology.home(partition);
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let route = routes.entry(partition).or_insert(Route {
            replica: home,
            // A single server needs no catching up.
            synced: !self.topology.is_cluster(),
            left_home: None,
        });
        if let Some(left) = route.left_home {
            if now.duration_since(left) >= RETURN_HOME_AFTER {
                *route = Route {
                    replica: home,
                    synced: false,
                    left_home: None,
                };
            }
        }
        f(route)
    }

    /// The server (index into the writer's list) the partition writes to now, and whether it
    /// must catch up before it is used.
    pub fn route(&self, partition: i32, now: Instant) -> (usize, bool) {
        let shard = &self.topology.shards[self.topology.shard_of(partition)];
        self.with_route(partition, now, |r| (shard[r.replica], !r.synced))
    }

    /// The partition's current server has caught up.
    pub fn synced(&self, partition: i32, now: Instant) {
        self.with_route(partition, now, |r| r.synced = true);
    }

    /// A call to the partition's current server failed: move to the shard's next replica
    /// (which must catch up first). A single server stays.
    pub fn failed(&self, partition: i32, now: Instant) {
        let home = self.topology.home(partition);
        let replicas = self.topology.shards[self.topology.shard_of(partition)].len();
        if replicas < 2 {
            return;
        }
        self.with_route(partition, now, |r| {
            r.replica = (r.replica + 1) % replicas;
            r.synced = false;
            r.left_home = (r.replica != home).then_some(now);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_by_two() -> Topology {
        Topology {
            shards: vec![vec![0, 1], vec![2, 3]],
        }
    }

    #[test]
    fn partitions_spread_over_shards_and_home_replicas() {
        let r = Router::new(two_by_two());
        let now = Instant::now();
        let servers: Vec<usize> = (0..8).map(|p| r.route(p, now).0).collect();
        // p % 2 picks the shard, (p / 2) % 2 the replica.
        assert_eq!(servers, vec![0, 2, 1, 3, 0, 2, 1, 3]);
        assert!(
            r.route(0, now).1,
            "a cluster replica catches up before first use"
        );
        assert!(!Router::new(Topology::single()).route(0, now).1);
    }

    #[test]
    fn failover_stays_in_the_shard_and_returns_home() {
        let r = Router::new(two_by_two());
        let t0 = Instant::now();
        r.synced(1, t0);
        assert_eq!(r.route(1, t0).0, 2);
        r.failed(1, t0);
        assert_eq!(r.route(1, t0).0, 3, "the other replica of shard 1");
        assert!(r.route(1, t0).1);
        r.synced(1, t0);
        assert!(!r.route(1, t0 + Duration::from_secs(1)).1);
        // Home again after a while, and it must catch up first.
        let later = t0 + RETURN_HOME_AFTER;
        assert_eq!(r.route(1, later).0, 2);
        assert!(r.route(1, later).1);
        // Failing at home and away alternates between the shard's replicas.
        r.failed(1, later);
        r.failed(1, later);
        assert_eq!(r.route(1, later).0, 2);
        // Other partitions are not affected.
        assert_eq!(r.route(3, later).0, 3);
    }

    #[test]
    fn a_single_server_never_moves() {
        let r = Router::new(Topology::single());
        let now = Instant::now();
        r.failed(5, now);
        assert_eq!(r.route(5, now).0, 0);
        assert!(!r.route(5, now).1);
        assert!(!Topology::single().is_cluster());
        assert!(two_by_two().is_cluster());
    }
}
