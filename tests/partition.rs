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
