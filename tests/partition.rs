//! A network partition over real QUIC connections: both sides keep working, then become one
//! overlay again after the network heals (HyParView reconnect).

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_partition_becomes_one_overlay_again() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let nodes = cluster(6).await;
    wait_until(Duration::from_secs(20), "overlay formed and symmetric", || overlay_ready(&nodes)).await;
    let (a, b) = nodes.split_at(3);
    let side = |group: &[TestNode]| group.iter().map(|n| n.node.id()).collect::<Vec<_>>();
    let (ids_a, ids_b) = (side(a), side(b));
    for (mine, theirs) in [(a, b), (b, a)] {
        let addrs: Vec<_> = theirs.iter().map(|n| n.node.addr()).collect();
        for n in mine {
            n.node.faults().block(addrs.iter().copied());
        }
    }
    wait_until(Duration::from_secs(30), "two overlays: no active link across the split", || async {
        for (group, other) in [(a, &ids_b), (b, &ids_a)] {
            for n in group {
                let v = n.node.neighbors().await.unwrap();
                if v.is_empty() || v.iter().any(|p| other.contains(&p.id)) {
                    return false;
                }
            }
        }
        true
    })
    .await;
    // Each side still delivers its own broadcasts.
    let id = a[0].node.broadcast(&b"during the split"[..]).await.unwrap();
    wait_until(Duration::from_secs(10), "side A delivers during the split", || async {
        delivered(a, a[0].node.id(), id) == (2, false)
    })
    .await;
    // Keep the split for a few Shuffle rounds (2 s in the local preset), then heal.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for n in &nodes {
        n.node.faults().unblock_all();
    }
    wait_until(Duration::from_secs(30), "one overlay again: an active link across, views symmetric", || async {
        let mut across = false;
        for n in a {
            across |= n.node.neighbors().await.unwrap().iter().any(|p| ids_b.contains(&p.id));
        }
        across && overlay_ready(&nodes).await
    })
    .await;
    let origin = b[2].node.id();
    let id = b[2].node.broadcast(&b"after the heal"[..]).await.unwrap();
    wait_until(Duration::from_secs(10), "every node delivers once after the heal", || async {
        delivered(&nodes, origin, id) == (5, false)
    })
    .await;
    for n in nodes {
        n.node.shutdown().await.unwrap();
    }
}

/// Twenty nodes split in two halves for longer than the payload cache and the catch-up
/// window (both set short here), both halves broadcasting during the split: after the
/// heal, anti-entropy brings every message to every node, exactly once. (Without
/// anti-entropy this test times out: the messages of the split never cross.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_partition_delivers_what_each_side_sent_during_the_split() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let mut protocol = plumcast::proto::Config::local();
    protocol.broadcast.cache_max_age = Duration::from_secs(2);
    protocol.broadcast.catch_up_window = Duration::from_secs(1);
    protocol.broadcast.anti_entropy_interval = Some(Duration::from_secs(1));
    let nodes = cluster_with(20, protocol).await;
    wait_until(Duration::from_secs(30), "overlay formed and symmetric", || overlay_ready(&nodes)).await;
    let (a, b) = nodes.split_at(10);
    for (mine, theirs) in [(a, b), (b, a)] {
        let addrs: Vec<_> = theirs.iter().map(|n| n.node.addr()).collect();
        for n in mine {
            n.node.faults().block(addrs.iter().copied());
        }
    }
    let ids_b: Vec<_> = b.iter().map(|n| n.node.id()).collect();
    wait_until(Duration::from_secs(30), "no active link across the split", || async {
        for n in a {
            if n.node.neighbors().await.unwrap().iter().any(|p| ids_b.contains(&p.id)) {
                return false;
            }
        }
        true
    })
    .await;
    // Both halves broadcast during the split: 10 messages each.
    let mut sent = Vec::new();
    for k in 0..10 {
        for side in [a, b] {
            let n = &side[k % side.len()];
            sent.push((n.node.id(), n.node.broadcast(format!("split {k}")).await.unwrap()));
        }
    }
    // Longer than the cache (2 s) and the catch-up window (1 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    for n in &nodes {
        n.node.faults().unblock_all();
    }
    let healed = wait_for(Duration::from_secs(45), || async {
        sent.iter().all(|(origin, id)| delivered(&nodes, *origin, *id) == (19, false))
    })
    .await;
    if !healed {
        let counts: Vec<(usize, bool)> = sent.iter().map(|(o, id)| delivered(&nodes, *o, *id)).collect();
        // Which nodes (by index; side A is 0-9) lack which message, by its origin's index.
        let index = |id: plumcast::NodeId| nodes.iter().position(|n| n.node.id() == id);
        let lacking: Vec<(Option<usize>, Vec<usize>)> = sent
            .iter()
            .filter_map(|(origin, id)| {
                let without: Vec<usize> = (0..nodes.len())
                    .filter(|&i| nodes[i].node.id() != *origin)
                    .filter(|&i| !nodes[i].record.lock().unwrap().counts.contains_key(id))
                    .collect();
                (!without.is_empty()).then(|| (index(*origin), without))
            })
            .collect();
        let mut views = Vec::new();
        for n in &nodes {
            views.push(n.node.neighbors().await.unwrap().len());
        }
        // What those nodes took as history, and dropped as duplicates.
        let mut without = Vec::new();
        for i in lacking.iter().flat_map(|(_, w)| w.iter().copied()).collect::<std::collections::BTreeSet<_>>() {
            let b = nodes[i].node.stats().await.unwrap().broadcast;
            without.push((i, b.history_adopted, b.duplicates, b.recovered));
        }
        panic!(
            "45 s after the heal, (nodes delivered, any twice) per message: {counts:?}; \
             (origin, nodes without it): {lacking:?}; active views {views:?}; \
             (node without, history keys adopted, duplicates, recovered): {without:?}"
        );
    }
    let mut recovered = 0;
    for n in &nodes {
        recovered += n.node.stats().await.unwrap().broadcast.recovered;
    }
    // Each message crossed the split through anti-entropy: at least 10 nodes × 10 messages.
    assert!(recovered >= 100, "{recovered} messages recovered");
    for n in nodes {
        n.node.shutdown().await.unwrap();
    }
}

