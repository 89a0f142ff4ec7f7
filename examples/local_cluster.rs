//! N nodes in one process, library API only: start them, wait for the overlay, broadcast
//! from every node, and check that every node delivered every other node's message.
//!
//! ```text
//! cargo run -p plumcast-examples --example local_cluster -- 10
//! ```

use std::time::Duration;

use plumcast::{Event, Node, proto};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let mut nodes = Vec::new();
    let mut streams = Vec::new();
    let mut contact = None;
    for _ in 0..n {
        let mut b = Node::builder().protocol(proto::Config::local());
        if let Some(c) = contact {
            b = b.bootstrap(format!("{c}"));
        }
        let (node, events) = b.spawn().await?;
        contact.get_or_insert(node.addr());
        nodes.push(node);
        streams.push(events);
    }
    for node in &nodes {
        node.wait_for_neighbors(1, Duration::from_secs(10)).await?;
    }
    for node in &nodes {
        node.broadcast(format!("hello from {}", node.id().short())).await?;
    }
    // Each node should deliver n - 1 messages (not its own).
    let mut total = 0;
    for (i, events) in streams.iter_mut().enumerate() {
        let mut got = 0;
        while got < n - 1 {
            match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                Ok(Some(Event::Delivered(_))) => got += 1,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        println!("node {i}: delivered {got} of {} messages", n - 1);
        total += got;
    }
    println!("{total} of {} deliveries", n * (n - 1));
    for node in nodes {
        node.shutdown().await?;
    }
    anyhow::ensure!(total == n * (n - 1), "some messages were not delivered");
    Ok(())
}
