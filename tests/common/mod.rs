//! Helpers shared by the integration tests: a cluster of real nodes on loopback whose
//! deliveries are recorded, and condition waits with bounded deadlines.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plumcast::proto::Config;
use plumcast::{Event, MessageId, Node, NodeId};
use tokio::time::Instant;

/// Multi-node QUIC tests run one at a time (2 cores): hold this for the whole test.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What one node saw: deliveries per message id, how many neighbour events, and the
/// exchanges it started.
#[derive(Default)]
pub struct Record {
    pub counts: HashMap<MessageId, u32>,
    /// (origin, seq) of every delivery, in delivery order.
    pub order: Vec<(NodeId, u64)>,
    pub neighbor_events: u64,
    /// Anti-entropy exchanges this node started, as reported.
    pub exchanges: Vec<plumcast::Exchange>,
}

pub struct TestNode {
    pub node: Node,
    pub record: Arc<Mutex<Record>>,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// Start a node (bootstrapping through `contact`), recording its deliveries.
pub async fn start(contact: Option<std::net::SocketAddr>, seed: u64) -> TestNode {
    start_with(contact, seed, Config::local()).await
}

/// [`start`] with these protocol parameters.
pub async fn start_with(contact: Option<std::net::SocketAddr>, seed: u64, protocol: Config) -> TestNode {
    let mut b = Node::builder().protocol(protocol).rng_seed(seed);
    if let Some(c) = contact {
        b = b.bootstrap(c);
    }
    TestNode::record(b).await
}

impl TestNode {
    /// Spawn the node `b` builds, recording its deliveries.
    pub async fn record(b: plumcast::NodeBuilder) -> TestNode {
        record(b).await
    }
}

async fn record(b: plumcast::NodeBuilder) -> TestNode {
    let (node, mut events) = b.spawn().await.expect("node starts");
    let record = Arc::new(Mutex::new(Record::default()));
    let r = record.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            let mut r = r.lock().unwrap();
            match ev {
                Event::Delivered(d) => {
                    *r.counts.entry(d.id).or_default() += 1;
                    r.order.push((d.origin, d.seq));
                }
                Event::Exchanged(x) => r.exchanges.push(x),
                _ => r.neighbor_events += 1,
            }
        }
    });
    TestNode { node, record }
}

/// Start `n` nodes joining through the first, one after another.
pub async fn cluster(n: usize) -> Vec<TestNode> {
    cluster_with(n, Config::local()).await
}

/// [`cluster`] with these protocol parameters.
pub async fn cluster_with(n: usize, protocol: Config) -> Vec<TestNode> {
    let first = start_with(None, 1, protocol.clone()).await;
    let contact = first.node.addr();
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(start_with(Some(contact), i as u64 + 1, protocol.clone()).await);
    }
    nodes
}

/// Wait until `cond` holds, polling every 20 ms; panic with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(wait_for(timeout, cond).await, "timed out after {timeout:?} waiting for: {what}");
}

/// Wait until `cond` holds, polling every 20 ms; false if it still does not after `timeout`.
pub async fn wait_for<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every node has at least one neighbour, active views are symmetric, and they form one
/// connected overlay.
pub async fn overlay_ready(nodes: &[TestNode]) -> bool {
    let mut views: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    for n in nodes {
        match n.node.neighbors().await {
            Ok(v) if !v.is_empty() => {
                views.insert(n.node.id(), v.iter().map(|p| p.id).collect());
            }
            _ => return false,
        }
    }
    let symmetric = views.iter().all(|(id, v)| v.iter().all(|p| views.get(p).is_none_or(|w| w.contains(id))));
    // One component: a split overlay (seen after 5 of 20 crashed: 7 + 8 survivors whose
    // views were full among themselves) has no dead peer and is symmetric, but a
    // broadcast stays on its side.
    let Some(first) = nodes.first() else { return false };
    let mut reached = vec![first.node.id()];
    let mut i = 0;
    while i < reached.len() {
        for p in views.get(&reached[i]).into_iter().flatten() {
            if views.contains_key(p) && !reached.contains(p) {
                reached.push(*p);
            }
        }
        i += 1;
    }
    symmetric && reached.len() == views.len()
}

/// Number of nodes in `nodes` (other than `origin`) that delivered `id` exactly once, and
/// whether any delivered it more than once.
pub fn delivered(nodes: &[TestNode], origin: NodeId, id: MessageId) -> (usize, bool) {
    let mut ok = 0;
    let mut dup = false;
    for n in nodes.iter().filter(|n| n.node.id() != origin) {
        match n.record.lock().unwrap().counts.get(&id).copied().unwrap_or(0) {
            1 => ok += 1,
            0 => {}
            _ => dup = true,
        }
    }
    (ok, dup)
}
