//! The data dir: a node's identity, its durable message store, what it delivered, its
//! last views and its last incarnation, so that a restart rejoins, catches up and never
//! delivers a message twice.
//!
//! Layout of `DIR`: `identity.key` (PKCS#8), `plumcast.redb` (redb, crash-safe), `lock`
//! (held for the life of the node: a second process on the same dir is refused).
//!
//! What "stored" means: [`MessageStore::append`] of our own broadcast commits with
//! [`redb::Durability::Immediate`] (fsync) before `Node::broadcast` returns; other
//! messages and delivery records are written in batches (one transaction for up to
//! [`BATCH`] messages, or whatever is waiting when the store is read) and made durable by
//! the next immediate commit, at most [`FLUSH_EVERY`] later. A SIGKILL can therefore lose up to
//! that much of received messages (anti-entropy fetches them again) and of delivery
//! records (those messages are delivered again after the restart: at-least-once for
//! them, never lost).

use std::collections::VecDeque;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use plumcast_transport::{Identity, NodeId};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::Error;
use crate::proto::broadcast::{Envelope, MessageId, MessageStore, Retention, StoreError, StoreSize};

/// The schema this build reads and writes; a data dir of another is refused.
pub const SCHEMA_VERSION: u64 = 2;

/// A MESSAGES row's proof and payload: the row is postcard of `(id, stored at in ms,
/// proof, payload)` (schema 2; schema 1 had no proof). `None` for a row that does not
/// decode.
fn decode_row(row: &[u8]) -> Option<(Bytes, Bytes)> {
    let (_, _, proof, payload) = postcard::from_bytes::<([u8; 32], u64, Vec<u8>, Vec<u8>)>(row).ok()?;
    Some((Bytes::from(proof), Bytes::from(payload)))
}
/// How often pending (not yet fsynced) writes are made durable: the window a SIGKILL can
/// hit (received messages and delivery records within it are fetched or delivered again).
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Received messages written in one transaction at most (a repair holds up to 1,024):
/// one transaction per message cost 64 µs per message of a catch-up, one per batch
/// about 10 (`plumcast bench --store`).
pub const BATCH: usize = 1024;

/// The key of a message row: (origin, incarnation, seq).
type RowKey = ([u8; 32], u64, u64);
/// A row of the message table: its key and encoded value.
type Row = (RowKey, Vec<u8>);

/// Writes not made durable yet, shared by the store, the recorder and the flush task.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Whether some transaction was committed without fsync since the last immediate one.
    dirty: bool,
    /// Received messages not written yet.
    messages: Vec<Row>,
    /// Deliveries taken by the application, not recorded yet.
    delivered: Vec<([u8; 32], u64, u64)>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        !self.dirty && self.messages.is_empty() && self.delivered.is_empty()
    }
}

/// Write what `pending` holds in one transaction (fsynced with `durable`; an immediate
/// commit also makes every earlier non-durable one durable).
fn write_pending(db: &Database, pending: &mut Pending, durable: bool) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let mut txn = db.begin_write().map_err(|x| e(&x))?;
    if !durable {
        let _ = txn.set_durability(Durability::None);
    }
    {
        let mut rows = txn.open_table(MESSAGES).map_err(|x| e(&x))?;
        for (key, value) in &pending.messages {
            rows.insert(*key, value.as_slice()).map_err(|x| e(&x))?;
        }
        let mut delivered = txn.open_table(DELIVERED).map_err(|x| e(&x))?;
        let at = now_ms();
        for key in &pending.delivered {
            delivered.insert(*key, at).map_err(|x| e(&x))?;
        }
        // An immediate commit must write something, or it may not reach the disk.
        txn.open_table(META).map_err(|x| e(&x))?.insert("flushed_ms", at).map_err(|x| e(&x))?;
    }
    txn.commit().map_err(|x| e(&x))?;
    pending.messages.clear();
    pending.delivered.clear();
    pending.dirty = !durable;
    Ok(())
}

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (origin, incarnation, seq) → postcard of (id, stored at in ms since the epoch, payload).
const MESSAGES: TableDefinition<([u8; 32], u64, u64), &[u8]> = TableDefinition::new("messages");
// Before 2026-12-01 16:25 UTC an "ids" table indexed the rows by message id; the index is
// now built in memory from the rows at open (a second B-tree insert and a lookup per
// message cost a third of a catch-up's time), and a dir that still has the table works.
/// (origin, incarnation, seq) → when the application took it, ms since the epoch.
const DELIVERED: TableDefinition<([u8; 32], u64, u64), u64> = TableDefinition::new("delivered");
/// Peer address (text) → when last in one of our views, ms since the epoch.
const PEERS: TableDefinition<&str, u64> = TableDefinition::new("peers");
/// "counters" → postcard of [`Counters`].
const COUNTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("counters");

