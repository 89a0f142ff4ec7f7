//! Restart from a data dir over real QUIC: a node stopped while the others broadcast
//! 1,000 messages, restarted on its data dir with no bootstrap contact, gets all of them
//! and delivers nothing of its previous life twice.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use plumcast::{Event, MessageId, Node};

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("plumcast-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Start a node on `dir` and count its deliveries by id.
async fn start_on(
    dir: &std::path::Path,
    contact: Option<std::net::SocketAddr>,
) -> (Node, Arc<Mutex<HashMap<MessageId, u32>>>) {
    let mut protocol = plumcast::proto::Config::local();
    protocol.broadcast.anti_entropy_interval = Some(Duration::from_secs(1));
    let mut b = Node::builder().protocol(protocol).data_dir(dir);
    if let Some(c) = contact {
        b = b.bootstrap(c);
    }
    let (node, mut events) = b.spawn().await.expect("node on its data dir");
    let counts = Arc::new(Mutex::new(HashMap::new()));
    let c = counts.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let Event::Delivered(d) = ev {
                *c.lock().unwrap().entry(d.id).or_default() += 1;
            }
        }
    });
    (node, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_from_its_data_dir_gets_what_it_missed_and_nothing_twice() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let mut protocol = plumcast::proto::Config::local();
    protocol.broadcast.anti_entropy_interval = Some(Duration::from_secs(1));
    let others = cluster_with(3, protocol).await;
    let dir = temp_dir("restart");
    let (c, before) = start_on(&dir, Some(others[0].node.addr())).await;
    let c_id = c.id();
    wait_until(Duration::from_secs(20), "C joined", || async { !c.neighbors().await.unwrap().is_empty() }).await;

    // A second process (here: a second node) on the same dir is refused.
    let e = Node::builder().data_dir(&dir).spawn().await.expect_err("the dir is in use");
    assert!(matches!(e, plumcast::Error::DataDir { .. }) && e.to_string().contains("in use"), "{e}");

    // Before the stop: 10 messages, delivered (and recorded) by C.
    let mut first = Vec::new();
    for k in 0..10 {
        first.push(others[0].node.broadcast(format!("before {k}")).await.unwrap());
    }
    wait_until(Duration::from_secs(20), "C has the first 10", || async {
        let b = before.lock().unwrap();
        first.iter().all(|id| b.get(id) == Some(&1))
    })
    .await;
    let first_incarnation = c.incarnation();
    c.shutdown().await.unwrap();

    // While C is down: 1,000 messages from the others.
    let mut missed = Vec::new();
    for k in 0..1000 {
        let n = &others[k % others.len()];
        missed.push((n.node.id(), n.node.broadcast(format!("missed {k}")).await.unwrap()));
    }
    wait_until(Duration::from_secs(30), "the others have the 1,000", || async {
        missed.iter().all(|(o, id)| delivered(&others, *o, *id).0 == 2)
    })
    .await;

    // Restart on the same dir, no bootstrap contact: the peers of its last views.
    let (c, after) = start_on(&dir, None).await;
    assert_eq!(c.id(), c_id, "the identity came from the data dir");
    assert!(c.incarnation() > first_incarnation, "incarnations never go back");
    let caught_up = wait_for(Duration::from_secs(45), || async {
        let a = after.lock().unwrap();
        missed.iter().all(|(_, id)| a.contains_key(id))
    })
    .await;
    if !caught_up {
        let s = c.stats().await.unwrap();
        let got = missed.iter().filter(|(_, id)| after.lock().unwrap().contains_key(id)).count();
        panic!(
            "C has {got} of the 1,000 it missed; neighbours {:?}; {:?}; store {:?}",
            c.neighbors().await.unwrap(),
            s.broadcast,
            s.store
        );
    }
    let a = after.lock().unwrap().clone();
    assert!(missed.iter().all(|(_, id)| a.get(id) == Some(&1)), "each once");
    assert!(first.iter().all(|id| !a.contains_key(id)), "nothing of before the restart again");
    let s = c.stats().await.unwrap();
    assert!(s.broadcast.recovered >= 1, "caught up by anti-entropy: {:?}", s.broadcast);
    assert!(s.store.messages >= 1010, "the store kept them: {:?}", s.store);
    c.shutdown().await.unwrap();
    for n in others {
        n.node.shutdown().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a node's event stream brought: deliveries by id, and the exchanges it started.
#[derive(Default)]
struct Seen {
    counts: HashMap<MessageId, u32>,
    exchanges: Vec<plumcast::Exchange>,
}

/// Start a node with `protocol` (on `dir` if given) and record its events.
async fn start_seen(
    dir: Option<&std::path::Path>,
    contact: Option<std::net::SocketAddr>,
    protocol: plumcast::proto::Config,
) -> (Node, Arc<Mutex<Seen>>) {
    let mut b = Node::builder().protocol(protocol);
    if let Some(d) = dir {
        b = b.data_dir(d);
    }
    if let Some(c) = contact {
        b = b.bootstrap(c);
    }
    let (node, mut events) = b.spawn().await.expect("node starts");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                Event::Delivered(d) => *s.lock().unwrap().counts.entry(d.id).or_default() += 1,
                Event::Exchanged(x) => s.lock().unwrap().exchanges.push(x),
                _ => {}
            }
        }
    });
    (node, seen)
}

