//! Bad input over real QUIC: a raw client speaks garbage to a node. Each case closes that
//! one connection with a logged reason and a counter, and the node keeps serving others.

mod common;

use std::time::Duration;

use std::sync::{Arc, Mutex};

use common::*;
use plumcast::proto::Config;
use plumcast::{Event, Events, Identity, Node, NodeId, NodeStats};
use plumcast_transport::{Hello, TransportConfig, bind, client_config, encode_frame};

/// Connect to `target` as a fresh identity, send `hello` then `raw` bytes, and return the
/// connection (kept open so the node is the one closing it).
async fn raw_client(target: std::net::SocketAddr, hello: &Hello, raw: &[u8]) -> quinn::Connection {
    let identity = Identity::generate().unwrap();
    let (endpoint, _faults) = bind(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        &TransportConfig::default(),
        &plumcast_transport::Admission::open(),
    )
    .unwrap();
    let conn = endpoint.connect(target, plumcast_transport::SERVER_NAME).unwrap().await.unwrap();
    let mut send = conn.open_uni().await.unwrap();
    send.write_all(&encode_frame(hello).unwrap()).await.unwrap();
    send.write_all(raw).await.unwrap();
    conn
}

fn hello(cluster: &str) -> Hello {
    Hello {
        version: plumcast_transport::WIRE_VERSION,
        cluster: cluster.into(),
        addr: "127.0.0.1:9".parse().unwrap(),
        signed: true,
    }
}

async fn stats(n: &TestNode) -> NodeStats {
    n.node.stats().await.unwrap()
}

/// After the bad connection, a normal node still joins and a broadcast goes through.
async fn still_serves(nodes: &mut Vec<TestNode>) {
    let contact = nodes[0].node.addr();
    nodes.push(start(Some(contact), 99 + nodes.len() as u64).await);
    wait_until(Duration::from_secs(10), "overlay with the new node", || overlay_ready(nodes)).await;
    let origin = nodes[0].node.id();
    let id = nodes[0].node.broadcast(&b"still here"[..]).await.unwrap();
    wait_until(Duration::from_secs(10), "delivery after bad input", || async {
        delivered(nodes, origin, id) == (nodes.len() - 1, false)
    })
    .await;
}

async fn closed_by_node(conn: &quinn::Connection) -> String {
    match tokio::time::timeout(Duration::from_secs(10), conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => String::from_utf8_lossy(&c.reason).into_owned(),
        Ok(other) => format!("{other}"),
        Err(_) => panic!("the node did not close the connection"),
    }
}

