//! The admin HTTP endpoint ([`NodeBuilder::http`](super::NodeBuilder::http)) and the
//! node's Prometheus metrics ([`Metrics`]).
//!
//! Routes:
//! - `GET /metrics`: every family of [`Metrics`] in the OpenMetrics text format
//!   (`application/openmetrics-text; version=1.0.0`), or the Prometheus text format
//!   (`text/plain; version=0.0.4`) when the scraper's `Accept` header does not ask for
//!   OpenMetrics. The body is the same: the Prometheus parser reads both.
//! - `GET /topology`: JSON of the overlay as this node knows it ([`Topology`]).
//! - `GET /`: a page that draws `/topology` live.
//!
//! The server holds no [`Node`] clone: it ends with the node, and a node whose last handle
//! is dropped still leaves.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::{Control, Error, HopHistogram, MessageKind, Node, NodeId, NodeStats, PeerInfo, TopologyRecord};
use crate::proto::topology::Config as TopologyConfig;

/// The Prometheus text format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The OpenMetrics text format's content type.
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where the stats come from: a node handle the application gave, or the admin server's
/// weak sender (which does not keep the node alive).
#[derive(Clone, Debug)]
enum Source {
    Node(Node),
    Weak(mpsc::WeakSender<Control>),
}

impl Source {
    async fn stats(&self) -> Result<NodeStats, Error> {
        match self {
            Self::Node(n) => n.stats().await,
            Self::Weak(w) => ask(w, Control::Stats).await,
        }
    }

    async fn topology(&self) -> Result<Vec<TopologyRecord>, Error> {
        match self {
            Self::Node(n) => n.topology_records().await,
            Self::Weak(w) => ask(w, Control::Topology).await,
        }
    }
}

/// Ask the actor through a weak sender.
async fn ask<T>(w: &mpsc::WeakSender<Control>, control: fn(oneshot::Sender<T>) -> Control) -> Result<T, Error> {
    let ctl = w.upgrade().ok_or(Error::Stopped)?;
    let (tx, rx) = oneshot::channel();
    ctl.send(control(tx)).await.map_err(|_| Error::Stopped)?;
    drop(ctl);
    rx.await.map_err(|_| Error::Stopped)
}

/// A node's metrics, for a [`prometheus_client`] registry: the families listed in the
/// README's "Operations" section, all named `plumcast_*` in base units (seconds, bytes),
/// counters with `_total` (added by the encoder).
///
/// The values are those of the last [`Metrics::refresh`]: call it before encoding the
/// registry (the admin endpoint does so on every scrape). Register it in an
/// application's own registry with [`Metrics::register`].
#[derive(Clone, Debug)]
pub struct Metrics {
    source: Source,
    last: Arc<Mutex<Option<NodeStats>>>,
}

impl Metrics {
    /// Metrics of `node` (a clone of its handle is kept).
    pub fn new(node: &Node) -> Self {
        Self { source: Source::Node(node.clone()), last: Arc::default() }
    }

    fn weak(ctl: mpsc::WeakSender<Control>) -> Self {
        Self { source: Source::Weak(ctl), last: Arc::default() }
    }

    /// Read the node's stats now; the next encoding reports them.
    ///
    /// # Errors
    /// [`Error::Stopped`] once the node has shut down.
    pub async fn refresh(&self) -> Result<(), Error> {
        let s = self.source.stats().await?;
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(s);
        Ok(())
    }

    /// Add these metrics to `registry` (as a collector: every family is encoded from the
    /// last refresh).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(self.clone()));
    }

    /// The stats of the last refresh.
    pub fn last(&self) -> Option<NodeStats> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// One counter value.
fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// One gauge value.
fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// A counter family with one label.
fn counters(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(&'static str, u64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, v) in values {
        let labels = [(label, *value)];
        ConstCounter::new(*v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge family with one label.
fn gauges(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(String, f64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value, v) in values {
        let labels = [(label, value.as_str())];
        ConstGauge::new(*v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The hop histogram in Prometheus form: cumulative buckets.
fn hops(e: &mut DescriptorEncoder, h: &HopHistogram) -> std::fmt::Result {
    const BOUNDS: [u32; 14] = [0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 31];
    let mut m: MetricEncoder = e.encode_descriptor(
        "plumcast_delivery_hops",
        "Hops from the origin of each delivered message (0: our own)",
        None,
        MetricType::Histogram,
    )?;
    // Per bucket, not cumulative: the encoder adds them up.
    let mut buckets = Vec::with_capacity(BOUNDS.len() + 1);
    let mut from = 0usize;
    for b in BOUNDS {
        let to = b as usize + 1;
        buckets.push((f64::from(b), h.counts.get(from..to).map_or(0, |c| c.iter().sum::<u64>())));
        from = to;
    }
    buckets.push((f64::INFINITY, h.counts.get(from..).map_or(0, |c| c.iter().sum::<u64>())));
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(h.sum as f64, h.count(), &buckets, None)
}

impl Collector for Metrics {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let Some(s) = self.last() else { return Ok(()) };
        let e = &mut e;
        let (b, m, n) = (&s.broadcast, &s.membership, &s.net);
        let g = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        gauge(e, "plumcast_active_view_peers", "Peers in the HyParView active view", g(s.active_view.len()))?;
        gauge(e, "plumcast_passive_view_peers", "Peers in the HyParView passive view", g(s.passive_view.len()))?;
        gauge(e, "plumcast_eager_peers", "Neighbours on our own broadcasts' tree (eager push)", g(s.eager))?;
        gauge(e, "plumcast_lazy_peers", "Neighbours off our own broadcasts' tree (lazy push)", g(s.lazy))?;
        counter(e, "plumcast_broadcasts", "Messages broadcast by this node", b.broadcasts)?;
        counter(e, "plumcast_deliveries", "Messages delivered to the application", b.delivered)?;
        counter(
            e,
            "plumcast_duplicate_payloads",
            "Payload copies received beyond the first (live RMR: this over deliveries)",
            b.duplicates,
        )?;
        let d = &s.neighbor_down;
        counters(
            e,
            "plumcast_neighbor_down",
            "Active neighbours lost, by reason",
            "reason",
            &[("evicted", d.evicted), ("failed", d.failed), ("left", d.left), ("misbehaved", d.misbehaved)],
        )?;
        hops(e, &s.delivery_hops)?;
        let kinds = MessageKind::ALL;
        let by_kind = |f: &dyn Fn(MessageKind) -> u64| -> Vec<(&'static str, u64)> {
            kinds.iter().map(|k| (k.as_str(), f(*k))).collect()
        };
        counters(
            e,
            "plumcast_messages_sent",
            "Messages queued for a peer, by type",
            "type",
            &by_kind(&|k| s.traffic.sent(k).messages),
        )?;
        counters(
            e,
            "plumcast_sent_bytes",
            "Bytes of the messages queued for a peer (frames), by type",
            "type",
            &by_kind(&|k| s.traffic.sent(k).bytes),
        )?;
        counters(
            e,
            "plumcast_messages_received",
            "Messages received, by type",
            "type",
            &by_kind(&|k| s.traffic.received(k).messages),
        )?;
        counters(
            e,
            "plumcast_received_bytes",
            "Bytes of the messages received (frames), by type",
            "type",
            &by_kind(&|k| s.traffic.received(k).bytes),
        )?;
        counter(e, "plumcast_grafts_sent", "Plumtree Grafts sent (optimisation Grafts included)", b.grafts_sent)?;
        counter(e, "plumcast_grafts_received", "Plumtree Grafts received", b.grafts_received)?;
        counter(e, "plumcast_prunes_sent", "Plumtree Prunes sent", b.prunes_sent)?;
        counter(e, "plumcast_prunes_received", "Plumtree Prunes received", b.prunes_received)?;
        counter(
            e,
            "plumcast_tree_optimizations",
            "Plumtree tree optimisations (SRDS 2007, section 3.8)",
            b.optimizations,
        )?;
        counter(e, "plumcast_parent_repairs", "Failed tree parents replaced at once", b.parent_repairs)?;
        counter(
            e,
            "plumcast_upstream_repairs",
            "Tree parents grafted at once because a Prune left an origin's tree with no eager link",
            b.upstream_repairs,
        )?;
        counter(
            e,
            "plumcast_grafts_overtaken",
            "Grafts for messages the tree delivered too, late (each raises the adaptive Graft timer)",
            b.grafts_overtaken,
        )?;
        ConstGauge::new(b.graft_timeout_us as f64 / 1e6).encode(e.encode_descriptor(
            "plumcast_graft_timeout_seconds",
            "The adaptive Graft timer 1 now: the wait after a missing message's first IHave",
            None,
            MetricType::Gauge,
        )?)?;
        let fd = &n.frames_dropped;
        counters(
            e,
            "plumcast_dropped",
            "Messages, frames and requests dropped, by reason",
            "reason",
            &[
                ("missing_table_full", b.missing_dropped),
                ("missing_over_share", b.missing_over_share),
                ("missing_expired", b.missing_expired),
                ("stale_incarnation", b.stale_incarnation),
                ("forged", b.forged),
                ("rejected", b.rejected),
                ("ignored", b.ignored),
                ("digest_over_rate", b.digests_ignored),
                ("graft_over_serves", b.grafts_refused),
                ("graft_not_cached", b.graft_misses),
                ("settled_forgotten", b.settled_forgotten),
                ("history_over_bound", b.history_over_bound),
                ("ordering_gap_skipped", b.ordering_gaps_skipped),
                ("store_error", b.store_errors),
                ("join_over_rate", m.joins_limited),
                ("forward_join_over_rate", m.forward_joins_limited),
                ("shuffle_over_rate", m.shuffles_limited),
                ("neighbor_request_over_pending", m.neighbor_requests_dropped),
                ("passive_view_full", m.passive_evictions),
                ("frame_connection_lost", fd.connection_lost),
                ("frame_dial_queue_full", fd.dial_queue_full),
                ("frame_dial_failed", fd.dial_failed),
                ("frame_unencodable", fd.unencodable),
                ("unroutable", n.unroutable),
                ("topology_over_rate", s.topology.over_rate),
                ("topology_malformed", s.topology.dropped),
                ("topology_forgotten", s.topology.forgotten),
            ],
        )?;
        counters(
            e,
            "plumcast_connections_refused",
            "Connections refused or closed in their setup, by reason",
            "reason",
            &[
                ("handshake", n.handshake_failures),
                ("wrong_cluster", n.cluster_mismatches),
                ("wrong_version", n.version_mismatches),
                ("wrong_signing", n.signing_mismatches),
                ("not_admitted", n.admission_refused),
                ("connection_limit", n.connections_refused),
            ],
        )?;
        counters(
            e,
            "plumcast_connections_closed",
            "Open connections closed by this node, by reason",
            "reason",
            &[
                ("malformed_frame", n.malformed_frames),
                ("oversized_frame", n.oversized_frames),
                ("slow_peer", n.slow_peer_disconnects),
                ("forged_message", n.forged_closed),
                ("rejected_message", n.rejected_closed),
                ("no_longer_admitted", n.admission_closed),
                ("idle", n.connections_idle_closed),
                ("duplicate", n.connections_retired),
            ],
        )?;
        counter(e, "plumcast_dials", "Connections dialed", n.connections_dialed)?;
        counter(e, "plumcast_dial_failures", "Dials that failed", n.dial_failures)?;
        counter(e, "plumcast_connections_accepted", "Connections accepted", n.connections_accepted)?;
        gauge(
            e,
            "plumcast_dials_pending",
            "Peers being dialed (frames waiting for the connection)",
            g(s.dials_pending),
        )?;
        gauge(e, "plumcast_connection_tasks", "Connection tasks running (handshakes and open links)", g(s.tasks))?;
        let peer = |p: &PeerInfo| p.id.short();
        let queued: Vec<(String, f64)> = s.neighbors.iter().map(|x| (peer(&x.peer), x.queued_frames as f64)).collect();
        gauges(e, "plumcast_queued_frames", "Frames queued for a neighbour and not yet written", "peer", &queued)?;
        let queued: Vec<(String, f64)> = s.neighbors.iter().map(|x| (peer(&x.peer), x.queued_bytes as f64)).collect();
        gauges(e, "plumcast_queued_bytes", "Bytes queued for a neighbour and not yet written", "peer", &queued)?;
        let phi: Vec<(String, f64)> = s.neighbors.iter().filter_map(|x| Some((peer(&x.peer), x.phi?))).collect();
        gauges(
            e,
            "plumcast_neighbor_phi",
            "The phi-accrual failure detector's suspicion of each neighbour",
            "peer",
            &phi,
        )?;
        counter(e, "plumcast_failures_detected", "Active neighbours declared failed", m.failures_detected)?;
        counter(e, "plumcast_phi_suspicions", "Of those, declared by the phi-accrual detector", m.phi_suspicions)?;
        counter(e, "plumcast_shuffles_sent", "HyParView Shuffles started", m.shuffles_sent)?;
        counter(e, "plumcast_shuffles_accepted", "HyParView Shuffles answered", m.shuffles_accepted)?;
        counter(e, "plumcast_promotions", "Passive peers promoted into the active view", m.promotions)?;
        counter(e, "plumcast_evictions", "Active neighbours evicted to make room", m.evictions)?;
        counter(
            e,
            "plumcast_anti_entropy_digests_sent",
            "Anti-entropy digests sent (exchanges and replies)",
            b.digests_sent,
        )?;
        counter(e, "plumcast_anti_entropy_digests_received", "Anti-entropy digests received", b.digests_received)?;
        counter(e, "plumcast_anti_entropy_repairs_sent", "Anti-entropy repair messages sent", b.repairs_sent)?;
        counter(e, "plumcast_anti_entropy_repaired_sent", "Messages sent in anti-entropy repairs", b.repaired_sent)?;
        counter(
            e,
            "plumcast_anti_entropy_repaired_received",
            "Messages received in anti-entropy repairs",
            b.repaired_received,
        )?;
        counter(e, "plumcast_anti_entropy_recovered", "Messages delivered through anti-entropy", b.recovered)?;
        counter(
            e,
            "plumcast_anti_entropy_history_adopted",
            "Version-vector keys a new node took as seen without their history",
            b.history_adopted,
        )?;
        gauge(e, "plumcast_missing_messages", "Messages announced (IHave) and not received yet", g(s.missing))?;
        gauge(e, "plumcast_cache_messages", "Payloads in the cache", g(s.cache.0))?;
        gauge(e, "plumcast_cache_bytes", "Payload bytes in the cache", g(s.cache.1))?;
        gauge(e, "plumcast_store_messages", "Messages in the message store", g(s.store.messages))?;
        gauge(e, "plumcast_store_bytes", "Payload bytes in the message store", g(s.store.bytes))?;
        gauge(e, "plumcast_topology_records", "Other nodes' topology records held", g(s.topology_records))?;
        gauge(
            e,
            "plumcast_version_vector_entries",
            "Entries (origin, incarnation) in the version vector",
            g(s.version_vector),
        )?;
        counter(
            e,
            "plumcast_signed_batches",
            "Signatures made (one per batch of our messages)",
            s.signatures.signed_batches,
        )?;
        counter(e, "plumcast_signature_verifications", "Ed25519 verifications run", s.signatures.verifications)?;
        counter(
            e,
            "plumcast_signature_cache_hits",
            "Proofs checked against a batch root verified before",
            s.signatures.cache_hits,
        )?;
        Ok(())
    }
}

/// The overlay as one node knows it (`GET /topology`): itself, its neighbours, and every
/// node whose topology record reached it.
#[derive(Clone, Debug, Serialize)]
pub struct Topology {
    /// This node's short id (the first 10 hex characters of its NodeId).
    pub me: String,
    /// Every node this node knows of, by short id.
    pub nodes: Vec<TopologyNode>,
}

/// One node of a [`Topology`].
#[derive(Clone, Debug, Serialize)]
pub struct TopologyNode {
    /// NodeId in hex.
    pub id: String,
    /// The first 10 hex characters of the id.
    pub short: String,
    /// Its advertised address, if known.
    pub addr: Option<String>,
    /// `"up"`; `"suspect"` (an active neighbour whose φ is at half the detector's
    /// threshold or more); `"down"` (its record was not renewed within the expiry, or
    /// this node declared it failed since its last record); `"passive"` (only in our
    /// passive view, no record yet); `"unknown"` (only named in others' views).
    pub health: String,
    /// Its active view (short ids), where known.
    pub active_view: Vec<String>,
    /// Its eager links (short ids), where known.
    pub eager: Vec<String>,
    /// How long ago its record was renewed, ms (`None` for us and nodes without one).
    pub age_ms: Option<u64>,
    /// The φ-accrual suspicion of this node (active neighbours only).
    pub phi: Option<f64>,
}

impl Topology {
    /// The topology from node `me`'s stats `s` and the records it holds; `phi_threshold`
    /// is the failure detector's threshold, `expiry` the records'.
    fn of(me: PeerInfo, s: &NodeStats, records: &[TopologyRecord], phi_threshold: f64, expiry: Duration) -> Self {
        let short = |id: &NodeId| id.short();
        let mut nodes: BTreeMap<NodeId, TopologyNode> = BTreeMap::new();
        let blank = |id: &NodeId, addr: Option<String>, health: &str| TopologyNode {
            id: id.to_hex(),
            short: short(id),
            addr,
            health: health.into(),
            active_view: Vec::new(),
            eager: Vec::new(),
            age_ms: None,
            phi: None,
        };
        for (r, age, failed) in records {
            let up = *age < expiry && !failed;
            let mut n = blank(&r.node.id, Some(r.node.addr.to_string()), if up { "up" } else { "down" });
            n.active_view = r.active_view.iter().map(short).collect();
            n.eager = r.eager.iter().map(short).collect();
            n.age_ms = Some(age.as_millis() as u64);
            nodes.insert(r.node.id, n);
        }
        for x in &s.neighbors {
            let n = nodes.entry(x.peer.id).or_insert_with(|| blank(&x.peer.id, Some(x.peer.addr.to_string()), "up"));
            let suspect = x.phi.is_some_and(|phi| phi >= phi_threshold / 2.0);
            n.health = if suspect { "suspect" } else { "up" }.into();
            n.phi = x.phi;
        }
        for p in &s.passive_view {
            nodes.entry(p.id).or_insert_with(|| blank(&p.id, Some(p.addr.to_string()), "passive"));
        }
        let mut mine = blank(&me.id, Some(me.addr.to_string()), "up");
        mine.active_view = s.active_view.iter().map(|p| short(&p.id)).collect();
        mine.eager = s.neighbors.iter().filter(|n| n.eager).map(|n| short(&n.peer.id)).collect();
        nodes.insert(me.id, mine);
        let named: Vec<NodeId> =
            records.iter().flat_map(|(r, _, _)| r.active_view.iter().chain(&r.eager).copied()).collect();
        for id in named {
            nodes.entry(id).or_insert_with(|| blank(&id, None, "unknown"));
        }
        Self { me: short(&me.id), nodes: nodes.into_values().collect() }
    }
}

#[derive(Clone)]
struct App {
    metrics: Metrics,
    registry: Arc<Registry>,
    me: PeerInfo,
    phi_threshold: f64,
    topology: TopologyConfig,
}

async fn get_metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Err(e) = app.metrics.refresh().await {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response();
    }
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &app.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the metrics: {e}\n")).into_response();
    }
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let content_type = if openmetrics { OPENMETRICS_TEXT } else { PROMETHEUS_TEXT };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn get_topology(State(app): State<App>) -> Response {
    let got = match app.metrics.source.stats().await {
        Ok(s) => app.metrics.source.topology().await.map(|r| (s, r)),
        Err(e) => Err(e),
    };
    match got {
        Ok((s, records)) => {
            // The expiry stretches with the cluster as the interval does.
            let expiry = app.topology.expiry_for(records.len() + 1);
            let t = Topology::of(app.me, &s, &records, app.phi_threshold, expiry);
            match serde_json::to_string(&t) {
                Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
            }
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

async fn get_page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("admin_page.html")).into_response()
}

/// Bind the admin endpoint on `addr` and serve it until `stopped` resolves (the actor
/// drops its sender when it ends).
///
/// # Errors
/// [`Error::Config`] naming the address if it cannot be bound.
pub(crate) async fn serve(
    addr: SocketAddr,
    ctl: &mpsc::Sender<Control>,
    me: PeerInfo,
    phi_threshold: f64,
    topology: TopologyConfig,
    stopped: oneshot::Receiver<()>,
) -> Result<SocketAddr, Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("cannot bind the admin endpoint on {addr}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| Error::Config(format!("admin endpoint {addr}: {e}")))?;
    let metrics = Metrics::weak(ctl.downgrade());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let app = App { metrics, registry: Arc::new(registry), me, phi_threshold, topology };
    let router = axum::Router::new()
        .route("/metrics", get(get_metrics))
        .route("/topology", get(get_topology))
        .route("/", get(get_page))
        .with_state(app);
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stopped.await;
        };
        if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stopped).await {
            tracing::warn!(error = %e, "the admin endpoint stopped");
        }
    });
    tracing::info!(addr = %bound, "admin endpoint: /metrics, /topology, /");
    Ok(bound)
}
