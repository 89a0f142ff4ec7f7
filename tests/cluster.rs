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
    let t = std::time::Instant::now();
    wait_until(Duration::from_secs(20), "overlay formed and symmetric", || overlay_ready(&nodes)).await;
    eprintln!("overlay formed in {:?}", t.elapsed());

    let mut sent = Vec::new();
    for n in &nodes {
        let id = n.node.broadcast(format!("hello from {}", n.node.id().short())).await.unwrap();
        sent.push((n.node.id(), id));
    }
    wait_until(Duration::from_secs(20), "every message delivered by every other node", || async {
        sent.iter().all(|(o, id)| delivered(&nodes, *o, *id) == (19, false))
    })
    .await;

    eprintln!("delivered in {:?}", t.elapsed());
    let t = std::time::Instant::now();
    // Crash 5 of 20 abruptly (no CONNECTION_CLOSE), including the bootstrap node.
    for i in [0, 3, 7, 11, 15].into_iter().rev() {
        nodes.remove(i).node.crash();
    }
    wait_until(Duration::from_secs(30), "survivors healed: no dead peer in any view, symmetric", || async {
        let live: Vec<_> = nodes.iter().map(|n| n.node.id()).collect();
        for n in &nodes {
            let v = n.node.neighbors().await.unwrap();
            if v.is_empty() || v.iter().any(|p| !live.contains(&p.id)) {
                return false;
            }
        }
        overlay_ready(&nodes).await
    })
    .await;
    eprintln!("healed in {:?}", t.elapsed());
    let mut after = Vec::new();
    for n in &nodes {
        after.push((n.node.id(), n.node.broadcast(&b"after the crash"[..]).await.unwrap()));
    }
    wait_until(Duration::from_secs(20), "every survivor's message reached every survivor once", || async {
        after.iter().all(|(o, id)| delivered(&nodes, *o, *id) == (nodes.len() - 1, false))
    })
    .await;
    for n in nodes {
        let t = std::time::Instant::now();
        n.node.shutdown().await.unwrap();
        eprintln!("shutdown in {:?}", t.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_prompt() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let nodes = cluster(2).await;
    wait_until(Duration::from_secs(10), "overlay", || overlay_ready(&nodes)).await;
    for n in nodes {
        let t = std::time::Instant::now();
        n.node.shutdown().await.unwrap();
        eprintln!("shutdown in {:?}", t.elapsed());
    }
}
