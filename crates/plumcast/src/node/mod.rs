//! The `Node`: [`proto`](crate::proto) driven by one tokio actor over QUIC.
//!
//! One actor task owns the protocol state, the connection table and the timers; each
//! connection has one task that reads frames (decoding them off the actor) and writes the
//! frames the actor queued for it. The actor never awaits a per-peer queue; the only thing
//! it awaits is the application sink, so a slow application slows reading from peers and
//! QUIC flow control pushes back to the senders, which then stop accepting broadcasts.

mod actor;
#[cfg(feature = "admin")]
pub mod admin;
pub mod config;
mod cursor;
#[cfg(feature = "store")]
mod durable;
/// Without the `store` feature: a data dir is refused at spawn.
#[cfg(not(feature = "store"))]
#[path = "durable_off.rs"]
mod durable;
mod error;
mod event;
mod links;
pub mod sign;
mod stats;
mod timers;
mod wire;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

pub use config::NodeConfig;
pub use cursor::{Cursor, Page};
pub use error::Error;
pub use event::{Candidate, Delivered, Event, Events, Exchange, MessageHandler, ValidatorFn};
pub use plumcast_transport::{Identity, NodeId, PeerInfo, TransportConfig, TransportError};
pub use proto::broadcast::Validation;
pub(crate) fn decode_frame(body: Bytes) -> Result<proto::Message<PeerInfo>, TransportError> {
    wire::decode(body).map(|d| d.message)
}

pub use stats::{
    Count, FrameDrops, HopHistogram, MessageKind, NeighborDowns, NeighborStats, NetStats, NodeStats, SignStats,
    StoreStats, Traffic,
};

use crate::proto::{self, MessageId};

impl proto::Peer for PeerInfo {
    type Id = NodeId;
    fn id(&self) -> NodeId {
        self.id
    }
}

/// What [`Node::broadcast`] accepts: owned bytes (`Bytes`, `Vec<u8>`, `String`) are taken
/// as they are, borrowed ones (`&[u8]`, `&str`, `b"..."`) copied once.
pub trait Payload {
    /// The payload as `Bytes`.
    fn into_bytes(self) -> Bytes;
}

impl Payload for Bytes {
    fn into_bytes(self) -> Bytes {
        self
    }
}

impl Payload for Vec<u8> {
    fn into_bytes(self) -> Bytes {
        Bytes::from(self)
    }
}

impl Payload for String {
    fn into_bytes(self) -> Bytes {
        Bytes::from(self)
    }
}

