//! The data dir when plumcast is built without the `store` feature: opening one is an
//! error that names the feature, so no other method can be reached (the types have no
//! values).

use std::net::SocketAddr;
use std::path::Path;

use plumcast_transport::{Identity, NodeId};

use super::Error;
pub(crate) use super::stats::Counters;
use crate::proto::broadcast::{Envelope, MessageStore, Retention};

/// An open data dir: none can exist without the `store` feature.
#[derive(Debug)]
pub(crate) enum DataDir {}

impl DataDir {
    /// Always an error: this build has no store.
    pub(crate) fn open(dir: &Path) -> Result<Self, Error> {
        Err(Error::DataDir {
            path: dir.to_path_buf(),
            reason: "plumcast was built without its `store` feature (enable it to keep a data dir)".into(),
        })
    }

    pub(crate) fn identity(&self, _given: Option<Identity>) -> Result<Identity, Error> {
        match *self {}
    }

    pub(crate) fn next_incarnation(&self) -> Result<(u64, bool), Error> {
        match *self {}
    }

    #[allow(clippy::type_complexity)] // as the store's own
    pub(crate) fn restore(&self) -> Result<(Vec<(NodeId, u64, u64)>, Vec<Envelope<NodeId>>), Error> {
        match *self {}
    }

    pub(crate) fn counters(&self) -> Result<Option<Counters>, Error> {
        match *self {}
    }

    pub(crate) fn save_counters(&self, _counters: &Counters) -> Result<(), Error> {
        match *self {}
    }

    pub(crate) fn peers(&self) -> Result<Vec<SocketAddr>, Error> {
        match *self {}
    }

    pub(crate) fn save_peers(&self, _peers: &[SocketAddr]) -> Result<(), Error> {
        match *self {}
    }

    pub(crate) fn recorder(&self) -> Recorder {
        match *self {}
    }

    pub(crate) fn store(&self, _me: NodeId, _retention: Retention) -> Result<Box<dyn MessageStore<NodeId>>, Error> {
        match *self {}
    }
}

/// Records deliveries: none can exist without the `store` feature.
#[derive(Clone, Debug)]
pub(crate) enum Recorder {}

impl Recorder {
    pub(crate) async fn flush_forever(self) {
        match self {}
    }

    pub(crate) fn delivered(&self, _origin: NodeId, _incarnation: u64, _seq: u64) {
        match *self {}
    }

    pub(crate) fn flush(&self) {
        match *self {}
    }
}
