//! Chat over a plumcast cluster: every line you type is broadcast; every line broadcast by
//! another node is printed.
//!
//! Run one node, then others that join through it (in separate shells):
//!
//! ```text
//! cargo run -p plumcast-examples --example chat -- 127.0.0.1:7000
//! cargo run -p plumcast-examples --example chat -- 127.0.0.1:7001 127.0.0.1:7000
//! cargo run -p plumcast-examples --example chat -- 127.0.0.1:7002 127.0.0.1:7000
//! ```
//!
//! Arguments: `BIND [BOOTSTRAP]`. End with Ctrl-D (EOF): the node leaves gracefully.

use std::time::Duration;

use anyhow::Context;
use plumcast::{Event, Node};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let bind = args.next().unwrap_or_else(|| "127.0.0.1:0".into()).parse().context("BIND must be IP:PORT")?;
    let mut builder = Node::builder().bind(bind);
    if let Some(contact) = args.next() {
        builder = builder.bootstrap(contact);
    }
    let (node, mut events) = builder.spawn().await?;
    eprintln!("chat node {} listening on {}", node.id().short(), node.addr());
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                Event::Delivered(m) => println!("<{}> {}", m.origin.short(), String::from_utf8_lossy(&m.payload)),
                Event::NeighborUp(p) => eprintln!("* {} joined my active view", p.id.short()),
                Event::NeighborDown { peer, reason } => eprintln!("* {} left ({})", peer.id.short(), reason.as_str()),
                Event::Exchanged(x) if x.recovered > 0 => {
                    eprintln!("* {} missed messages recovered from {}", x.recovered, x.peer.short())
                }
                Event::Exchanged(_) => {}
            }
        }
    });
    let _ = node.wait_for_neighbors(1, Duration::from_secs(5)).await;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        node.broadcast(line.into_bytes()).await?;
    }
    node.shutdown().await?;
    Ok(())
}
