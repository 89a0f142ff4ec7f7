//! A `MessageHandler` that validates and counts: messages must be UTF-8 JSON-ish text
//! starting with `{`; valid ones are counted per origin, invalid ones are counted and
//! ignored. Three nodes in one process exchange a few messages and print the counts.
//!
//! ```text
//! cargo run -p plumcast-examples --example custom_handler
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plumcast::{Delivered, DownReason, MessageHandler, Node, NodeId, PeerInfo};

#[derive(Default, Debug)]
struct Counts {
    valid: BTreeMap<NodeId, u64>,
    invalid: u64,
    neighbors: i64,
}

/// Validates each payload and counts it. Runs on the node's handler thread: it may block
/// briefly; a slow handler slows the senders down but loses nothing.
struct Validator {
    counts: Arc<Mutex<Counts>>,
}

impl MessageHandler for Validator {
    fn on_message(&mut self, m: &Delivered) {
        let ok = std::str::from_utf8(&m.payload).is_ok_and(|s| s.trim_start().starts_with('{'));
        let mut c = self.counts.lock().expect("counts lock");
        if ok {
            *c.valid.entry(m.origin).or_default() += 1;
        } else {
            c.invalid += 1;
        }
    }

    fn on_neighbor_up(&mut self, _peer: &PeerInfo) {
        self.counts.lock().expect("counts lock").neighbors += 1;
    }

    fn on_neighbor_down(&mut self, _peer: &PeerInfo, _reason: DownReason) {
        self.counts.lock().expect("counts lock").neighbors -= 1;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let (a, _a_events) = Node::builder().spawn().await?;
    let b = Node::builder()
        .bootstrap(a.addr().to_string())
        .spawn_with_handler(Validator { counts: counts.clone() })
        .await?;
    let (c, _c_events) = Node::builder().bootstrap(a.addr().to_string()).spawn().await?;
    b.wait_for_neighbors(1, Duration::from_secs(5)).await?;
    c.wait_for_neighbors(1, Duration::from_secs(5)).await?;
    for i in 0..5 {
        a.broadcast(format!("{{\"n\":{i}}}")).await?;
        c.broadcast(format!("{{\"from\":\"c\",\"n\":{i}}}")).await?;
    }
    c.broadcast(&b"not json"[..]).await?;
    // Wait (bounded) for the 11 messages to reach b.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let done = {
            let c = counts.lock().expect("counts lock");
            c.valid.values().sum::<u64>() + c.invalid >= 11
        };
        if done || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("{:#?}", counts.lock().expect("counts lock"));
    for n in [a, b, c] {
        n.shutdown().await?;
    }
    Ok(())
}