pub(crate) use super::stats::Counters;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn fail(dir: &Path, what: impl std::fmt::Display) -> Error {
    Error::DataDir { path: dir.to_path_buf(), reason: what.to_string() }
}

/// An open data dir (the lock is held while it lives).
#[derive(Debug)]
pub(crate) struct DataDir {
    dir: PathBuf,
    db: Arc<Database>,
    /// Writes not made durable yet.
    pending: Arc<Mutex<Pending>>,
    _lock: File,
}

impl DataDir {
    /// Open (creating) `dir`: take its lock, check its schema.
    pub(crate) fn open(dir: &Path) -> Result<Self, Error> {
        if !dir.exists() {
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            if !parent.is_dir() {
                return Err(fail(dir, format!("its parent directory {} does not exist", parent.display())));
            }
            std::fs::create_dir(dir).map_err(|e| fail(dir, format!("cannot create it: {e}")))?;
        }
        let lock_path = dir.join("lock");
        let lock =
            File::create(&lock_path).map_err(|e| fail(dir, format!("cannot create {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(fail(dir, "it is in use by another plumcast process (its lock is held)"));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(fail(dir, format!("cannot lock it: {e}"))),
        }
        let db = Database::create(dir.join("plumcast.redb")).map_err(|e| fail(dir, format!("database: {e}")))?;
        let me = Self { dir: dir.to_path_buf(), db: Arc::new(db), pending: Arc::default(), _lock: lock };
        let schema = me.meta("schema")?;
        match schema {
            None => me.set_meta("schema", SCHEMA_VERSION)?,
            Some(v) if v == SCHEMA_VERSION => {}
            Some(v) => {
                return Err(fail(
                    dir,
                    format!("its schema version is {v}; this plumcast reads version {SCHEMA_VERSION}"),
                ));
            }
        }
        Ok(me)
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        fail(&self.dir, e)
    }

    fn meta(&self, key: &str) -> Result<Option<u64>, Error> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        Ok(table.get(key).map_err(|e| self.err(e))?.map(|v| v.value()))
    }

    fn set_meta(&self, key: &str, value: u64) -> Result<(), Error> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = txn.open_table(META).map_err(|e| self.err(e))?;
            t.insert(key, value).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// The identity kept in the dir (created on first use). With `given` (from
    /// `--identity` / `NodeBuilder::identity`), the two must be one key.
    pub(crate) fn identity(&self, given: Option<Identity>) -> Result<Identity, Error> {
        let path = self.dir.join("identity.key");
        match given {
            None => Ok(Identity::load_or_create(&path)?),
            Some(id) if !path.exists() => {
                std::fs::write(&path, id.pkcs8_der())
                    .map_err(|e| self.err(format!("cannot write {}: {e}", path.display())))?;
                Ok(id)
            }
            Some(id) => {
                let kept = Identity::load_or_create(&path)?;
                if kept.node_id() != id.node_id() {
                    return Err(self.err(format!(
                        "its identity {} is not the one given ({}): use one key, or another data dir",
                        kept.node_id().short(),
                        id.node_id().short()
                    )));
                }
                Ok(id)
            }
        }
    }

    /// This life's incarnation: never below the last one + 1, even if the clock went back;
    /// and whether there was a last one (a restart, not a first start).
    pub(crate) fn next_incarnation(&self) -> Result<(u64, bool), Error> {
        let last = self.meta("incarnation")?;
        let inc = last.map_or(0, |i| i + 1).max(now_ms());
        self.set_meta("incarnation", inc)?;
        Ok((inc, last.is_some()))
    }

    /// What was delivered (within retention), and the stored messages that were not
    /// delivered yet (to deliver at start).
    #[allow(clippy::type_complexity)]
    pub(crate) fn restore(&self) -> Result<(Vec<(NodeId, u64, u64)>, Vec<Envelope<NodeId>>), Error> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let mut delivered = Vec::new();
        if let Ok(t) = txn.open_table(DELIVERED) {
            for row in t.iter().map_err(|e| self.err(e))? {
                let (k, _) = row.map_err(|e| self.err(e))?;
                let (o, i, s) = k.value();
                delivered.push((NodeId(o), i, s));
            }
        }
        let mut undelivered = Vec::new();
        if let Ok(t) = txn.open_table(MESSAGES) {
            let seen: std::collections::BTreeSet<(NodeId, u64, u64)> = delivered.iter().copied().collect();
            for row in t.iter().map_err(|e| self.err(e))? {
                let (k, v) = row.map_err(|e| self.err(e))?;
                let (o, i, s) = k.value();
                if seen.contains(&(NodeId(o), i, s)) {
                    continue;
                }
                if let Some((proof, payload)) = decode_row(v.value()) {
                    undelivered.push(Envelope { origin: NodeId(o), incarnation: i, seq: s, proof, payload });
                }
            }
        }
        Ok((delivered, undelivered))
    }

