//! A node that broadcasts on its data dir without end (at most 1,000,000 messages) and
//! prints `stored INCARNATION SEQ` once each broadcast has returned, that is once the
//! message is durable. The crash test kills it with SIGKILL at a random moment and checks
//! that every message it reported stored is in the store.

use std::io::Write;
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: plumcast-crash-writer DATA_DIR");
        std::process::exit(2);
    };
    let mut protocol = plumcast::proto::Config::local();
    protocol.broadcast.anti_entropy_interval = Some(Duration::from_secs(60));
    let built = plumcast::Node::builder()
        .bind("127.0.0.1:0".parse().expect("an address"))
        .protocol(protocol)
        .data_dir(&dir)
        .spawn()
        .await;
    let (node, _events) = match built {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let mut out = std::io::stdout().lock();
    for seq in 1..=1_000_000u64 {
        if let Err(e) = node.broadcast(format!("message {seq}")).await {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        if writeln!(out, "stored {} {seq}", node.incarnation()).and_then(|()| out.flush()).is_err() {
            std::process::exit(1);
        }
    }
}
