//! Topology records: each node announces its own active view and eager links through the
//! overlay, so any node can draw the whole cluster (the admin endpoint's `/topology`).
//!
//! This is a control channel beside the two protocols, not part of either paper: a
//! record carries no application data, takes no sequence number, is never stored,
//! ordered or delivered, and feeds neither membership nor broadcast. Each node sends its
//! record to its active view every [`Config::interval`]; a node that receives a record
//! newer than the one it holds for that node keeps it and passes it to its other
//! neighbours (flooding, deduplicated by version). Records are hearsay: they are not
//! signed, and they only inform the operator's picture.
//!
//! Bounds: [`Config::max_nodes`] records kept (the least recently heard forgotten first),
//! [`MAX_LIST`] ids in each list (a longer record is dropped and counted), at most
//! [`Config::max_nodes`] records taken from one neighbour per [`Config::interval`] (an
//! honest neighbour passes on at most one record per node per interval; the rest is
//! dropped and counted, so a member cannot make us flood made-up records), and a record
//! not heard of for [`Config::expiry`] is reported stale, then forgotten after four times
//! that.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Peer;

/// Most ids in a record's active view or eager list (an active view is 5–8 by the
/// HyParView paper's parameters; 64 leaves room for any tuning).
pub const MAX_LIST: usize = 64;

/// What a node says of itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Record<P: Peer> {
    /// The node (id and address).
    pub node: P,
    /// Its life (incarnation, the start time in ms) and the record's number in that life:
    /// a higher pair replaces a lower one.
    pub version: (u64, u64),
    /// Its active view.
    pub active_view: Vec<P::Id>,
    /// Its eager links: the neighbours on the tree of its own broadcasts.
    pub eager: Vec<P::Id>,
}

/// Topology parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Config {
    /// How often a node announces its record; `None` turns records off (none sent, none
    /// kept or passed on). Default 2 s: a change shows on every node's page within about
    /// two intervals.
    pub interval: Option<Duration>,
    /// A record not renewed for this long is reported stale (its node is likely down).
    /// Default 3 intervals.
    pub expiry: Duration,
    /// Most records kept. Default 4,096.
    pub max_nodes: usize,
    /// Cluster size up to which records go every [`Config::interval`]. Beyond it the
    /// interval and the expiry stretch in proportion to the nodes known (×4 at four times
    /// this), so each node still receives about this many records times its active view
    /// per interval: flooding every node's record costs N² × active view per interval, and
    /// at N = 200 with a fixed 2 s interval records were 82% of the frames and cut
    /// deliveries/s by 2.8× (docs/performance.md). Default 50.
    pub full_rate_nodes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interval: Some(Duration::from_secs(2)),
            expiry: Duration::from_secs(6),
            max_nodes: 4096,
            full_rate_nodes: 50,
        }
    }
}

impl Config {
    /// How much the interval and the expiry stretch with `nodes` known (this one
    /// included): 1 up to [`Config::full_rate_nodes`], `nodes / full_rate_nodes` beyond.
    pub fn stretch(&self, nodes: usize) -> f64 {
        (nodes as f64 / self.full_rate_nodes.max(1) as f64).max(1.0)
    }

    /// The expiry with `nodes` known (see [`Config::full_rate_nodes`]).
    pub fn expiry_for(&self, nodes: usize) -> Duration {
        self.expiry.mul_f64(self.stretch(nodes))
    }

    /// Records off.
    pub fn off() -> Self {
        Self { interval: None, ..Self::default() }
    }
}

/// Counters of the topology channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Stats {
    /// Records received.
    pub received: u64,
    /// Of those, newer than the one held (kept and passed on).
    pub accepted: u64,
    /// Records dropped: a list longer than [`MAX_LIST`], or our own id.
    pub dropped: u64,
    /// Records dropped because their sender had passed on [`Config::max_nodes`] records
    /// in this interval already.
    pub over_rate: u64,
    /// Records forgotten: expired, or to keep [`Config::max_nodes`].
    pub forgotten: u64,
}

