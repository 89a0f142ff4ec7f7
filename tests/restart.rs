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