/// 5% of the datagrams every node sends are lost, for 30 s of traffic (20 broadcasts a
/// second from rotating senders): every node still delivers every message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_loss_for_30_s_of_traffic_loses_no_message() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let mut protocol = plumcast::proto::Config::local();
    protocol.broadcast.anti_entropy_interval = Some(Duration::from_secs(1));
    let nodes = cluster_with(10, protocol).await;
    wait_until(Duration::from_secs(30), "overlay formed and symmetric", || overlay_ready(&nodes)).await;
    let loss = plumcast::test_util::Impairment { loss: 0.05, delay: Duration::ZERO };
    for (i, n) in nodes.iter().enumerate() {
        n.node.faults().impair(None, loss, i as u64);
    }
    let mut sent = Vec::new();
    let start = tokio::time::Instant::now();
    for k in 0..600usize {
        tokio::time::sleep_until(start + Duration::from_millis(50 * k as u64)).await;
        let n = &nodes[k % nodes.len()];
        sent.push((n.node.id(), n.node.broadcast(format!("lossy {k}")).await.unwrap()));
    }
    let dropped: u64 = nodes.iter().map(|n| n.node.faults().dropped()).sum();
    for n in &nodes {
        n.node.faults().impair(None, plumcast::test_util::Impairment::default(), 0);
    }
    wait_until(Duration::from_secs(30), "every node has every message", || async {
        sent.iter().all(|(origin, id)| delivered(&nodes, *origin, *id).0 == 9)
    })
    .await;
    assert!(sent.iter().all(|(origin, id)| !delivered(&nodes, *origin, *id).1), "a message delivered twice");
    assert!(dropped > 100, "the loss happened: {dropped} datagrams dropped");
    for n in nodes {
        n.node.shutdown().await.unwrap();
    }
}

/// Per-origin FIFO over real QUIC with loss and reordering: every node's sends are lost
/// at 5% and delayed by 0–40 ms depending on the destination, so copies race along
/// paths of different lengths; with `Ordering::PerOrigin` every node still delivers each
/// origin's messages in sequence order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_origin_order_holds_under_reordering_and_loss() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let mut protocol = plumcast::proto::Config::local();
    protocol.broadcast.ordering = plumcast::proto::Ordering::PerOrigin;
    protocol.broadcast.anti_entropy_interval = Some(Duration::from_secs(1));
    let nodes = cluster_with(8, protocol).await;
    wait_until(Duration::from_secs(30), "overlay formed and symmetric", || overlay_ready(&nodes)).await;
    for (i, n) in nodes.iter().enumerate() {
        for (j, m) in nodes.iter().enumerate() {
            let delay = Duration::from_millis(((i * 7 + j * 13) % 5) as u64 * 10);
            let imp = plumcast::test_util::Impairment { loss: 0.05, delay };
            n.node.faults().impair(Some(m.node.addr()), imp, (i * 8 + j) as u64);
        }
    }
    // Two origins, 150 messages each, interleaved.
    let origins = [&nodes[0], &nodes[5]];
    for k in 0..150 {
        for o in origins {
            o.node.broadcast(format!("{k}")).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = 150 * origins.len();
    wait_until(Duration::from_secs(30), "every node delivered every message", || async {
        nodes.iter().all(|n| {
            n.record.lock().unwrap().order.len()
                >= total - if origins.iter().any(|o| o.node.id() == n.node.id()) { 150 } else { 0 }
        })
    })
    .await;
    for n in &nodes {
        let r = n.record.lock().unwrap();
        for o in origins {
            let seqs: Vec<u64> = r.order.iter().filter(|(origin, _)| *origin == o.node.id()).map(|(_, s)| *s).collect();
            if o.node.id() == n.node.id() {
                continue;
            }
            assert_eq!(
                seqs,
                (1..=150).collect::<Vec<_>>(),
                "node {} from {}",
                n.node.id().short(),
                o.node.id().short()
            );
        }
    }
    for n in nodes {
        n.node.shutdown().await.unwrap();
    }
}
