//! Cluster admission by allow-list: which `NodeId`s may connect, checked by the TLS
//! verifiers on both sides of every connection, before any plumcast frame is exchanged.

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::NodeId;

/// Why a text is not a [`NodeId`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a node id (64 hex characters): {0:?}")]
pub struct BadNodeId(pub String);

impl FromStr for NodeId {
    type Err = BadNodeId;

    /// 64 hex characters (upper or lower case), as [`NodeId::to_hex`] writes them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        match hex::decode_to_slice(s.trim(), &mut bytes) {
            Ok(()) => Ok(NodeId(bytes)),
            Err(_) => Err(BadNodeId(s.to_string())),
        }
    }
}

/// Who may connect: everyone (open, the default) or the ids of an allow-list. A cheap
/// handle: clones share one list, which [`Admission::set`] replaces while the node runs
/// (a reload). Every peer refused is counted ([`Admission::refused`]).
#[derive(Clone, Debug, Default)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    allowed: RwLock<Option<BTreeSet<NodeId>>>,
    /// The cluster CA's checks: peers must present a certificate it issued.
    ca: RwLock<Option<Arc<crate::tls::CaCheck>>>,
    refused: AtomicU64,
}

impl Admission {
    /// Everyone who proves an Ed25519 key is admitted.
    pub fn open() -> Self {
        Self::default()
    }

    /// Only the ids in `ids` are admitted (an empty list admits no one).
    pub fn allow_list(ids: impl IntoIterator<Item = NodeId>) -> Self {
        let a = Self::default();
        a.set(Some(ids.into_iter().collect()));
        a
    }

    /// Require, from the next handshake on, a certificate issued by the cluster CA whose
    /// certificate is `ca` (see [`crate::ca`]); `None` drops the requirement. The
    /// allow-list, if any, applies on top. Clones share it (a reload).
    ///
    /// # Errors
    /// [`crate::TransportError::Config`] if `ca` is not a usable CA certificate (the
    /// requirement in force is kept).
    pub fn set_ca(&self, ca: Option<rustls::pki_types::CertificateDer<'static>>) -> Result<(), crate::TransportError> {
        let check = ca.map(|c| crate::tls::CaCheck::new(&c).map(Arc::new)).transpose()?;
        *self.inner.ca.write().unwrap_or_else(PoisonError::into_inner) = check;
        Ok(())
    }

    /// The cluster CA's checks in force.
    pub(crate) fn ca_check(&self) -> Option<Arc<crate::tls::CaCheck>> {
        self.inner.ca.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Whether the peer of `conn` passes now ([`Admission::passes`] on the certificate
    /// chain it presented in the handshake).
    pub fn passes_connection(&self, conn: &quinn::Connection) -> bool {
        let chain = conn
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
            .map(|b| *b)
            .unwrap_or_default();
        self.passes(&chain)
    }

    /// Whether a peer that presented `chain` (end-entity first) passes now: its
    /// certificate chains to the CA in force (if any) and its id is admitted. For links
    /// that were accepted before a reload.
    pub fn passes(&self, chain: &[rustls::pki_types::CertificateDer<'static>]) -> bool {
        let Some((leaf, rest)) = chain.split_first() else { return false };
        let Ok(id) = crate::node_id_of(leaf) else { return false };
        if !self.admits(&id) {
            return false;
        }
        self.ca_check().is_none_or(|ca| ca.chains(leaf, rest))
    }

    /// Replace the list (`None`: open). Connections already up are not touched here; the
    /// node closes those whose peer no longer passes.
    pub fn set(&self, ids: Option<BTreeSet<NodeId>>) {
        *self.inner.allowed.write().unwrap_or_else(PoisonError::into_inner) = ids;
    }

    /// Whether `id` may connect.
    pub fn admits(&self, id: &NodeId) -> bool {
        self.inner.allowed.read().unwrap_or_else(PoisonError::into_inner).as_ref().is_none_or(|l| l.contains(id))
    }

    /// The list in force (`None`: open).
    pub fn ids(&self) -> Option<BTreeSet<NodeId>> {
        self.inner.allowed.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Whether everyone is admitted.
    pub fn is_open(&self) -> bool {
        self.inner.allowed.read().unwrap_or_else(PoisonError::into_inner).is_none()
    }

    /// Peers refused in a handshake so far (either side of the connection).
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    pub(crate) fn count_refusal(&self) {
        self.inner.refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why an allow-list file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum AllowFileError {
    /// The file cannot be read.
    #[error("allow-list {}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line is not a node id.
    #[error("allow-list {}, line {line}: {source}", path.display())]
    Line {
        /// The file.
        path: std::path::PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        source: BadNodeId,
    },
}

/// Read an allow-list file: one node id (64 hex characters) a line; blank lines and
/// lines starting with `#` are skipped, and text after an id's first whitespace is a
/// comment.
///
/// # Errors
/// [`AllowFileError`] naming the file, and the line of the first bad id.
pub fn read_allow_file(path: &Path) -> Result<BTreeSet<NodeId>, AllowFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| AllowFileError::Io { path: path.into(), source })?;
    let mut ids = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let word = line.split_whitespace().next().unwrap_or_default();
        let id = word.parse().map_err(|source| AllowFileError::Line { path: path.into(), line: i + 1, source })?;
        ids.insert(id);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_from_hex_and_an_allow_file_names_its_bad_line() {
        let id = NodeId([0xab; 32]);
        assert_eq!(id.to_hex().parse::<NodeId>(), Ok(id));
        assert_eq!(id.to_hex().to_uppercase().parse::<NodeId>(), Ok(id));
        assert!("abc".parse::<NodeId>().is_err());
        assert!(format!("{}zz", &id.to_hex()[..62]).parse::<NodeId>().is_err());
        let dir = std::env::temp_dir().join(format!("plumcast-allow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("allow");
        std::fs::write(&path, format!("# members\n\n{} node a\n{}\n", id.to_hex(), NodeId([1; 32]).to_hex())).unwrap();
        assert_eq!(read_allow_file(&path).unwrap(), [id, NodeId([1; 32])].into());
        std::fs::write(&path, format!("{}\nnot-an-id\n", id.to_hex())).unwrap();
        let e = read_allow_file(&path).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("not-an-id"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_allow_list_admits_its_ids_and_a_reload_replaces_it() {
        let (a, b) = (NodeId([1; 32]), NodeId([2; 32]));
        let open = Admission::open();
        assert!(open.admits(&a) && open.is_open());
        let list = Admission::allow_list([a]);
        let shared = list.clone();
        assert!(list.admits(&a) && !list.admits(&b));
        shared.set(Some([b].into()));
        assert!(!list.admits(&a) && list.admits(&b), "clones share the list");
        list.set(None);
        assert!(list.admits(&a) && list.is_open());
    }
}
