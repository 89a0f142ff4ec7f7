//! A UDP socket wrapper for fault injection: black hole (crash), partitions (blocked
//! destinations), and per-destination loss and delay.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rand::{Rng, SeedableRng};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Switches shared with a [`FaultySocket`].
#[derive(Debug, Default)]
pub struct Faults {
    black_hole: AtomicBool,
    dropped: AtomicU64,
    /// Destinations whose datagrams are dropped (a partition); empty almost always.
    blocked: RwLock<HashSet<SocketAddr>>,
    any_blocked: AtomicBool,
    /// Loss probability and delay per destination (`None` key: every destination).
    impaired: RwLock<HashMap<Option<SocketAddr>, Impairment>>,
    any_impaired: AtomicBool,
    /// Datagrams sent late (delayed).
    delayed: AtomicU64,
    rng: Mutex<Option<rand_chacha::ChaCha8Rng>>,
}

/// Loss and delay on the way to one destination.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Impairment {
    /// Probability in [0, 1] that a datagram is dropped.
    pub loss: f64,
    /// Extra one-way delay before a datagram is sent.
    pub delay: Duration,
}

impl Faults {
    /// From now on drop every datagram in both directions, silently: to the rest of the
    /// cluster the node vanishes as if its machine lost power.
    pub fn black_hole(&self) {
        self.black_hole.store(true, Ordering::SeqCst);
    }

    /// Whether the socket is black-holed.
    pub fn is_black_holed(&self) -> bool {
        self.black_hole.load(Ordering::SeqCst)
    }

    /// Drop every datagram this socket sends to one of `peers` from now on (until
    /// [`Faults::unblock_all`]). Blocking each side's addresses on the other side's nodes
    /// is a network partition: connections across it time out, nothing is refused.
    pub fn block(&self, peers: impl IntoIterator<Item = SocketAddr>) {
        let mut b = self.blocked.write().unwrap_or_else(|e| e.into_inner());
        b.extend(peers);
        self.any_blocked.store(!b.is_empty(), Ordering::SeqCst);
    }

    /// Heal: stop blocking any destination.
    pub fn unblock_all(&self) {
        self.blocked.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.any_blocked.store(false, Ordering::SeqCst);
    }

    fn is_blocked(&self, to: &SocketAddr) -> bool {
        self.any_blocked.load(Ordering::Relaxed) && self.blocked.read().unwrap_or_else(|e| e.into_inner()).contains(to)
    }

    /// Datagrams dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Datagrams sent late so far.
    pub fn delayed(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }

    /// Impair what this socket sends to `peer` (`None`: to every destination without an
    /// impairment of its own): drop each datagram with probability `loss`, send the rest
    /// `delay` late. Loss is drawn from an RNG seeded with `seed`, so a test is repeatable
    /// as far as the scheduler allows. A zero impairment removes it.
    pub fn impair(&self, peer: Option<SocketAddr>, impairment: Impairment, seed: u64) {
        let mut m = self.impaired.write().unwrap_or_else(|e| e.into_inner());
        if impairment == Impairment::default() {
            m.remove(&peer);
        } else {
            m.insert(peer, impairment);
        }
        self.any_impaired.store(!m.is_empty(), Ordering::SeqCst);
        *self.rng.lock().unwrap_or_else(|e| e.into_inner()) = Some(rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    }

    /// The impairment towards `to`, if any.
    fn impairment(&self, to: &SocketAddr) -> Option<Impairment> {
        if !self.any_impaired.load(Ordering::Relaxed) {
            return None;
        }
        let m = self.impaired.read().unwrap_or_else(|e| e.into_inner());
        m.get(&Some(*to)).or_else(|| m.get(&None)).copied()
    }

    fn lose(&self, p: f64) -> bool {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        rng.get_or_insert_with(|| rand_chacha::ChaCha8Rng::seed_from_u64(0)).gen_bool(p.clamp(0.0, 1.0))
    }
}

/// An [`AsyncUdpSocket`] that forwards to the real socket unless its [`Faults`] say drop.
pub struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    faults: Arc<Faults>,
}

impl FaultySocket {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, faults: Arc<Faults>) -> Self {
        Self { inner, faults }
    }
}

impl fmt::Debug for FaultySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultySocket").field("faults", &self.faults).finish()
    }
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if self.faults.is_black_holed() || self.faults.is_blocked(&transmit.destination) {
            self.faults.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if let Some(imp) = self.faults.impairment(&transmit.destination) {
            if imp.loss > 0.0 && self.faults.lose(imp.loss) {
                self.faults.dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            if !imp.delay.is_zero()
                && let Ok(rt) = tokio::runtime::Handle::try_current()
            {
                // Send a copy later; a full socket buffer then drops it, like a router.
                self.faults.delayed.fetch_add(1, Ordering::Relaxed);
                let (inner, contents) = (self.inner.clone(), transmit.contents.to_vec());
                let (destination, ecn, segment_size, src_ip) =
                    (transmit.destination, transmit.ecn, transmit.segment_size, transmit.src_ip);
                rt.spawn(async move {
                    tokio::time::sleep(imp.delay).await;
                    let late = Transmit { destination, ecn, contents: &contents, segment_size, src_ip };
                    let _ = inner.try_send(&late);
                });
                return Ok(());
            }
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) if self.faults.is_black_holed() => {
                    self.faults.dropped.fetch_add(n as u64, Ordering::Relaxed);
                    continue;
                }
                other => return other,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
