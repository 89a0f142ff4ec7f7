//! Integration over real QUIC on loopback: delivery, failures, concurrent joins,
//! backpressure. Tests take the `SERIAL` lock: one multi-node test at a time.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_every_node_broadcasts_exactly_once_then_survive_25pct_crash() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let mut nodes = cluster(20).await;
    wait_until(Duration::from_secs(20), "overlay formed and symmetric", || overlay_ready(&nodes)).await;

    let mut sent = Vec::new();
    for n in &nodes {
        let id = n.node.broadcast(format!("hello from {}", n.node.id().short())).await.unwrap();
        sent.push((n.node.id(), id));
    }
    wait_until(Duration::from_secs(20), "every message delivered by every other node", || async {
        sent.iter().all(|(o, id)| delivered(&nodes, *o, *id) == (19, false))
    })
    .await;

    // Crash 5 of 20 abruptly (no CONNECTION_CLOSE), including the bootstrap node.
    for i in [0, 3, 7, 11, 15].into_iter().rev() {
        nodes.remove(i).node.crash();
    }
    wait_until(
        Duration::from_secs(30),
        "survivors healed: no dead peer in any view, symmetric, one overlay",
        || async {
            let live: Vec<_> = nodes.iter().map(|n| n.node.id()).collect();
            for n in &nodes {
                let v = n.node.neighbors().await.unwrap();
                if v.is_empty() || v.iter().any(|p| !live.contains(&p.id)) {
                    return false;
                }
            }
            overlay_ready(&nodes).await
        },
    )
    .await;
    let mut after = Vec::new();
    for n in &nodes {
        after.push((n.node.id(), n.node.broadcast(&b"after the crash"[..]).await.unwrap()));
    }
    let all = wait_for(Duration::from_secs(20), || async {
        after.iter().all(|(o, id)| delivered(&nodes, *o, *id) == (nodes.len() - 1, false))
    })
    .await;
    if !all {
        // Say what was missing before failing (a split overlay once made this time out).
        for (o, id) in &after {
            eprintln!(
                "from {}: {:?} of {} delivered (ok, dup)",
                o.short(),
                delivered(&nodes, *o, *id),
                nodes.len() - 1
            );
        }
        for n in &nodes {
            eprintln!("{}: {:?}", n.node.id().short(), n.node.stats().await);
        }
        panic!("timed out after 20 s waiting for: every survivor's message reached every survivor once");
    }
    for n in nodes {
        n.node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_tells_neighbors_they_left() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let mut nodes = cluster(3).await;
    wait_until(Duration::from_secs(10), "overlay", || overlay_ready(&nodes)).await;
    let leaving = nodes.remove(2);
    let id = leaving.node.id();
    leaving.node.shutdown().await.unwrap();
    wait_until(Duration::from_secs(5), "nobody lists the leaver", || async {
        for n in &nodes {
            if n.node.neighbors().await.unwrap().iter().any(|p| p.id == id) {
                return false;
            }
        }
        true
    })
    .await;
    for n in &nodes {
        let s = n.node.stats().await.unwrap();
        assert_eq!(s.membership.failures_detected, 0, "a leave is not a failure");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_accepted_right_before_shutdown_are_delivered() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let mut nodes = cluster(4).await;
    wait_until(Duration::from_secs(10), "overlay", || overlay_ready(&nodes)).await;
    let sender = nodes.remove(3);
    let origin = sender.node.id();
    // Shut down right after the last `broadcast` returned: the leave linger flushes them.
    let mut ids = Vec::new();
    for i in 0..100u32 {
        ids.push(sender.node.broadcast(i.to_be_bytes().to_vec()).await.unwrap());
    }
    sender.node.shutdown().await.unwrap();
    wait_until(Duration::from_secs(10), "all 100 delivered once by the 3 others", || async {
        ids.iter().all(|id| delivered(&nodes, origin, *id) == (3, false))
    })
    .await;
    for n in nodes {
        n.node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_joining_one_contact_at_once_are_symmetric_and_deliver() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let first = start(None, 1).await;
    let contact = first.node.addr();
    let rest = futures_join((1..50).map(|i| start(Some(contact), i + 1))).await;
    let mut nodes = vec![first];
    nodes.extend(rest);
    wait_until(Duration::from_secs(30), "50 nodes with symmetric active views", || overlay_ready(&nodes)).await;
    let views: Vec<usize> = {
        let mut v = Vec::new();
        for n in &nodes {
            v.push(n.node.neighbors().await.unwrap().len());
        }
        v
    };
    assert!(views.iter().all(|k| (1..=5).contains(k)), "active view sizes {views:?}");
    let mut sent = Vec::new();
    for n in nodes.iter().step_by(5) {
        sent.push((n.node.id(), n.node.broadcast(&b"from a concurrent joiner"[..]).await.unwrap()));
    }
    wait_until(Duration::from_secs(30), "every node delivered every message once", || async {
        sent.iter().all(|(o, id)| delivered(&nodes, *o, *id) == (49, false))
    })
    .await;
    for n in nodes {
        n.node.shutdown().await.unwrap();
    }
}

/// Start all futures concurrently and collect their outputs in order.
async fn futures_join<F: std::future::Future<Output = TestNode> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<TestNode> {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

struct SlowHandler {
    seen: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<plumcast::MessageId, u32>>>,
}

impl plumcast::MessageHandler for SlowHandler {
    fn on_message(&mut self, m: &plumcast::Delivered) {
        std::thread::sleep(Duration::from_micros(500));
        *self.seen.lock().unwrap().entry(m.id).or_default() += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handler_slows_the_sender_and_loses_nothing() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let mut config = plumcast::NodeConfig::default();
    config.protocol = plumcast::proto::Config::local();
    config.app_queue = 8;
    config.peer_queue_soft_limit = 32;
    let (sender, _events) = plumcast::Node::builder().config(config.clone()).spawn().await.unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let slow = plumcast::Node::builder()
        .config(config)
        .bootstrap(sender.addr().to_string())
        .spawn_with_handler(SlowHandler { seen: seen.clone() })
        .await
        .unwrap();
    slow.wait_for_neighbors(1, Duration::from_secs(10)).await.unwrap();
    sender.wait_for_neighbors(1, Duration::from_secs(10)).await.unwrap();
    // 2,000 × 8 KiB = 16 MiB: far more than QUIC's flow-control window, so the slow
    // application's backpressure must reach the sender.
    let payload = vec![7u8; 8 << 10];
    let mut ids = Vec::new();
    for i in 0..2000u32 {
        let mut p = payload.clone();
        p[..4].copy_from_slice(&i.to_be_bytes());
        ids.push(sender.broadcast(p).await.unwrap());
    }
    wait_until(Duration::from_secs(60), "the slow node delivered all 2,000 messages", || async {
        seen.lock().unwrap().len() == ids.len()
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert!(ids.iter().all(|id| seen.get(id) == Some(&1)), "every message exactly once");
    let s = sender.stats().await.unwrap();
    assert!(s.net.backpressure_events > 0, "the sender was never held back: {:?}", s.net);
    assert_eq!(s.net.slow_peer_disconnects, 0);
    let ss = slow.stats().await.unwrap();
    assert_eq!(ss.membership.failures_detected, 0, "no false suspicion: {:?} {:?}", ss.membership, s.membership);
    slow.shutdown().await.unwrap();
    sender.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_prompt() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let nodes = cluster(2).await;
    wait_until(Duration::from_secs(10), "overlay", || overlay_ready(&nodes)).await;
    // A graceful leave waits at most the linger for its Disconnects to flush; a second
    // more covers closing the endpoint and draining the tasks.
    let bound = plumcast::NodeConfig::default().shutdown_linger + Duration::from_secs(1);
    for n in nodes {
        let left = tokio::time::timeout(bound, n.node.shutdown()).await;
        assert!(left.is_ok(), "shutdown took longer than {bound:?}");
        left.unwrap().unwrap();
    }
}

/// A newcomer's first program: bootstrap through another node's `SocketAddr`, broadcast a
/// borrowed line (not `'static`), and the other node delivers those bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_takes_a_socket_addr_and_broadcast_takes_borrowed_bytes() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let (a, mut events) = plumcast::Node::builder().protocol(plumcast::proto::Config::local()).spawn().await.unwrap();
    let (b, _b_events) =
        plumcast::Node::builder().protocol(plumcast::proto::Config::local()).bootstrap(a.addr()).spawn().await.unwrap();
    b.wait_for_neighbors(1, Duration::from_secs(10)).await.unwrap();
    let line = String::from("typed at runtime");
    let id = b.broadcast(line.as_bytes()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = events.recv().await {
            if let plumcast::Event::Delivered(d) = ev {
                return Some(d);
            }
        }
        None
    })
    .await
    .expect("delivered within 10 s")
    .expect("a delivery");
    assert_eq!((got.id, &got.payload[..]), (id, line.as_bytes()));
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_own_on_the_builder_delivers_our_own_broadcast_with_hops_0() {
    let _g = SERIAL.lock().await;
    let (node, mut events) = plumcast::Node::builder().deliver_own(true).spawn().await.unwrap();
    let id = node.broadcast(b"to myself").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Some(plumcast::Event::Delivered(d)) => return Some(d),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await
    .expect("delivered within 5 s")
    .expect("a delivery");
    assert_eq!((got.id, got.origin, got.hops, &got.payload[..]), (id, node.id(), 0, &b"to myself"[..]));
    node.shutdown().await.unwrap();
}

/// `Node` is a cloneable handle: clones share one node, dropping one clone leaves the
/// node running, any clone can shut it down (the others then see `Stopped`), and dropping
/// the last clone leaves the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloned_node_is_one_node_and_any_clone_can_shut_it_down() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let nodes = cluster(2).await;
    wait_until(Duration::from_secs(10), "overlay", || overlay_ready(&nodes)).await;
    let (a, b) = (&nodes[0], &nodes[1]);

    // A clone moved into a task broadcasts for the same node; dropping it changes nothing.
    let clone = b.node.clone();
    let id = tokio::spawn(async move { clone.broadcast(b"from a clone").await.unwrap() }).await.unwrap();
    wait_until(Duration::from_secs(10), "delivered", || async { a.record.lock().unwrap().counts.get(&id) == Some(&1) })
        .await;
    assert_eq!(b.node.neighbors().await.unwrap().len(), 1, "the node outlives a dropped clone");

    // Shut down through one clone; the original handle then sees a stopped node.
    let other = b.node.clone();
    other.shutdown().await.unwrap();
    assert!(matches!(b.node.broadcast(b"late").await, Err(plumcast::Error::Stopped)));
    assert!(matches!(b.node.shutdown().await, Err(plumcast::Error::Stopped)));
    wait_until(Duration::from_secs(5), "A no longer lists B", || async {
        a.node.neighbors().await.unwrap().is_empty()
    })
    .await;

    // Dropping every clone of a third node leaves the cluster without a shutdown call.
    let c = start(Some(a.node.addr()), 3).await;
    wait_until(Duration::from_secs(10), "C joined", || async { a.node.neighbors().await.unwrap().len() == 1 }).await;
    let c_clone = c.node.clone();
    drop(c);
    drop(c_clone);
    wait_until(Duration::from_secs(5), "A no longer lists C", || async {
        a.node.neighbors().await.unwrap().is_empty()
    })
    .await;
    assert_eq!(a.node.stats().await.unwrap().membership.failures_detected, 0, "C left; it did not fail");
}