impl Payload for &[u8] {
    fn into_bytes(self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

impl<const N: usize> Payload for &[u8; N] {
    fn into_bytes(self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

impl Payload for &str {
    fn into_bytes(self) -> Bytes {
        Bytes::copy_from_slice(self.as_bytes())
    }
}

impl Payload for &Bytes {
    fn into_bytes(self) -> Bytes {
        self.clone()
    }
}

impl Payload for &Vec<u8> {
    fn into_bytes(self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

impl Payload for &String {
    fn into_bytes(self) -> Bytes {
        Bytes::copy_from_slice(self.as_bytes())
    }
}

/// Control requests to the actor.
const CONTROL_QUEUE: usize = 64;

/// How often an allow-list file ([`NodeBuilder::allow_file`]) is read again: 5 s, so a
/// revoked node is out within seconds without a signal.
pub const ADMISSION_POLL: Duration = Duration::from_secs(5);

/// The admission of the ids given and those of the file (`None` and `None`: open).
pub(crate) fn admission_of(
    allow: Option<&std::collections::BTreeSet<NodeId>>,
    file: Option<&Path>,
) -> Result<plumcast_transport::Admission, String> {
    let ids = allowed_ids(allow, file)?;
    let a = plumcast_transport::Admission::open();
    a.set(ids);
    Ok(a)
}

/// The allow-list of the ids given and those of the file (`None`: open).
pub(crate) fn allowed_ids(
    allow: Option<&std::collections::BTreeSet<NodeId>>,
    file: Option<&Path>,
) -> Result<Option<std::collections::BTreeSet<NodeId>>, String> {
    if allow.is_none() && file.is_none() {
        return Ok(None);
    }
    let mut ids = allow.cloned().unwrap_or_default();
    if let Some(f) = file {
        ids.extend(plumcast_transport::read_allow_file(f).map_err(|e| e.to_string())?);
    }
    Ok(Some(ids))
}

/// Most messages one [`Node::read_after`] returns: the actor reads them from the store
/// while it serves nothing else, so one call must not hold it long (not measured yet:
/// a bound chosen, not derived).
pub const READ_MAX: usize = 10_000;

/// Builds a [`Node`].
///
/// ```no_run
/// # async fn f() -> Result<(), plumcast::Error> {
/// let (node, mut events) = plumcast::Node::builder()
///     .bind("127.0.0.1:7000".parse().unwrap())
///     .bootstrap("127.0.0.1:7001")
///     .spawn()
///     .await?;
/// node.broadcast(&b"hello"[..]).await?;
/// # Ok(()) }
/// ```
#[derive(Default)]
#[must_use = "a builder does nothing until `spawn` or `spawn_with_handler`"]
pub struct NodeBuilder {
    config: NodeConfig,
    identity: Option<Identity>,
    rng_seed: Option<u64>,
    data_dir: Option<std::path::PathBuf>,
    allow: Option<std::collections::BTreeSet<NodeId>>,
    allow_file: Option<std::path::PathBuf>,
    certificate_file: Option<std::path::PathBuf>,
    cluster_ca_file: Option<std::path::PathBuf>,
    validator: Option<ValidatorFn>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("config", &self.config)
            .field("identity", &self.identity)
            .field("data_dir", &self.data_dir)
            .field("allow", &self.allow)
            .field("allow_file", &self.allow_file)
            .field("certificate_file", &self.certificate_file)
            .field("cluster_ca_file", &self.cluster_ca_file)
            .field("validator", &self.validator.is_some())
            .finish_non_exhaustive()
    }
}

impl NodeBuilder {
    /// Start from a whole configuration.
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }
    /// UDP address to bind.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.config.bind = addr;
        self
    }
    /// Address to advertise to other nodes.
    pub fn advertise(mut self, addr: SocketAddr) -> Self {
        self.config.advertise = Some(addr);
        self
    }
    /// Add a bootstrap contact: a `SocketAddr` (say another node's [`Node::addr`]), or
    /// `"IP:PORT"` / `"HOST:PORT"` as text.
    pub fn bootstrap(mut self, contact: impl ToString) -> Self {
        self.config.bootstrap.push(contact.to_string());
        self
    }
    /// Cluster name.
    pub fn cluster(mut self, name: impl Into<String>) -> Self {
        self.config.cluster = name.into();
        self
    }
    /// Protocol parameters, both layers: a preset ([`proto::Config::lan`], the default;
    /// [`proto::Config::wan`]; [`proto::Config::local`] for many nodes on one machine),
    /// or a preset with fields changed (`proto::Config` and its parts are plain data).
    /// Call it before [`NodeBuilder::deliver_own`] and [`NodeBuilder::tree`], which
    /// change the protocol parameters set so far.
    pub fn protocol(mut self, protocol: proto::Config) -> Self {
        self.config.protocol = protocol;
        self
    }
    /// One spanning tree per origin ([`proto::Tree::PerOrigin`], the default: faster
    /// with many senders, docs/performance.md) or one shared tree as in the Plumtree
    /// paper ([`proto::Tree::Shared`]).
    pub fn tree(mut self, tree: proto::Tree) -> Self {
        self.config.protocol.broadcast.tree = tree;
        self
    }
    /// Delivery order: as messages arrive ([`proto::Ordering::None`], the default: lowest
    /// latency) or FIFO per origin and incarnation ([`proto::Ordering::PerOrigin`]: a
    /// message waits for the earlier ones of its origin, at most
    /// [`proto::broadcast::Config::ordering_max_wait`], 60 s by default).
    pub fn ordering(mut self, ordering: proto::Ordering) -> Self {
        self.config.protocol.broadcast.ordering = ordering;
        self
    }
    /// Whether this node, joining for the first time, is repaired with the history the
    /// cluster keeps (within retention, [`proto::broadcast::Retention`]); default `false`:
    /// it gets messages from its join on. A node restarted from a data dir always
    /// catches up on what it missed.
    pub fn replay_history(mut self, yes: bool) -> Self {
        self.config.protocol.broadcast.replay_history = yes;
        self
    }
    /// QUIC parameters (keep-alive, idle timeout, frame size, handshake timeout).
    pub fn transport(mut self, transport: TransportConfig) -> Self {
        self.config.transport = transport;
        self
    }
    /// Largest payload, bytes. Default [`config::MAX_PAYLOAD_SIZE`] (64 KiB); it must
    /// leave 1 KiB of the transport's frame size for headers.
    pub fn max_payload_size(mut self, bytes: usize) -> Self {
        self.config.max_payload_size = bytes;
        self
    }
    /// Events queued for the application before the node stops reading from its peers.
    /// Default [`config::APP_QUEUE`] (4,096).
    pub fn app_queue(mut self, events: usize) -> Self {
        self.config.app_queue = events;
        self
    }
    /// Broadcasts queued before [`Node::broadcast`] waits and [`Node::try_broadcast`]
    /// returns [`Error::Busy`]. Default [`config::BROADCAST_QUEUE`] (128).
    pub fn broadcast_queue(mut self, broadcasts: usize) -> Self {
        self.config.broadcast_queue = broadcasts;
        self
    }
    /// How long [`Node::shutdown`] waits for the Disconnects to be acknowledged.
    /// Default [`config::SHUTDOWN_LINGER`] (2 s).
    pub fn shutdown_linger(mut self, linger: Duration) -> Self {
        self.config.shutdown_linger = linger;
        self
    }
    /// Use this identity (default: a fresh one).
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }
    /// Load the identity from a PKCS#8 key file, creating it if absent.
    ///
    /// # Errors
    /// [`Error::Transport`] if the file exists but is not a key, or cannot be written.
    pub fn identity_file(mut self, path: &Path) -> Result<Self, Error> {
        self.identity = Some(Identity::load_or_create(path)?);
        Ok(self)
    }
    /// Deliver this node's own broadcasts to itself too (with hops 0). Default `false`:
    /// the origin gets no callback for its own messages.
    pub fn deliver_own(mut self, yes: bool) -> Self {
        self.config.protocol.broadcast.deliver_own = yes;
        self
    }
    /// Keep the node's state in `dir` (created if missing; its parent must exist): the
    /// identity (`identity.key`, unless [`NodeBuilder::identity`] gives the same key),
    /// the message store (redb), what was delivered, the last views and the last
    /// incarnation. A node restarted on the same dir rejoins through the peers it knew
    /// when no bootstrap contact is given, catches up by anti-entropy, and never delivers
    /// again what the application had taken (an event is recorded when it is taken from
    /// [`Events`] or the handler returns; up to 100 ms of records can be lost to a
    /// SIGKILL, and those messages are delivered again: at-least-once). With a data dir,
    /// [`Node::broadcast`] returns once the message is on disk (fsync).
    ///
    /// `spawn` fails with [`Error::DataDir`] if another process uses the dir, if its
    /// schema version is unknown, or if its identity differs from the one given.
    pub fn data_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }
    /// Admit only these peers (an allow-list; repeatable, the ids add up): a peer whose
    /// `NodeId` is not listed fails the TLS handshake on either side, before any plumcast
    /// frame, so it learns nothing of the overlay; it is counted in
    /// [`NetStats::admission_refused`]. Default: open (every peer that proves a key).
    pub fn allow(mut self, ids: impl IntoIterator<Item = NodeId>) -> Self {
        self.allow.get_or_insert_default().extend(ids);
        self
    }

    /// Admit only the ids in `path` (one a line, `#` comments; see
    /// [`plumcast_transport::read_allow_file`]), together with those of
    /// [`NodeBuilder::allow`]. The file is read again every [`ADMISSION_POLL`] and on
    /// [`Node::reload_admission`]; links to peers no longer admitted are closed and
    /// counted ([`NetStats::admission_closed`]). `spawn` fails with [`Error::Config`] if
    /// the file cannot be read or a line is not an id.
    pub fn allow_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.allow_file = Some(path.into());
        self
    }

