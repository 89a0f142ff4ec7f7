//! N nodes in one process on 127.0.0.1, with every delivery recorded: shared by `demo`
//! and `bench`.
//!
//! Payload layout (as in ../shared/peer-bench): `[seq u32 LE][send time u64 LE, ns since
//! t0][origin u16 LE][warm-up flag u8][padding]`, at least [`HEADER`] bytes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use plumcast::{Event, Node, NodeId, NodeStats, proto};

/// Bytes of the payload header.
pub const HEADER: usize = 16;

/// Build a payload of `size` bytes (≥ [`HEADER`]).
pub fn payload(seq: u32, sent_ns: u64, origin: u16, warm: bool, size: usize) -> Vec<u8> {
    let mut b = vec![0u8; size.max(HEADER)];
    b[0..4].copy_from_slice(&seq.to_le_bytes());
    b[4..12].copy_from_slice(&sent_ns.to_le_bytes());
    b[12..14].copy_from_slice(&origin.to_le_bytes());
    b[14] = u8::from(warm);
    b
}

fn parse(p: &[u8]) -> Option<(u32, u64, bool)> {
    if p.len() < HEADER {
        return None;
    }
    let seq = u32::from_le_bytes(p[0..4].try_into().ok()?);
    let sent = u64::from_le_bytes(p[4..12].try_into().ok()?);
    Some((seq, sent, p[14] == 1))
}

/// One measured delivery.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub seq: u32,
    pub latency_ns: u64,
    pub hops: u32,
}

/// Everything the nodes delivered.
pub struct Recorder {
    pub t0: Instant,
    n: usize,
    m: usize,
    counts: Vec<AtomicU8>,
    pub got: Vec<AtomicU32>,
    pub last_ns: Vec<AtomicU64>,
    pub delivered: AtomicU64,
    pub duplicates: AtomicU64,
    pub warm_delivered: AtomicU64,
    pub neighbors: Vec<AtomicI64>,
    pub topo_change_ns: AtomicU64,
    pub samples: Vec<Mutex<Vec<Sample>>>,
}

impl Recorder {
    fn new(n: usize, m: usize) -> Self {
        Self {
            t0: Instant::now(),
            n,
            m,
            counts: (0..n * m).map(|_| AtomicU8::new(0)).collect(),
            got: (0..m).map(|_| AtomicU32::new(0)).collect(),
            last_ns: (0..m).map(|_| AtomicU64::new(0)).collect(),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            warm_delivered: AtomicU64::new(0),
            neighbors: (0..n).map(|_| AtomicI64::new(0)).collect(),
            topo_change_ns: AtomicU64::new(0),
            samples: (0..n).map(|_| Mutex::new(Vec::with_capacity(m))).collect(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// How many times node `node` delivered message `seq`.
    pub fn count(&self, node: usize, seq: usize) -> u8 {
        self.counts[node * self.m + seq].load(Relaxed)
    }

    fn record(&self, node: usize, ev: Event) {
        match ev {
            Event::Delivered(d) => {
                let Some((seq, sent, warm)) = parse(&d.payload) else { return };
                if warm {
                    self.warm_delivered.fetch_add(1, Relaxed);
                    return;
                }
                let seq_i = seq as usize;
                if seq_i >= self.m || node >= self.n {
                    return;
                }
                let now = self.now_ns();
                if self.counts[node * self.m + seq_i].fetch_add(1, Relaxed) > 0 {
                    self.duplicates.fetch_add(1, Relaxed);
                    return;
                }
                self.got[seq_i].fetch_add(1, Relaxed);
                self.last_ns[seq_i].fetch_max(now, Relaxed);
                self.delivered.fetch_add(1, Relaxed);
                let s = Sample { seq, latency_ns: now.saturating_sub(sent), hops: d.hops };
                if let Ok(mut v) = self.samples[node].lock() {
                    v.push(s);
                }
            }
            Event::NeighborUp(_) => {
                self.neighbors[node].fetch_add(1, Relaxed);
                self.topo_change_ns.store(self.now_ns(), Relaxed);
            }
            Event::NeighborDown { .. } => {
                self.neighbors[node].fetch_sub(1, Relaxed);
                self.topo_change_ns.store(self.now_ns(), Relaxed);
            }
            Event::Exchanged(_) => {}
        }
    }

    /// All samples of all nodes.
    pub fn all_samples(&self) -> Vec<Sample> {
        self.samples.iter().flat_map(|v| v.lock().map(|v| v.clone()).unwrap_or_default()).collect()
    }
}

/// N nodes in this process.
pub struct LocalCluster {
    pub nodes: Vec<Option<Node>>,
    pub ids: Vec<NodeId>,
    pub rec: Arc<Recorder>,
}

impl LocalCluster {
    /// Start `n` nodes (node 0 first, the others bootstrapping through it), recording
    /// deliveries of up to `m` measured messages; `signed`: messages signed and checked;
    /// `http`: node `i` serves the admin endpoint on the address.
    pub async fn start(
        n: usize,
        m: usize,
        config: proto::Config,
        seed: u64,
        signed: bool,
        http: Option<(usize, std::net::SocketAddr)>,
    ) -> anyhow::Result<Self> {
        let rec = Arc::new(Recorder::new(n, m));
        let mut nodes = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        let mut contact = None;
        for i in 0..n {
            let mut b =
                Node::builder().protocol(config.clone()).rng_seed(seed.wrapping_mul(1000).wrapping_add(i as u64));
            b = b.sign_messages(signed);
            if let Some((_, addr)) = http.filter(|(at, _)| *at == i) {
                b = b.http(addr);
            }
            if let Some(c) = contact {
                b = b.bootstrap(format!("{c}"));
            }
            let (node, mut events) = b.spawn().await.with_context(|| format!("starting node {i}"))?;
            contact.get_or_insert(node.addr());
            ids.push(node.id());
            let r = rec.clone();
            tokio::spawn(async move {
                while let Some(ev) = events.recv().await {
                    r.record(i, ev);
                }
            });
            nodes.push(Some(node));
        }
        Ok(Self { nodes, ids, rec })
    }

    /// Indices of the nodes still running.
    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].is_some()).collect()
    }