/// A record with the time it was last renewed.
#[derive(Clone, Debug)]
pub struct Known<P: Peer> {
    /// The record.
    pub record: Record<P>,
    /// When a newer version last arrived.
    pub heard: Instant,
    /// This node declared it failed (as a neighbour) since its last record.
    pub failed: bool,
}

/// The records a node holds.
#[derive(Clone, Debug)]
pub(crate) struct Table<P: Peer> {
    pub(crate) config: Config,
    records: BTreeMap<P::Id, Known<P>>,
    /// Per sending neighbour: the start of its current interval and the records taken
    /// from it in that interval.
    budget: BTreeMap<P::Id, (Instant, usize)>,
    own_version: u64,
    pub(crate) stats: Stats,
}

impl<P: Peer> Table<P> {
    pub(crate) fn new(config: Config) -> Self {
        Self { config, records: BTreeMap::new(), budget: BTreeMap::new(), own_version: 0, stats: Stats::default() }
    }

    /// Our next record.
    pub(crate) fn own(&mut self, me: P, incarnation: u64, active_view: Vec<P::Id>, eager: Vec<P::Id>) -> Record<P> {
        self.own_version += 1;
        let cut = |mut v: Vec<P::Id>| {
            v.truncate(MAX_LIST);
            v
        };
        Record { node: me, version: (incarnation, self.own_version), active_view: cut(active_view), eager: cut(eager) }
    }

    /// A record from neighbour `from`: true if it is new here (the caller passes it on).
    pub(crate) fn receive(&mut self, now: Instant, me: &P::Id, from: &P::Id, r: &Record<P>) -> bool {
        self.stats.received += 1;
        let Some(interval) = self.config.interval else { return false };
        let (start, taken) = self.budget.entry(from.clone()).or_insert((now, 0));
        if now.saturating_duration_since(*start) >= interval {
            (*start, *taken) = (now, 0);
        }
        if *taken >= self.config.max_nodes.max(1) {
            self.stats.over_rate += 1;
            return false;
        }
        *taken += 1;
        let id = r.node.id();
        if &id == me || r.active_view.len() > MAX_LIST || r.eager.len() > MAX_LIST {
            self.stats.dropped += 1;
            return false;
        }
        if self.records.get(&id).is_some_and(|k| k.record.version >= r.version) {
            return false;
        }
        if !self.records.contains_key(&id) && self.records.len() >= self.config.max_nodes.max(1) {
            // Room for the newcomer: forget the least recently heard.
            if let Some(oldest) = self.records.iter().min_by_key(|(_, k)| k.heard).map(|(id, _)| id.clone()) {
                self.records.remove(&oldest);
                self.stats.forgotten += 1;
            }
        }
        self.stats.accepted += 1;
        self.records.insert(id, Known { record: r.clone(), heard: now, failed: false });
        true
    }

    /// Our failure detector declared `id` failed: its record is kept, marked, until a
    /// newer one comes.
    pub(crate) fn failed(&mut self, id: &P::Id) {
        if let Some(k) = self.records.get_mut(id) {
            k.failed = true;
        }
    }

    /// The announcement interval with the nodes known now (see [`Config::full_rate_nodes`]).
    pub(crate) fn interval(&self) -> Option<Duration> {
        Some(self.config.interval?.mul_f64(self.config.stretch(self.records.len() + 1)))
    }

    /// Forget records not renewed for four expiry periods.
    pub(crate) fn expire(&mut self, now: Instant) {
        let limit = self.config.expiry_for(self.records.len() + 1).saturating_mul(4);
        let interval = self.config.interval.unwrap_or(Duration::ZERO);
        self.budget.retain(|_, (start, _)| now.saturating_duration_since(*start) < interval);
        let before = self.records.len();
        self.records.retain(|_, k| now.saturating_duration_since(k.heard) < limit);
        self.stats.forgotten += (before - self.records.len()) as u64;
    }