    /// The counters kept by the last life, if any (unreadable ones are dropped: they are
    /// only counters).
    pub(crate) fn counters(&self) -> Result<Option<Counters>, Error> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let Ok(t) = txn.open_table(COUNTERS) else { return Ok(None) };
        let row = t.get("counters").map_err(|e| self.err(e))?;
        Ok(row.and_then(|v| postcard::from_bytes(v.value()).ok()))
    }

    /// Keep `counters` (committed without fsync; durable within [`FLUSH_EVERY`]).
    pub(crate) fn save_counters(&self, counters: &Counters) -> Result<(), Error> {
        let bytes = postcard::to_allocvec(counters).map_err(|e| self.err(e))?;
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let _ = txn.set_durability(Durability::None);
        {
            let mut t = txn.open_table(COUNTERS).map_err(|e| self.err(e))?;
            t.insert("counters", bytes.as_slice()).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))?;
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).dirty = true;
        Ok(())
    }

    /// The peers of our last views.
    pub(crate) fn peers(&self) -> Result<Vec<SocketAddr>, Error> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let Ok(t) = txn.open_table(PEERS) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, _) = row.map_err(|e| self.err(e))?;
            if let Ok(a) = k.value().parse() {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Replace the kept peers with `peers` (the current active and passive views).
    pub(crate) fn save_peers(&self, peers: &[SocketAddr]) -> Result<(), Error> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let _ = txn.set_durability(Durability::None);
        {
            let mut t = txn.open_table(PEERS).map_err(|e| self.err(e))?;
            t.retain(|_, _| false).map_err(|e| self.err(e))?;
            let at = now_ms();
            for p in peers {
                t.insert(p.to_string().as_str(), at).map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))?;
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).dirty = true;
        Ok(())
    }

    /// A recorder for deliveries taken by the application.
    pub(crate) fn recorder(&self) -> Recorder {
        Recorder { db: Arc::downgrade(&self.db), pending: self.pending.clone() }
    }

    /// The durable message store of this dir, for the node `me`.
    pub(crate) fn store(&self, me: NodeId, retention: Retention) -> Result<Box<dyn MessageStore<NodeId>>, Error> {
        let store =
            DurableStore::open(self.db.clone(), self.pending.clone(), me, retention).map_err(|e| self.err(e))?;
        Ok(Box::new(store))
    }
}

/// Records deliveries as the application takes them, and makes pending writes durable.
/// It does not keep the database open: once the node has stopped, a delivery taken from
/// the stream is no longer recorded (it is delivered again after a restart), and a new
/// node can open the dir at once.
#[derive(Clone, Debug)]
pub(crate) struct Recorder {
    db: std::sync::Weak<Database>,
    pending: Arc<Mutex<Pending>>,
}

impl Recorder {
    /// Make the non-fsynced writes durable every [`FLUSH_EVERY`], until the task is
    /// aborted.
    pub(crate) async fn flush_forever(self) {
        let mut every = tokio::time::interval(FLUSH_EVERY);
        loop {
            every.tick().await;
            let r = self.clone();
            let _ = tokio::task::spawn_blocking(move || r.flush()).await;
        }
    }

    /// Record one delivery (written and made durable by the next flush, within
    /// [`FLUSH_EVERY`]).
    pub(crate) fn delivered(&self, origin: NodeId, incarnation: u64, seq: u64) {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).delivered.push((origin.0, incarnation, seq));
    }

    /// Make every pending write durable (one transaction, one fsync), if there is any.
    pub(crate) fn flush(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.is_empty() {
            return;
        }
        let Some(db) = self.db.upgrade() else { return };
        if let Err(e) = write_pending(&db, &mut pending, true) {
            tracing::warn!(error = %e, "cannot make the data dir's pending writes durable; retrying");
        }
    }
}