/// Anti-entropy only: no periodic exchange within the test (60 s), no catch-up IHave on
/// a new link, so what a restarted node gets, it gets through the exchanges it starts.
fn exchanges_only() -> plumcast::proto::Config {
    let mut protocol = plumcast::proto::Config::local();
    protocol.broadcast.anti_entropy_interval = Some(Duration::from_secs(60));
    protocol.broadcast.catch_up_window = Duration::ZERO;
    protocol
}

/// B misses 3,000 messages of A while down; restarted, it asks A for an exchange: when
/// `exchange` returns (complete), B's version vector covers all of A's messages, every
/// one is delivered once, and the reports of the exchanges B started count no message as
/// recovered twice. (How the 3,000 split between B's exchanges and A's, which run at
/// once on the new link, depends on timing; the exact counts of one exchange are tested
/// in the broadcast core, `a_requested_exchange_reports_what_it_moved_each_way`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_exchange_moves_what_the_peer_had_and_reports_it() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let (a, _) = start_seen(None, None, exchanges_only()).await;
    let dir = temp_dir("exchange");
    let (b, _) = start_seen(Some(&dir), Some(a.addr()), exchanges_only()).await;
    let b_id = b.id();
    wait_until(Duration::from_secs(20), "B joined A", || async { !b.neighbors().await.unwrap().is_empty() }).await;
    let e = b.exchange(plumcast::NodeId([7; 32])).await.expect_err("not a neighbour");
    assert!(matches!(e, plumcast::Error::Exchange { .. }) && e.to_string().contains("not a neighbour"), "{e}");
    b.shutdown().await.unwrap();

    for k in 0..3000 {
        a.broadcast(format!("missed {k}")).await.unwrap();
    }
    let (b, seen) = start_seen(Some(&dir), None, exchanges_only()).await;
    assert_eq!(b.id(), b_id);
    wait_until(Duration::from_secs(20), "B rejoined A", || async { !b.neighbors().await.unwrap().is_empty() }).await;
    let x = b.exchange(a.id()).await.expect("an exchange with a neighbour");
    assert!(x.complete, "{x:?}");
    assert_eq!((x.peer, x.trigger), (a.id(), plumcast::proto::broadcast::Trigger::Requested));
    let vv = b.version_vector().await.unwrap();
    assert_eq!(vv.head(&a.id(), a.incarnation()), 3000, "B has all of A's messages when the exchange returns");
    assert!(x.received_messages >= x.recovered && x.sent_messages == 0, "{x:?}");
    let streamed = wait_for(Duration::from_secs(20), || async {
        let s = seen.lock().unwrap();
        s.counts.len() == 3000 && s.exchanges.iter().any(|e| e.trigger == x.trigger && e.complete)
    })
    .await;
    if !streamed {
        let s = seen.lock().unwrap();
        panic!("B's stream has {} deliveries and the exchanges {:?}", s.counts.len(), s.exchanges);
    }
    {
        let s = seen.lock().unwrap();
        assert!(s.counts.values().all(|n| *n == 1), "each once");
        let recovered: u64 = s.exchanges.iter().filter(|e| e.peer == a.id()).map(|e| e.recovered).sum();
        assert!(recovered <= 3000, "no message counted twice: {:?}", s.exchanges);
        assert!(s.exchanges.iter().all(|e| e.received_messages >= e.recovered), "{:?}", s.exchanges);
    }
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// An application reads the store after a cursor it kept, before and after a restart;
/// pages of a bounded size walk the whole history; counters go on from where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_read_after_a_cursor_across_a_restart_and_counters_go_on() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let (a, _) = start_seen(None, None, exchanges_only()).await;
    let dir = temp_dir("cursor");
    let (b, seen) = start_seen(Some(&dir), Some(a.addr()), exchanges_only()).await;
    wait_until(Duration::from_secs(20), "B joined A", || async { !b.neighbors().await.unwrap().is_empty() }).await;
    for k in 0..100 {
        a.broadcast(format!("first {k}")).await.unwrap();
    }
    wait_until(Duration::from_secs(20), "B has 100", || async { seen.lock().unwrap().counts.len() == 100 }).await;
    let cursor = b.version_vector().await.unwrap();
    assert_eq!(cursor.head(&a.id(), a.incarnation()), 100);
    let mut later = Vec::new();
    for k in 0..50 {
        later.push(a.broadcast(format!("later {k}")).await.unwrap());
    }
    wait_until(Duration::from_secs(20), "B has 150", || async { seen.lock().unwrap().counts.len() == 150 }).await;
    let page = b.read_after(&cursor, 1000).await.unwrap();
    assert_eq!(page.messages.iter().map(|m| m.id).collect::<Vec<_>>(), later, "the 50 after the cursor, in order");
    assert!(!page.full);
    assert_eq!(page.cursor.head(&a.id(), a.incarnation()), 150);
    assert!(b.read_after(&page.cursor, 1000).await.unwrap().messages.is_empty(), "nothing after the end");
    let before = b.stats().await.unwrap();
    b.shutdown().await.unwrap();

    let (b, _) = start_seen(Some(&dir), None, exchanges_only()).await;
    let again = b.read_after(&cursor, 1000).await.unwrap();
    assert_eq!(again.messages.iter().map(|m| m.id).collect::<Vec<_>>(), later, "the store survived the restart");
    // Pages of 40 walk all 150, oldest first.
    let (mut c, mut all, mut pages) = (plumcast::Cursor::new(), Vec::new(), 0);
    loop {
        let p = b.read_after(&c, 40).await.unwrap();
        pages += 1;
        assert!(p.messages.len() <= 40 && pages <= 10);
        all.extend(p.messages.iter().map(|m| m.seq));
        c = p.cursor;
        if !p.full {
            break;
        }
    }
    assert_eq!(all, (1..=150).collect::<Vec<u64>>());
    assert_eq!(pages, 4, "40 + 40 + 40 + 30");
    let after = b.stats().await.unwrap();
    // This life delivered nothing (A sent nothing since): the counts are the last life's.
    assert!(before.broadcast.delivered == 150, "{:?}", before.broadcast);
    assert!(after.broadcast.delivered >= 150, "the counters went on: {:?}", after.broadcast);
    assert!(after.net.frames_received >= before.net.frames_received, "{:?} then {:?}", before.net, after.net);
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGKILL at a random moment while a node writes its own broadcasts to its data dir,
/// three times over: the data dir opens again, and every message the node reported stored
/// (its `broadcast` had returned) is in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_while_writing_loses_nothing_reported_stored() {
    use tokio::io::AsyncBufReadExt;
    let _g = SERIAL.lock().await;
    init_tracing();
    let dir = temp_dir("sigkill");
    let mut reported: Vec<(u64, u64)> = Vec::new();
    // Kill points: after 150, 480 and 1,020 reports (the writer is mid-way through its
    // next broadcasts each time).
    for (round, after) in [150usize, 480, 1020].into_iter().enumerate() {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_plumcast-crash-writer"))
            .arg(&dir)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the writer starts");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut got = 0;
        while got < after {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("round {round}: {got} of {after} reports in 30 s"))
                .expect("reading the writer")
                .unwrap_or_else(|| panic!("round {round}: the writer ended after {got} reports"));
            let mut w = line.split_whitespace().skip(1).map(|v| v.parse::<u64>().expect("a number"));
            reported.push((w.next().unwrap(), w.next().unwrap()));
            got += 1;
        }
        // The writer is mid-way through its next broadcasts: kill it there (SIGKILL).
        child.start_kill().expect("SIGKILL");
        let status = child.wait().await.expect("the writer ends");
        assert!(!status.success(), "killed, not exited: {status:?}");
        // Reports written before the kill but not read yet are stored too.
        while let Ok(Some(line)) = lines.next_line().await {
            let mut w = line.split_whitespace().skip(1).map(|v| v.parse::<u64>().expect("a number"));
            reported.push((w.next().unwrap(), w.next().unwrap()));
        }
    }
    let mut protocol = plumcast::proto::Config::local();
    protocol.broadcast.anti_entropy_interval = Some(Duration::from_secs(60));
    let (node, _events) = Node::builder().protocol(protocol).data_dir(&dir).spawn().await.expect("the dir opens again");
    let me = node.id();
    let mut stored = std::collections::BTreeSet::new();
    let mut cursor = plumcast::Cursor::new();
    loop {
        let page = node.read_after(&cursor, plumcast::READ_MAX).await.unwrap();
        stored.extend(page.messages.iter().filter(|m| m.origin == me).map(|m| (m.incarnation, m.seq)));
        cursor = page.cursor;
        if !page.full {
            break;
        }
    }
    let lost: Vec<&(u64, u64)> = reported.iter().filter(|r| !stored.contains(r)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} reported stored are missing: {:?}",
        lost.len(),
        reported.len(),
        &lost[..lost.len().min(5)]
    );
    let lives: std::collections::BTreeSet<u64> = reported.iter().map(|(i, _)| *i).collect();
    assert_eq!(lives.len(), 3, "three lives, three incarnations");
    node.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