    /// Present the certificate in `path` (DER, issued by a cluster CA for this node's key:
    /// `plumcast ca issue`) instead of the self-signed one. `spawn` fails with
    /// [`Error::Transport`] if it cannot be read or certifies another key.
    pub fn certificate_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.certificate_file = Some(path.into());
        self
    }

    /// Accept only peers whose certificate chains to the cluster CA certificate in `path`
    /// (DER, `plumcast ca init` writes it), on both sides of every connection (webpki:
    /// signature, basicConstraints, serverAuth / clientAuth, the fixed server name).
    /// Refusals are counted in [`NetStats::admission_refused`]; an allow-list applies on
    /// top. Read again like the allow-list file ([`Node::reload_admission`]). Default: no
    /// CA (every peer that proves a key).
    pub fn cluster_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.cluster_ca_file = Some(path.into());
        self
    }

    /// Most connections at once, counting handshakes in progress (default
    /// [`config::MAX_CONNECTIONS`]; see [`NodeConfig::max_connections`]).
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.config.max_connections = connections.max(1);
        self
    }

    /// Serve the admin HTTP endpoint on `addr` (see [`NodeConfig::http`]; port 0 picks
    /// one, [`Node::http_addr`] tells which).
    pub fn http(mut self, addr: SocketAddr) -> Self {
        self.config.http = Some(addr);
        self
    }

    /// Sign our messages and accept only signed ones (default true; see
    /// [`NodeConfig::sign_messages`]).
    pub fn sign_messages(mut self, yes: bool) -> Self {
        self.config.sign_messages = yes;
        self
    }

    /// Check every message's content before it is stored, delivered or forwarded, once,
    /// after its signature: `validator` returns [`Validation::Accept`],
    /// [`Validation::Reject`] (dropped, counted in `broadcast.rejected`, the neighbour that
    /// sent it disconnected) or [`Validation::Ignore`] (dropped, counted in
    /// `broadcast.ignored`). A rejected or ignored message is settled: anti-entropy does
    /// not ask for it again and per-origin ordering does not wait for it. Works with the
    /// event stream and with a handler alike. It runs on the node's protocol loop: keep it
    /// quick and never block in it.
    pub fn validator(mut self, validator: impl Fn(&Candidate<'_>) -> Validation + Send + Sync + 'static) -> Self {
        self.validator = Some(Arc::new(validator));
        self
    }

    /// Seed the protocol RNG (deterministic choices; tests). Default: from the OS.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.rng_seed = Some(seed);
        self
    }

    /// Start the node; events come through the returned stream.
    ///
    /// # Errors
    /// [`Error::Transport`] if the socket cannot be bound or TLS set up;
    /// [`Error::Config`] for an invalid configuration.
    pub async fn spawn(self) -> Result<(Node, Events), Error> {
        let (node, rx, recorder) = self.start().await?;
        Ok((node, Events { rx, recorder }))
    }

    /// Start the node, calling `handler` on a dedicated thread for every event.
    ///
    /// # Errors
    /// As [`NodeBuilder::spawn`].
    pub async fn spawn_with_handler<H: MessageHandler>(self, mut handler: H) -> Result<Node, Error> {
        let (node, mut rx, recorder) = self.start().await?;
        let thread = std::thread::Builder::new()
            .name(format!("plumcast-handler-{}", node.id().short()))
            .spawn(move || {
                while let Some(ev) = rx.blocking_recv() {
                    match ev {
                        Event::Delivered(m) => {
                            handler.on_message(&m);
                            // Recorded once the handler returned (at-least-once).
                            if let Some(r) = &recorder {
                                r.delivered(m.origin, m.incarnation, m.seq);
                            }
                        }
                        Event::NeighborUp(p) => handler.on_neighbor_up(&p),
                        Event::NeighborDown { peer, reason } => handler.on_neighbor_down(&peer, reason),
                        Event::Exchanged(x) => handler.on_exchange(&x),
                    }
                }
            })
            .map_err(|e| Error::Config(format!("cannot start the handler thread: {e}")))?;
        *node.running.handler_thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(thread);
        Ok(node)
    }

    async fn start(self) -> Result<(Node, mpsc::Receiver<Event>, Option<durable::Recorder>), Error> {
        let mut config = self.config;
        if config.cluster.is_empty() {
            return Err(Error::Config("the cluster name is empty".into()));
        }
        for contact in &config.bootstrap {
            config::check_contact(contact).map_err(Error::Config)?;
        }
        if config.max_payload_size + 1024 > config.transport.max_frame_size {
            return Err(Error::Config(format!(
                "max_payload_size {} does not fit in max_frame_size {} (leave 1 KiB for headers)",
                config.max_payload_size, config.transport.max_frame_size
            )));
        }
        let data = match &self.data_dir {
            Some(dir) => Some(durable::DataDir::open(dir)?),
            None => None,
        };
        let identity = match (&data, self.identity) {
            (Some(d), given) => d.identity(given)?,
            (None, Some(i)) => i,
            (None, None) => Identity::generate()?,
        };
        if let Some(d) = &data
            && config.bootstrap.is_empty()
        {
            // Rejoin through the peers of the last views.
            config.bootstrap = d.peers()?.iter().map(ToString::to_string).collect();
            tracing::info!(peers = config.bootstrap.len(), "rejoining through the peers kept in the data dir");
        }
        let identity = match &self.certificate_file {
            Some(p) => identity.with_certificate(plumcast_transport::ca::load_certificate(p)?)?,
            None => identity,
        };
        let admission = admission_of(self.allow.as_ref(), self.allow_file.as_deref()).map_err(Error::Config)?;
        if let Some(p) = &self.cluster_ca_file {
            admission.set_ca(Some(plumcast_transport::ca::load_certificate(p)?))?;
        }
        let (endpoint, faults) = plumcast_transport::bind(config.bind, &identity, &config.transport, &admission)?;
        #[cfg(not(feature = "test-util"))]
        drop(faults);
        let local = endpoint.local_addr().map_err(TransportError::Io)?;
        let me = PeerInfo { id: identity.node_id(), addr: config.advertise.unwrap_or(local) };
        let (incarnation, lived) = match &data {
            Some(d) => d.next_incarnation()?,
            None => (SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0), false),
        };
        let recorder = data.as_ref().map(durable::DataDir::recorder);
        let restored = match data {
            Some(d) => {
                let store = d.store(me.id, config.protocol.broadcast.retention)?;
                let (delivered, undelivered) = d.restore()?;
                let counters = d.counters()?;
                Some(actor::Restored { dir: Arc::new(d), store, delivered, undelivered, counters, lived })
            }
            None => None,
        };
        let signatures = if config.sign_messages {
            let counters = Arc::new(sign::SignCounters::default());
            Some((sign::Signatures::with_counters(&identity, counters.clone()).map_err(Error::Config)?, counters))
        } else {
            None
        };
        let seed = self.rng_seed.unwrap_or_else(|| rand::RngCore::next_u64(&mut rand::rngs::OsRng));
        let (bcast_tx, bcast_rx) = mpsc::channel(config.broadcast_queue.max(1));
        let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
        let (app_tx, app_rx) = mpsc::channel(config.app_queue.max(1));
        let (reach_tx, reach_rx) = watch::channel(Reach::default());
        let max_payload = config.max_payload_size;
        // The admin endpoint ends when the actor drops `admin_guard` (its end).
        let (admin_guard, admin_stopped) = oneshot::channel::<()>();
        let http_addr = match config.http {
            #[cfg(feature = "admin")]
            Some(addr) => {
                let phi = config.protocol.membership.phi_threshold;
                let topology = config.protocol.topology;
                Some(admin::serve(addr, &ctl_tx, me, phi, topology, admin_stopped).await?)
            }
            #[cfg(not(feature = "admin"))]
            Some(addr) => {
                drop(admin_stopped);
                return Err(Error::Config(format!(
                    "the admin endpoint ({addr}) needs plumcast built with the `admin` feature"
                )));
            }
            None => {
                drop(admin_stopped);
                None
            }
        };
        let actor = actor::Actor::new(actor::ActorInit {
            config,
            identity,
            me,
            incarnation,
            seed,
            endpoint,
            bcast_rx,
            ctl_rx,
            app_tx,
            reach_tx,
            restored,
            validator: self.validator,
            signatures,
            admission: actor::AdmissionInit {
                admission,
                allow: self.allow,
                allow_file: self.allow_file,
                certificate_file: self.certificate_file,
                cluster_ca_file: self.cluster_ca_file,
            },
        });
        let span = tracing::info_span!("node", node = %me.id.short());
        let task = tokio::spawn(tracing::Instrument::instrument(
            async move {
                actor.run().await;
                drop(admin_guard);
            },
            span,
        ));
        let node = Node {
            me,
            incarnation,
            max_payload,
            http_addr,
            bcast_tx,
            ctl_tx,
            reach_rx,
            #[cfg(feature = "test-util")]
            faults,
            running: Arc::new(Running { task: Mutex::new(Some(task)), handler_thread: Mutex::new(None) }),
        };
        Ok((node, app_rx, recorder))
    }
}