/// The message store on redb: rows by (origin, incarnation, seq), and in memory an id
/// index and the order of storage times for retention.
pub(crate) struct DurableStore {
    db: Arc<Database>,
    pending: Arc<Mutex<Pending>>,
    me: NodeId,
    retention: Retention,
    ids: std::collections::HashMap<MessageId, RowKey>,
    order: VecDeque<(MessageId, Instant, usize)>,
    bytes: usize,
}

impl DurableStore {
    fn open(db: Arc<Database>, pending: Arc<Mutex<Pending>>, me: NodeId, retention: Retention) -> Result<Self, String> {
        let mut order = Vec::new();
        let mut ids = std::collections::HashMap::new();
        let (now, now_ms) = (Instant::now(), now_ms());
        {
            let txn = db.begin_read().map_err(|e| e.to_string())?;
            if let Ok(t) = txn.open_table(MESSAGES) {
                for row in t.iter().map_err(|e| e.to_string())? {
                    let (k, v) = row.map_err(|e| e.to_string())?;
                    if let Ok((id, at, payload)) = postcard::from_bytes::<([u8; 32], u64, Vec<u8>)>(v.value()) {
                        ids.insert(MessageId(id), k.value());
                        let age = Duration::from_millis(now_ms.saturating_sub(at));
                        order.push((at, MessageId(id), now.checked_sub(age).unwrap_or(now), payload.len()));
                    }
                }
            }
        }
        order.sort_by_key(|(at, id, _, _)| (*at, *id));
        let bytes = order.iter().map(|(_, _, _, n)| n).sum();
        let order = order.into_iter().map(|(_, id, t, n)| (id, t, n)).collect();
        Ok(Self { db, pending, me, retention, ids, order, bytes })
    }

    /// Write the received messages still waiting (the store is about to be read or
    /// changed), without fsync.
    fn write_waiting(&self) -> Result<(), StoreError> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.messages.is_empty() {
            return Ok(());
        }
        write_pending(&self.db, &mut pending, false).map_err(StoreError)
    }

    fn evict_oldest(&mut self, n: usize) -> Result<u64, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError(e.to_string());
        self.write_waiting()?;
        let mut txn = self.db.begin_write().map_err(|e| err(&e))?;
        let _ = txn.set_durability(Durability::None);
        let mut evicted = 0;
        {
            let mut rows = txn.open_table(MESSAGES).map_err(|e| err(&e))?;
            for _ in 0..n {
                let Some((id, _, len)) = self.order.pop_front() else { break };
                self.bytes -= len;
                if let Some(key) = self.ids.remove(&id) {
                    rows.remove(key).map_err(|e| err(&e))?;
                    evicted += 1;
                }
            }
        }
        txn.commit().map_err(|e| err(&e))?;
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).dirty = true;
        Ok(evicted)
    }
}