    /// The records held, by id.
    pub(crate) fn records(&self) -> &BTreeMap<P::Id, Known<P>> {
        &self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(node: u32, version: u64, view: Vec<u32>) -> Record<u32> {
        Record { node, version: (1, version), active_view: view, eager: Vec::new() }
    }

    #[test]
    fn a_record_is_kept_and_passed_on_only_when_newer_and_long_or_own_ones_are_dropped() {
        let now = Instant::now();
        let mut t: Table<u32> = Table::new(Config::default());
        assert!(t.receive(now, &0, &5, &record(7, 2, vec![1, 2])));
        assert!(!t.receive(now, &0, &5, &record(7, 2, vec![1, 2])), "the same version again");
        assert!(!t.receive(now, &0, &5, &record(7, 1, vec![3])), "an older one");
        assert!(t.receive(now, &0, &5, &record(7, 3, vec![3])));
        assert_eq!(t.records()[&7].record.active_view, vec![3]);
        assert!(!t.receive(now, &0, &5, &record(0, 9, vec![1])), "our own id");
        assert!(!t.receive(now, &0, &5, &record(8, 1, (0..=MAX_LIST as u32).collect())), "a list over MAX_LIST");
        assert_eq!((t.stats.received, t.stats.accepted, t.stats.dropped), (6, 2, 2));
    }

    #[test]
    fn the_table_keeps_max_nodes_and_expires_what_is_not_renewed() {
        let t0 = Instant::now();
        let mut t: Table<u32> = Table::new(Config { max_nodes: 3, ..Config::default() });
        for (k, node) in [1u32, 2, 3, 4].iter().enumerate() {
            assert!(t.receive(t0 + Duration::from_secs(k as u64), &0, &5, &record(*node, 1, vec![])));
        }
        assert_eq!(t.records().keys().copied().collect::<Vec<_>>(), vec![2, 3, 4], "the least recently heard went");
        t.failed(&3);
        assert!(t.records()[&3].failed);
        assert!(t.receive(t0 + Duration::from_secs(5), &0, &5, &record(3, 2, vec![])));
        assert!(!t.records()[&3].failed, "a newer record clears it");
        t.expire(t0 + Duration::from_secs(2) + Config::default().expiry * 4);
        assert_eq!(t.records().keys().copied().collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(t.stats.forgotten, 2);
        let mut off: Table<u32> = Table::new(Config::off());
        assert!(!off.receive(t0, &0, &5, &record(1, 1, vec![])), "records off: nothing kept");
    }

    #[test]
    fn the_interval_and_the_expiry_stretch_with_the_nodes_known_beyond_full_rate_nodes() {
        let t0 = Instant::now();
        let c = Config::default();
        let mut t: Table<u32> = Table::new(c);
        assert_eq!(t.interval(), c.interval, "one node known: the configured interval");
        // 149 records and this node: 150 nodes, three times `full_rate_nodes`.
        for node in 1..150u32 {
            assert!(t.receive(t0, &0, &(node % 5 + 1000), &record(node, 1, vec![])));
        }
        assert_eq!(t.interval(), Some(c.interval.unwrap() * 3));
        assert_eq!(c.expiry_for(150), c.expiry * 3);
        assert_eq!(c.expiry_for(10), c.expiry);
        // A record is forgotten after four (stretched) expiry periods, not four plain ones.
        t.expire(t0 + c.expiry * 4 + Duration::from_secs(1));
        assert_eq!(t.records().len(), 149);
        t.expire(t0 + c.expiry * 12);
        assert!(t.records().is_empty());
    }

    #[test]
    fn one_neighbour_passes_on_at_most_max_nodes_records_an_interval() {
        let t0 = Instant::now();
        let mut t: Table<u32> = Table::new(Config { max_nodes: 4, ..Config::default() });
        let taken = (1..=10u32).filter(|n| t.receive(t0, &0, &7, &record(100 + n, 1, vec![]))).count();
        assert_eq!((taken, t.stats.over_rate), (4, 6));
        assert!(t.receive(t0, &0, &8, &record(200, 1, vec![])), "another neighbour has its own budget");
        let later = t0 + Config::default().interval.unwrap();
        assert!(t.receive(later, &0, &7, &record(300, 1, vec![])), "a new interval, a new budget");
    }
}
