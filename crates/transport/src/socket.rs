//! A UDP socket wrapper for fault injection: black hole (crash) and partitions (blocked
//! destinations).

use std::collections::HashSet;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

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