/// A node's topology record as this node holds it, and how long ago it was renewed.
/// A node's topology record as this node holds it, how long ago it was renewed, and
/// whether this node declared that node failed since.
pub type TopologyRecord = (proto::topology::Record<PeerInfo>, std::time::Duration, bool);

/// What the actor publishes to the handles: the active view's size and the last dial
/// failure (for [`Node::wait_for_neighbors`]'s error).
#[derive(Clone, Debug, Default)]
pub(crate) struct Reach {
    active: usize,
    last_dial_failure: Option<String>,
}

pub(crate) enum Control {
    Neighbors(oneshot::Sender<Vec<PeerInfo>>),
    Exchange(NodeId, oneshot::Sender<Result<Exchange, Error>>),
    ReloadAdmission(oneshot::Sender<Result<usize, Error>>),
    ReadAfter(Cursor, usize, oneshot::Sender<Page>),
    VersionVector(oneshot::Sender<Cursor>),
    Stats(oneshot::Sender<NodeStats>),
    Topology(oneshot::Sender<Vec<TopologyRecord>>),
    Shutdown(oneshot::Sender<()>),
}

pub(crate) struct BroadcastCmd {
    payload: Bytes,
    reply: oneshot::Sender<MessageId>,
}

/// A handle to a running plumcast node.
///
/// `Node` is a cheap handle: clone it to share the node between tasks (each clone holds
/// two channel senders and an `Arc`); every clone talks to the same node. Any clone may
/// call [`Node::shutdown`]; after it, every clone's calls return [`Error::Stopped`].
///
/// Dropping the **last** clone without `shutdown` still leaves the cluster gracefully
/// (Disconnect to the neighbours) in the background, but nothing waits for it: queued
/// frames may be lost and the handler thread may still be running when `drop` returns.
/// Call `shutdown` to flush and wait. Dropping any other clone does nothing.
#[derive(Clone, Debug)]
pub struct Node {
    me: PeerInfo,
    incarnation: u64,
    max_payload: usize,
    http_addr: Option<SocketAddr>,
    bcast_tx: mpsc::Sender<BroadcastCmd>,
    ctl_tx: mpsc::Sender<Control>,
    reach_rx: watch::Receiver<Reach>,
    #[cfg(feature = "test-util")]
    faults: Arc<plumcast_transport::Faults>,
    running: Arc<Running>,
}