/// A raw client sends `hello` then `raw`; the node must close that connection with
/// `reason`, count it once in `counter`, and keep serving everyone else.
async fn refused(hello: Hello, raw: &[u8], reason: &str, counter: fn(&NodeStats) -> u64) {
    let _g = SERIAL.lock().await;
    init_tracing();
    let mut nodes = cluster(2).await;
    let conn = raw_client(nodes[0].node.addr(), &hello, raw).await;
    assert_eq!(closed_by_node(&conn).await, reason);
    wait_until(Duration::from_secs(5), "the refusal counted", || async { counter(&stats(&nodes[0]).await) == 1 }).await;
    still_serves(&mut nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frame_closes_only_that_connection() {
    // Variant 1 (Broadcast), variant 0 (Gossip), then a truncated varint.
    refused(hello("plumcast"), &[0, 0, 0, 4, 1, 0, 0xff, 0xff], "malformed frame", |s| s.net.malformed_frames).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_closes_only_that_connection() {
    // Top-level variant 7 does not exist.
    refused(hello("plumcast"), &[0, 0, 0, 1, 7], "malformed frame", |s| s.net.malformed_frames).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_only_that_connection() {
    refused(hello("plumcast"), &[0x7f, 0xff, 0xff, 0xff, 1, 2, 3], "frame too large", |s| s.net.oversized_frames).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_cluster_is_refused() {
    refused(hello("other-cluster"), &[], "wrong cluster", |s| s.net.cluster_mismatches).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_wire_version_is_refused() {
    let old = Hello { version: plumcast_transport::WIRE_VERSION - 1, ..hello("plumcast") };
    refused(old, &[], "wrong version", |s| s.net.version_mismatches).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_the_other_signing_mode_is_refused() {
    let unsigned = Hello { signed: false, ..hello("plumcast") };
    refused(unsigned, &[], "wrong signing mode", |s| s.net.signing_mismatches).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_id_mismatch_is_rejected_in_the_handshake() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let mut nodes = cluster(2).await;
    let identity = Identity::generate().unwrap();
    let config = TransportConfig::default();
    let open = plumcast_transport::Admission::open();
    let (endpoint, _faults) = bind("127.0.0.1:0".parse().unwrap(), &identity, &config, &open).unwrap();
    // Expect some other node's id at node 0's address: hearsay that lies.
    let wrong = nodes[1].node.id();
    let cfg = client_config(&identity, Some(wrong), &config, &open).unwrap();
    let err = endpoint.connect_with(cfg, nodes[0].node.addr(), plumcast_transport::SERVER_NAME).unwrap().await;
    let err = err.expect_err("the handshake must fail");
    // rustls shows the verifier's error by its Debug form.
    let want = format!("IdMismatch {{ want: {wrong:?}, got: {:?} }}", nodes[0].node.id());
    assert!(format!("{err}").contains(&want), "{err} (wanted {want:?})");
    // The right id is accepted.
    let cfg = client_config(&identity, Some(nodes[0].node.id()), &config, &open).unwrap();
    endpoint.connect_with(cfg, nodes[0].node.addr(), plumcast_transport::SERVER_NAME).unwrap().await.unwrap();
    wait_until(Duration::from_secs(5), "handshake failure counted", || async {
        stats(&nodes[0]).await.net.handshake_failures >= 1
    })
    .await;
    still_serves(&mut nodes).await;
}

/// The neighbour events a node emitted, in order: `(up, peer)`.
fn watch(mut events: Events) -> Arc<Mutex<Vec<(bool, NodeId)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                Event::NeighborUp(p) => s.lock().unwrap().push((true, p.id)),
                Event::NeighborDown { peer, .. } => s.lock().unwrap().push((false, peer.id)),
                Event::Delivered(_) | Event::Exchanged(_) => {}
            }
        }
    });
    seen
}

/// A stranger whose certificate holds node A's key bytes in its subject, ahead of its own
/// key in the real SubjectPublicKeyInfo, joins through B: B must take it for itself, never
/// for A, so the A–B link never goes down. Ten tries, each a fresh stranger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_take_another_nodes_identity() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let (a, a_events) = Node::builder().protocol(Config::local()).rng_seed(1).spawn().await.unwrap();
    let (b, b_events) =
        Node::builder().protocol(Config::local()).rng_seed(2).bootstrap(a.addr()).spawn().await.unwrap();
    let (a_seen, b_seen) = (watch(a_events), watch(b_events));
    b.wait_for_neighbors(1, Duration::from_secs(10)).await.unwrap();
    a.wait_for_neighbors(1, Duration::from_secs(10)).await.unwrap();
    let honest = [a.id(), b.id()];
    for attempt in 0..10 {
        let own = Identity::generate().unwrap();
        let crafted = plumcast_transport::test_util::impersonating(&own, a.id()).unwrap();
        let (stranger, _events) =
            Node::builder().protocol(Config::local()).identity(crafted).bootstrap(b.addr()).spawn().await.unwrap();
        wait_until(Duration::from_secs(10), "B takes the stranger for itself", || async {
            b_seen.lock().unwrap().contains(&(true, own.node_id()))
        })
        .await;
        for (who, seen) in [("A", &a_seen), ("B", &b_seen)] {
            let downs: Vec<NodeId> =
                seen.lock().unwrap().iter().filter(|(up, p)| !up && honest.contains(p)).map(|(_, p)| *p).collect();
            assert!(downs.is_empty(), "try {attempt}: {who} lost honest links to {downs:?}");
        }
        assert!(b.neighbors().await.unwrap().iter().any(|p| p.id == a.id()), "try {attempt}: B still has A");
        stranger.shutdown().await.unwrap();
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_contact_without_a_port_is_refused_at_spawn() {
    for (contact, says) in [("127.0.0.1", "has no port"), (":7000", "has no host"), ("localhost:0", "is not a port")] {
        let e = Node::builder().bootstrap(contact).spawn().await.expect_err(contact);
        let text = e.to_string();
        assert!(matches!(e, plumcast::Error::Config(_)) && text.contains(says) && text.contains(contact), "{text}");
    }
    for ok in ["127.0.0.1:7000", "[::1]:7000", "example.invalid:7000"] {
        assert_eq!(plumcast::config::check_contact(ok), Ok(()), "{ok}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_is_named_in_one_error_line() {
    let _g = SERIAL.lock().await;
    let (first, _events) = Node::builder().spawn().await.unwrap();
    let e = Node::builder().bind(first.addr()).spawn().await.expect_err("the port is taken");
    // Printed as a chain, the way `anyhow`'s `{:#}` and most CLIs do: the cause once.
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        chain = format!("{chain}: {s}");
        source = s.source();
    }
    assert!(chain.contains(&format!("cannot bind UDP {}", first.addr())), "{chain}");
    assert_eq!(chain.matches("Address already in use").count(), 1, "{chain}");
    assert_eq!(first.info().to_string(), format!("{}@{}", first.id().short(), first.addr()));
    first.shutdown().await.unwrap();
}

/// A name that does not resolve, and a contact of another cluster: the wait for a
/// neighbour ends with an error that says why the last dial failed, and the retries back
/// off (0.5 s doubling, the LAN preset) instead of dialing at full rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_for_neighbors_names_the_last_dial_failure_and_retries_back_off() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let wait = Duration::from_secs(4);

    let (lost, _events) = Node::builder().bootstrap("nosuchhost.invalid:7000").spawn().await.unwrap();
    let e = lost.wait_for_neighbors(1, wait).await.expect_err("nothing to join");
    let text = e.to_string();
    assert!(
        matches!(&e, plumcast::Error::NoNeighbors { have: 0, wanted: 1, last_dial_failure: Some(r), .. }
            if r.contains("cannot resolve nosuchhost.invalid:7000")),
        "{text}"
    );
    assert!(text.contains("last dial failure") && !text.contains("0.0.0.0:0"), "{text}");
    lost.shutdown().await.unwrap();

    let (x, _x_events) = Node::builder().cluster("x").spawn().await.unwrap();
    let (y, _y_events) = Node::builder().cluster("y").bootstrap(x.addr()).spawn().await.unwrap();
    let e = y.wait_for_neighbors(1, wait).await.expect_err("another cluster");
    assert!(
        matches!(&e, plumcast::Error::NoNeighbors { last_dial_failure: Some(r), .. } if r.contains("another cluster")),
        "{e}"
    );
    // Attempts at 0, 0.5, 1.5 and 3.5 s: four in 4 s (five allows for scheduling).
    let dials = y.stats().await.unwrap().net.dial_failures;
    let refused = x.stats().await.unwrap().net.cluster_mismatches;
    assert!((2..=5).contains(&dials), "{dials} failed dials in {wait:?}");
    assert!((2..=5).contains(&refused), "{refused} refusals in {wait:?}");
    y.shutdown().await.unwrap();
    x.shutdown().await.unwrap();
}