impl MessageStore<NodeId> for DurableStore {
    fn append(&mut self, now: Instant, id: MessageId, envelope: &Envelope<NodeId>) -> Result<(), StoreError> {
        if self.retention.max_messages == 0 {
            return Ok(());
        }
        if self.ids.contains_key(&id) {
            return Ok(());
        }
        let own = envelope.origin == self.me;
        let key = (envelope.origin.0, envelope.incarnation, envelope.seq);
        self.ids.insert(id, key);
        let value = postcard::to_allocvec(&(id.0, now_ms(), &envelope.proof[..], &envelope.payload[..]))
            .map_err(|e| StoreError(e.to_string()))?;
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.messages.push((key, value));
            // Our own broadcast is durable before `broadcast` returns (with whatever was
            // waiting); received ones wait for a batch, a read or the flush.
            if own {
                write_pending(&self.db, &mut pending, true).map_err(StoreError)?;
            } else if pending.messages.len() >= BATCH {
                write_pending(&self.db, &mut pending, false).map_err(StoreError)?;
            }
        }
        self.order.push_back((id, now, envelope.payload.len()));
        self.bytes += envelope.payload.len();
        let over_count = self.order.len().saturating_sub(self.retention.max_messages);
        let mut over = over_count;
        let mut bytes = self.bytes;
        for (_, _, len) in self.order.iter().skip(over_count) {
            if bytes <= self.retention.max_bytes {
                break;
            }
            bytes -= len;
            over += 1;
        }
        if over > 0 {
            self.evict_oldest(over)?;
        }
        Ok(())
    }

    fn get(&self, id: &MessageId) -> Option<Envelope<NodeId>> {
        self.write_waiting().ok()?;
        let key = *self.ids.get(id)?;
        let txn = self.db.begin_read().ok()?;
        let row = txn.open_table(MESSAGES).ok()?.get(key).ok()??;
        let (proof, payload) = decode_row(row.value())?;
        Some(Envelope { origin: NodeId(key.0), incarnation: key.1, seq: key.2, proof, payload })
    }

    fn range(
        &self,
        origin: &NodeId,
        incarnation: u64,
        after: u64,
        max: usize,
        max_bytes: usize,
    ) -> Vec<Envelope<NodeId>> {
        let mut out = Vec::new();
        if self.write_waiting().is_err() {
            return out;
        }
        let Ok(txn) = self.db.begin_read() else { return out };
        let Ok(t) = txn.open_table(MESSAGES) else { return out };
        let lo = (origin.0, incarnation, after.saturating_add(1));
        let hi = (origin.0, incarnation, u64::MAX);
        let Ok(rows) = t.range(lo..=hi) else { return out };
        let mut bytes = 0;
        for row in rows {
            let Ok((k, v)) = row else { break };
            let Some((proof, payload)) = decode_row(v.value()) else { continue };
            if out.len() >= max || (!out.is_empty() && bytes + payload.len() > max_bytes) {
                break;
            }
            bytes += payload.len();
            let (o, i, s) = k.value();
            out.push(Envelope { origin: NodeId(o), incarnation: i, seq: s, proof, payload });
        }
        out
    }

    fn evict(&mut self, now: Instant) -> u64 {
        let old = self
            .order
            .iter()
            .take_while(|(_, t, _)| now.saturating_duration_since(*t) > self.retention.max_age)
            .count();
        if old == 0 {
            return 0;
        }
        self.evict_oldest(old).unwrap_or(0)
    }

    fn size(&self) -> StoreSize {
        let incarnations: std::collections::BTreeSet<([u8; 32], u64)> =
            self.ids.values().map(|(o, i, _)| (*o, *i)).collect();
        let origins = incarnations.iter().map(|(o, _)| o).collect::<std::collections::BTreeSet<_>>().len();
        StoreSize { messages: self.order.len(), bytes: self.bytes, incarnations: incarnations.len(), origins }
    }

    fn clone_box(&self) -> Box<dyn MessageStore<NodeId>> {
        Box::new(Self {
            db: self.db.clone(),
            pending: self.pending.clone(),
            me: self.me,
            retention: self.retention,
            ids: self.ids.clone(),
            order: self.order.clone(),
            bytes: self.bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("plumcast-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn views_and_incarnations_survive_a_reopen() {
        let dir = temp_dir("reopen");
        let peers: Vec<SocketAddr> = vec!["127.0.0.1:7000".parse().unwrap(), "127.0.0.1:7001".parse().unwrap()];
        let first = {
            let d = DataDir::open(&dir).unwrap();
            d.save_peers(&peers).unwrap();
            d.recorder().flush();
            let (inc, lived) = d.next_incarnation().unwrap();
            assert!(!lived, "a new dir had no last life");
            inc
        };
        let d = DataDir::open(&dir).unwrap();
        assert_eq!(d.peers().unwrap(), peers);
        let (next, lived) = d.next_incarnation().unwrap();
        assert!(next > first && lived);
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_second_opener_an_unknown_schema_and_another_identity_are_refused() {
        let dir = temp_dir("refused");
        let d = DataDir::open(&dir).unwrap();
        let e = DataDir::open(&dir).expect_err("locked");
        assert!(e.to_string().contains("in use by another plumcast process"), "{e}");
        let kept = d.identity(None).unwrap();
        let other = Identity::generate().unwrap();
        let e = d.identity(Some(other)).expect_err("another key");
        assert!(e.to_string().contains("is not the one given"), "{e}");
        assert_eq!(d.identity(None).unwrap().node_id(), kept.node_id());
        d.set_meta("schema", SCHEMA_VERSION + 1).unwrap();
        drop(d);
        let e = DataDir::open(&dir).expect_err("unknown schema");
        assert!(e.to_string().contains(&format!("schema version is {}", SCHEMA_VERSION + 1)), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