/// The node's actor task and handler thread, shared by the clones; `shutdown` takes
/// them to wait for their end.
#[derive(Debug)]
struct Running {
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    handler_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Running {
    fn take_task(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.task.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn take_handler_thread(&self) -> Option<std::thread::JoinHandle<()>> {
        self.handler_thread.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl Node {
    /// A builder with default configuration.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me.id
    }

    /// The address other nodes dial.
    pub fn addr(&self) -> SocketAddr {
        self.me.addr
    }

    /// The admin endpoint's bound address, if [`NodeBuilder::http`] asked for one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Id and address.
    pub fn info(&self) -> PeerInfo {
        self.me
    }

    /// This node's incarnation (start time, ms since the Unix epoch).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Broadcast `payload` to every live node; waits while the node is congested
    /// (backpressure). Returns the message id once the message is on its way: numbered,
    /// and, with signed messages and no data dir, staged for its batch's signature, which
    /// is made within 1 ms (at once when broadcasts are rarer than one per ms); with a
    /// data dir, once it is signed, stored and fsynced.
    ///
    /// # Errors
    /// [`Error::PayloadTooLarge`], or [`Error::Stopped`] if the node has stopped.
    pub async fn broadcast(&self, payload: impl Payload) -> Result<MessageId, Error> {
        let payload = self.check(payload.into_bytes())?;
        let (reply, rx) = oneshot::channel();
        self.bcast_tx.send(BroadcastCmd { payload, reply }).await.map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Like [`Node::broadcast`], but returns [`Error::Busy`] at once instead of waiting
    /// for queue capacity.
    ///
    /// # Errors
    /// [`Error::Busy`], [`Error::PayloadTooLarge`], [`Error::Stopped`].
    pub async fn try_broadcast(&self, payload: impl Payload) -> Result<MessageId, Error> {
        let payload = self.check(payload.into_bytes())?;
        let (reply, rx) = oneshot::channel();
        self.bcast_tx.try_send(BroadcastCmd { payload, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::Busy,
            mpsc::error::TrySendError::Closed(_) => Error::Stopped,
        })?;
        rx.await.map_err(|_| Error::Stopped)
    }

    fn check(&self, payload: Bytes) -> Result<Bytes, Error> {
        if payload.len() > self.max_payload {
            return Err(Error::PayloadTooLarge { size: payload.len(), max: self.max_payload });
        }
        Ok(payload)
    }

    /// The active view.
    ///
    /// # Errors
    /// [`Error::Stopped`].
    pub async fn neighbors(&self) -> Result<Vec<PeerInfo>, Error> {
        let (tx, rx) = oneshot::channel();
        self.ctl_tx.send(Control::Neighbors(tx)).await.map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Wait until the active view holds at least `n` peers; returns the active view.
    ///
    /// # Errors
    /// [`Error::NoNeighbors`] after `timeout`, with why the last dial failed (an
    /// unresolvable or unreachable bootstrap contact, a node of another cluster);
    /// [`Error::Stopped`].
    pub async fn wait_for_neighbors(&self, n: usize, timeout: Duration) -> Result<Vec<PeerInfo>, Error> {
        let mut rx = self.reach_rx.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|r| r.active >= n)).await {
            Ok(Ok(_)) => self.neighbors().await,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => {
                let reach = self.reach_rx.borrow();
                Err(Error::NoNeighbors {
                    waited: timeout,
                    wanted: n,
                    have: reach.active,
                    last_dial_failure: reach.last_dial_failure.clone(),
                })
            }
        }
    }

    /// Views and counters.
    ///
    /// # Errors
    /// [`Error::Stopped`].
    pub async fn stats(&self) -> Result<NodeStats, Error> {
        let (tx, rx) = oneshot::channel();
        self.ctl_tx.send(Control::Stats(tx)).await.map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// The other nodes' topology records this node holds (their active views and eager
    /// links, announced through the overlay; see [`proto::topology`]), each with how long
    /// ago it was renewed.
    ///
    /// # Errors
    /// [`Error::Stopped`] if the node has shut down.
    pub async fn topology_records(&self) -> Result<Vec<TopologyRecord>, Error> {
        let (tx, rx) = oneshot::channel();
        self.ctl_tx.send(Control::Topology(tx)).await.map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Run an anti-entropy exchange with neighbour `peer` now and wait for it to end: the
    /// whole version vector goes to `peer` in pieces of at most
    /// [`proto::broadcast::Config::anti_entropy_max_heads`] heads, `peer` answers each with
    /// what this node lacks (delivered as recovered) and asks for what it lacks itself. The
    /// result says what moved each way and how long it took; `complete` is false if `peer`
    /// went down or did not answer within two anti-entropy intervals (10 s by default).
    /// Every exchange, periodic ones included, is also reported as [`Event::Exchanged`].
    ///
    /// # Errors
    /// [`Error::Exchange`] when `peer` is not a neighbour or anti-entropy is off;
    /// [`Error::Stopped`].
    pub async fn exchange(&self, peer: NodeId) -> Result<Exchange, Error> {
        let (tx, rx) = oneshot::channel();
        self.ctl_tx.send(Control::Exchange(peer, tx)).await.map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Up to `max` messages (at most [`READ_MAX`]) of the store after `cursor`: what was
    /// broadcast since the application's last position, for an application that resumes
    /// after a restart (keep [`Page::cursor`] with the application's state). Oldest first
    /// per origin and incarnation; within the store's retention
    /// ([`proto::broadcast::Config::retention`]); with a data dir the store survives
    /// restarts. A message that arrives later with a seq the cursor already covers (it was
    /// missing when the page was read) is not returned: it reaches the application live.
    ///
    /// # Errors
    /// [`Error::Stopped`].
    pub async fn read_after(&self, cursor: &Cursor, max: usize) -> Result<Page, Error> {
        let (tx, rx) = oneshot::channel();
        let max = max.clamp(1, READ_MAX);
        self.ctl_tx.send(Control::ReadAfter(cursor.clone(), max, tx)).await.map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// This node's version vector as a [`Cursor`]: every message it has seen is covered
    /// (per origin and incarnation, up to the highest seq with none missing below it).
    ///
    /// # Errors
    /// [`Error::Stopped`].
    pub async fn version_vector(&self) -> Result<Cursor, Error> {
        let (tx, rx) = oneshot::channel();
        self.ctl_tx.send(Control::VersionVector(tx)).await.map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Read the allow-list file ([`NodeBuilder::allow_file`]), the cluster CA certificate
    /// ([`NodeBuilder::cluster_ca_file`]) and our own certificate
    /// ([`NodeBuilder::certificate_file`]) again now (the node also does every
    /// [`ADMISSION_POLL`]; `plumcast node` does on SIGHUP), and close the links to peers
    /// that no longer pass. Returns the number of ids the allow-list admits (0: open).
    ///
    /// # Errors
    /// [`Error::Config`] if the file cannot be read or has a bad line (the list in force
    /// is kept); [`Error::Stopped`].
    pub async fn reload_admission(&self) -> Result<usize, Error> {
        let (tx, rx) = oneshot::channel();
        self.ctl_tx.send(Control::ReloadAdmission(tx)).await.map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Leave gracefully: Disconnect to every neighbour, flush queued frames (bounded by
    /// [`NodeConfig::shutdown_linger`]), close the endpoint, drain all tasks and let the
    /// handler finish the events already delivered. Any clone may call it; it returns
    /// once the node has stopped.
    ///
    /// # Errors
    /// [`Error::Stopped`] if the node had already stopped (or another clone's
    /// `shutdown` stopped it first).
    pub async fn shutdown(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        let sent = self.ctl_tx.send(Control::Shutdown(tx)).await.is_ok();
        let acked = sent && rx.await.is_ok();
        if let Some(task) = self.running.take_task() {
            let _ = task.await;
        }
        if let Some(t) = self.running.take_handler_thread() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        if acked { Ok(()) } else { Err(Error::Stopped) }
    }

    #[cfg(feature = "test-util")]
    /// Crash abruptly, for tests and the demo: the socket is black-holed (no
    /// CONNECTION_CLOSE reaches anyone) and every task is aborted. Peers notice only
    /// through their failure detectors.
    pub fn crash(&self) {
        self.faults.black_hole();
        if let Some(task) = self.running.take_task() {
            task.abort();
        }
    }

    #[cfg(feature = "test-util")]
    /// The fault switches of this node's socket (black hole, partitions), for tests.
    pub fn faults(&self) -> &Arc<plumcast_transport::Faults> {
        &self.faults
    }
}