    /// Wait until every live node has a neighbour and no neighbour event happened for
    /// `quiet`; false after `deadline`.
    pub async fn wait_formed(&self, quiet: Duration, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        loop {
            let all_up = self.live().iter().all(|i| self.rec.neighbors[*i].load(Relaxed) > 0);
            let since = self.rec.now_ns().saturating_sub(self.rec.topo_change_ns.load(Relaxed));
            if all_up && since > quiet.as_nanos() as u64 {
                return true;
            }
            if Instant::now() > end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Each live node's index with its active view (empty for a node that stopped
    /// answering).
    pub async fn views(&self) -> Vec<(usize, Vec<NodeId>)> {
        let mut out = Vec::new();
        for i in self.live() {
            if let Some(node) = &self.nodes[i] {
                let v = node.neighbors().await.unwrap_or_default();
                out.push((i, v.iter().map(|p| p.id).collect()));
            }
        }
        out
    }

    /// Healed: no live node's active view holds a dead peer, and the live nodes' active
    /// views form one connected graph.
    pub async fn healed(&self) -> bool {
        let views = self.views().await;
        let live: Vec<NodeId> = views.iter().map(|(i, _)| self.ids[*i]).collect();
        if views.iter().any(|(_, v)| v.iter().any(|p| !live.contains(p))) {
            return false;
        }
        if live.len() <= 1 {
            return true;
        }
        let pos = |id: &NodeId| live.iter().position(|x| x == id);
        let mut adj = vec![Vec::new(); live.len()];
        for (k, (_, v)) in views.iter().enumerate() {
            for p in v {
                if let Some(j) = pos(p) {
                    adj[k].push(j);
                    adj[j].push(k);
                }
            }
        }
        let mut seen = vec![false; live.len()];
        let mut q = VecDeque::from([0usize]);
        seen[0] = true;
        while let Some(k) = q.pop_front() {
            for &j in &adj[k] {
                if !seen[j] {
                    seen[j] = true;
                    q.push_back(j);
                }
            }
        }
        seen.iter().all(|s| *s)
    }

    /// The stats of every node that still answers (crashed ones are left out).
    pub async fn stats(&self) -> Vec<NodeStats> {
        let mut out = Vec::new();
        for n in self.nodes.iter().flatten() {
            if let Ok(s) = n.stats().await {
                out.push(s);
            }
        }
        out
    }

    /// Gracefully stop every live node.
    pub async fn shutdown(&mut self) {
        for n in self.nodes.iter_mut() {
            if let Some(node) = n.take() {
                let _ = node.shutdown().await;
            }
        }
    }
}

/// The `p` quantile (0–1) of sorted nanoseconds, in ms.
pub fn pct_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1e6
}

/// Process CPU time (user + system), seconds, from /proc/self/stat.
pub fn cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |k: usize| f.get(k).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

/// Resident set size of this process, bytes, from /proc/self/statm.
pub fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    s.split_whitespace().nth(1).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0) * 4096
}

/// Picks senders, the same sequence for a seed.
pub struct Pick(rand_chacha::ChaCha8Rng);

impl Pick {
    pub fn new(seed: u64) -> Self {
        Self(rand::SeedableRng::seed_from_u64(seed))
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        rand::Rng::gen_range(&mut self.0, 0..n)
    }
}
