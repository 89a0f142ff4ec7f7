//! A bad member over real QUIC: forged origins, replays and content the application
//! rejects. Each is dropped at the first honest node, counted, and the hop that sent it
//! is disconnected; the honest nodes deliver everything else exactly once.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use plumcast::proto::{self, Envelope, broadcast};
use plumcast::{Identity, NodeStats, PeerInfo, Validation};
use plumcast_transport::{Hello, TransportConfig, bind, encode_frame};

/// A member that speaks the wire format itself: connected to `target` as `identity`, it
/// sends its Hello, then whatever frames the test writes.
struct Member {
    identity: Identity,
    conn: quinn::Connection,
    send: quinn::SendStream,
    _endpoint: quinn::Endpoint,
}

impl Member {
    async fn connect(target: std::net::SocketAddr) -> Self {
        let identity = Identity::generate().unwrap();
        let open = plumcast_transport::Admission::open();
        let (endpoint, _faults) =
            bind("127.0.0.1:0".parse().unwrap(), &identity, &TransportConfig::default(), &open).unwrap();
        let conn = endpoint.connect(target, plumcast_transport::SERVER_NAME).unwrap().await.unwrap();
        let mut send = conn.open_uni().await.unwrap();
        let hello = Hello {
            version: plumcast_transport::WIRE_VERSION,
            cluster: "plumcast".into(),
            addr: endpoint.local_addr().unwrap(),
            signed: true,
        };
        send.write_all(&encode_frame(&hello).unwrap()).await.unwrap();
        Self { identity, conn, send, _endpoint: endpoint }
    }

    async fn gossip(&mut self, envelope: Envelope<plumcast::NodeId>) {
        let m: proto::Message<PeerInfo> = proto::Message::Broadcast(broadcast::Message::Gossip { round: 0, envelope });
        self.send.write_all(&encode_frame(&m).unwrap()).await.unwrap();
    }

    /// One of our own messages, signed.
    fn signed(&self, seq: u64, payload: &'static [u8]) -> Envelope<plumcast::NodeId> {
        let mut e = Envelope::new(self.identity.node_id(), 1_796_000_000_000, seq, Bytes::from_static(payload));
        plumcast::sign::sign_alone(&self.identity, &mut e).unwrap();
        e
    }

    async fn closed_by_node(&self) -> String {
        match tokio::time::timeout(Duration::from_secs(10), self.conn.closed()).await {
            Ok(quinn::ConnectionError::ApplicationClosed(c)) => String::from_utf8_lossy(&c.reason).into_owned(),
            Ok(other) => format!("{other}"),
            Err(_) => panic!("the node did not close the member's connection"),
        }
    }
}

async fn stats(nodes: &[TestNode]) -> Vec<NodeStats> {
    let mut v = Vec::new();
    for n in nodes {
        v.push(n.node.stats().await.unwrap());
    }
    v
}

/// How many nodes delivered a message of `origin` with sequence number `seq`.
fn delivered_seq(nodes: &[TestNode], origin: plumcast::NodeId, seq: u64) -> usize {
    nodes.iter().filter(|n| n.record.lock().unwrap().order.contains(&(origin, seq))).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_forging_another_nodes_message_is_disconnected_and_the_real_one_still_delivers() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let nodes = cluster(3).await;
    wait_until(Duration::from_secs(10), "overlay", || overlay_ready(&nodes)).await;
    let victim = nodes[1].node.id();
    let mut member = Member::connect(nodes[0].node.addr()).await;
    // Node 1's next message, seq 1 of its incarnation, with the member's payload and a
    // proof the member made with its own key (valid for the member, not for node 1).
    let mut forged = member.signed(1, b"forged");
    forged.origin = victim;
    forged.incarnation = nodes[1].node.incarnation();
    forged.seq = 1;
    member.gossip(forged).await;
    assert_eq!(member.closed_by_node().await, "sent a forged message");
    let s = stats(&nodes).await;
    assert_eq!((s[0].broadcast.forged, s[0].net.forged_closed), (1, 1));
    assert_eq!(delivered_seq(&nodes, victim, 1), 0, "nobody delivered the forgery");
    // The forgery was not marked seen: node 1's real seq 1 reaches everyone.
    let id = nodes[1].node.broadcast(&b"real"[..]).await.unwrap();
    wait_until(Duration::from_secs(10), "the real message everywhere", || async {
        delivered(&nodes, victim, id) == (2, false)
    })
    .await;
    let s = stats(&nodes).await;
    assert_eq!(s[0].signatures.verifications, 2, "node 0 checked the forgery and the real one");
    assert_eq!(s[2].signatures.verifications, 1, "node 2 checked the real one");
    assert_eq!(s.iter().map(|s| s.broadcast.forged).sum::<u64>(), 1, "the forgery stopped at node 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_signed_message_is_delivered_once_everywhere() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let nodes = cluster(3).await;
    wait_until(Duration::from_secs(10), "overlay", || overlay_ready(&nodes)).await;
    let mut member = Member::connect(nodes[0].node.addr()).await;
    let origin = member.identity.node_id();
    let e = member.signed(1, b"once");
    let id = e.id();
    for _ in 0..5 {
        member.gossip(e.clone()).await;
    }
    wait_until(Duration::from_secs(10), "the member's message everywhere", || async {
        delivered(&nodes, origin, id) == (3, false)
    })
    .await;
    // The replays were duplicates: counted as such, never checked or delivered again.
    wait_until(Duration::from_secs(5), "the replays counted", || async {
        stats(&nodes).await[0].broadcast.duplicates >= 4
    })
    .await;
    let s = stats(&nodes).await;
    assert_eq!(s[0].signatures.verifications, 1, "one verification at node 0 for five copies");
    assert_eq!(delivered(&nodes, origin, id), (3, false), "delivered once each, no duplicates");
    assert!(s.iter().all(|s| s.broadcast.forged == 0 && s.net.forged_closed == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_the_validator_rejects_stops_at_the_first_honest_node() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let mut nodes: Vec<TestNode> = Vec::new();
    for i in 0..3u64 {
        let mut b = plumcast::Node::builder()
            .protocol(proto::Config::local())
            .rng_seed(i + 1)
            .validator(|c| if c.payload.starts_with(b"bad") { Validation::Reject } else { Validation::Accept });
        if let Some(first) = nodes.first() {
            b = b.bootstrap(first.node.addr());
        }
        nodes.push(TestNode::record(b).await);
    }
    wait_until(Duration::from_secs(10), "overlay", || overlay_ready(&nodes)).await;
    let mut member = Member::connect(nodes[0].node.addr()).await;
    let origin = member.identity.node_id();
    member.gossip(member.signed(1, b"bad content")).await;
    assert_eq!(member.closed_by_node().await, "sent a rejected message");
    let s = stats(&nodes).await;
    assert_eq!((s[0].broadcast.rejected, s[0].net.rejected_closed), (1, 1));
    assert_eq!(s[1].broadcast.rejected + s[2].broadcast.rejected, 0, "never forwarded");
    assert_eq!(delivered_seq(&nodes, origin, 1), 0);
    // The honest nodes' own traffic is untouched, the validator seeing it too.
    let id = nodes[2].node.broadcast(&b"good"[..]).await.unwrap();
    wait_until(Duration::from_secs(10), "a good message everywhere", || async {
        delivered(&nodes, nodes[2].node.id(), id) == (2, false)
    })
    .await;
}

impl Member {
    async fn send(&mut self, m: proto::Message<PeerInfo>) -> bool {
        self.send.write_all(&encode_frame(&m).unwrap()).await.is_ok()
    }
}

/// This process's resident memory, bytes (Linux).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Honest traffic during a flood: node 1 broadcasts `m` messages; every honest node but
/// the origin must deliver each exactly once.
async fn honest_traffic(nodes: &[TestNode], m: usize, what: &str) {
    let origin = nodes[1].node.id();
    let mut ids = Vec::new();
    for k in 0..m {
        ids.push(nodes[1].node.broadcast(format!("honest {k}").into_bytes()).await.unwrap());
    }
    let n = nodes.len() - 1;
    wait_until(Duration::from_secs(30), &format!("every honest message delivered during the {what}"), || async {
        ids.iter().all(|id| delivered(nodes, origin, *id) == (n, false))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_ihaves_grafts_and_joins_from_a_member_stay_bounded_and_every_honest_message_delivers() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let nodes = cluster(4).await;
    wait_until(Duration::from_secs(10), "overlay", || overlay_ready(&nodes)).await;
    honest_traffic(&nodes, 50, "warm-up").await;
    let rss0 = rss_bytes();
    let mut member = Member::connect(nodes[0].node.addr()).await;
    // A Join makes the member node 0's neighbour: its IHaves and Grafts are taken.
    assert!(member.send(proto::Message::Membership(proto::membership::Message::Join)).await);
    wait_until(Duration::from_secs(5), "the member in node 0's active view", || async {
        nodes[0].node.neighbors().await.unwrap().iter().any(|p| p.id == member.identity.node_id())
    })
    .await;
    let victim = nodes[2].node.id();
    // Each flood runs beside 100 honest broadcasts; the RSS after each is printed.
    let mut rss = vec![("before", rss0)];
    let ihaves = async {
        // 200,000 announcements of made-up messages, in IHaves of 250.
        for batch in 0..800u64 {
            let anns: Vec<broadcast::Announcement<plumcast::NodeId>> = (0..250u64)
                .map(|k| {
                    let e = Envelope::new(victim, 7, batch * 250 + k + 1, Bytes::new());
                    broadcast::Announcement {
                        id: e.id(),
                        origin: victim,
                        incarnation: 7,
                        seq: batch * 250 + k + 1,
                        round: 0,
                    }
                })
                .collect();
            if !member.send(proto::Message::Broadcast(broadcast::Message::IHave(anns))).await {
                break;
            }
        }
    };
    let (_, ()) = tokio::join!(ihaves, honest_traffic(&nodes, 100, "IHave flood"));
    rss.push(("IHave flood", rss_bytes()));
    let grafts = async {
        // 10,000 Grafts, 5,000 of them for made-up ids.
        for k in 0..5000u64 {
            let e = Envelope::new(victim, 7, k + 1, Bytes::new());
            let graft = broadcast::Message::Graft { id: Some(e.id()), origin: victim };
            let tree = broadcast::Message::Graft { id: None, origin: victim };
            if !member.send(proto::Message::Broadcast(graft)).await
                || !member.send(proto::Message::Broadcast(tree)).await
            {
                break;
            }
        }
    };
    let (_, ()) = tokio::join!(grafts, honest_traffic(&nodes, 100, "Graft flood"));
    rss.push(("Graft flood", rss_bytes()));
    let joins = async {
        for _ in 0..1000 {
            if !member.send(proto::Message::Membership(proto::membership::Message::Join)).await {
                break;
            }
        }
    };
    let (_, ()) = tokio::join!(joins, honest_traffic(&nodes, 100, "Join flood"));
    rss.push(("Join flood", rss_bytes()));
    for (what, bytes) in &rss {
        eprintln!("test process RSS {what}: {} MiB", bytes >> 20);
    }
    let s = nodes[0].node.stats().await.unwrap();
    let rss1 = rss.iter().map(|(_, b)| *b).max().unwrap_or(0);
    eprintln!(
        "flood at node 0: announcements {} (over share {}), missing {}, grafts {} (misses {}, refused {}), joins limited {}, \
         cache {:?}, tasks {}",
        s.broadcast.announcements_received,
        s.broadcast.missing_over_share,
        s.missing,
        s.broadcast.grafts_received,
        s.broadcast.graft_misses,
        s.broadcast.grafts_refused,
        s.membership.joins_limited,
        s.cache,
        s.tasks,
    );
    let max_missing = proto::Config::local().broadcast.max_missing;
    assert!(s.missing <= max_missing / 4 + 400, "missing table {} of {max_missing}", s.missing);
    assert!(s.broadcast.missing_over_share > 0, "the member's share filled");
    assert!(s.membership.joins_limited > 0, "the Joins were cut to their rate");
    // Memory stays bounded: the tables above, not the 200,000 announcements.
    assert!(rss1 < rss0 + (256 << 20), "RSS grew from {} to {} MiB", rss0 >> 20, rss1 >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused_and_the_node_serves_its_peers() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let mut nodes: Vec<TestNode> = Vec::new();
    for i in 0..3u64 {
        let mut b = plumcast::Node::builder().protocol(proto::Config::local()).rng_seed(i + 1).max_connections(16);
        if let Some(first) = nodes.first() {
            b = b.bootstrap(first.node.addr());
        }
        nodes.push(TestNode::record(b).await);
    }
    wait_until(Duration::from_secs(10), "overlay", || overlay_ready(&nodes)).await;
    // 40 strangers connect and stay silent (no Hello).
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        let identity = Identity::generate().unwrap();
        let open = plumcast_transport::Admission::open();
        let (endpoint, _f) =
            bind("127.0.0.1:0".parse().unwrap(), &identity, &TransportConfig::default(), &open).unwrap();
        match endpoint.connect(nodes[0].node.addr(), plumcast_transport::SERVER_NAME).unwrap().await {
            Ok(conn) => held.push((endpoint, conn)),
            Err(_) => refused += 1,
        }
    }
    let s = nodes[0].node.stats().await.unwrap();
    eprintln!("{} of 40 held, {refused} refused; node 0 tasks {}", held.len(), s.tasks);
    assert!(s.tasks <= 16, "{} tasks", s.tasks);
    assert!(
        refused > 0 && s.net.connections_refused >= refused as u64,
        "{refused} refused, counted {}",
        s.net.connections_refused
    );
    honest_traffic(&nodes, 100, "connection flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_reading_is_shed_and_the_others_are_served() {
    let _g = SERIAL.lock().await;
    init_tracing();
    let mut nodes: Vec<TestNode> = Vec::new();
    for i in 0..3u64 {
        let mut config = plumcast::NodeConfig::default();
        config.protocol = proto::Config::local();
        config.peer_queue_hard_limit = 500;
        let mut b = plumcast::Node::builder().config(config).rng_seed(i + 1);
        if let Some(first) = nodes.first() {
            b = b.bootstrap(first.node.addr());
        }
        nodes.push(TestNode::record(b).await);
    }
    wait_until(Duration::from_secs(10), "overlay", || overlay_ready(&nodes)).await;
    // The member joins node 0, then never reads a byte: node 0's frames to it pile up
    // behind QUIC flow control.
    let mut member = Member::connect(nodes[0].node.addr()).await;
    assert!(member.send(proto::Message::Membership(proto::membership::Message::Join)).await);
    wait_until(Duration::from_secs(5), "the member in node 0's active view", || async {
        nodes[0].node.neighbors().await.unwrap().iter().any(|p| p.id == member.identity.node_id())
    })
    .await;
    honest_traffic(&nodes, 3000, "stalled member").await;
    let s = nodes[0].node.stats().await.unwrap();
    assert!(s.net.slow_peer_disconnects >= 1, "the member was not shed: {:?}", s.net);
    assert!(!nodes[0].node.neighbors().await.unwrap().iter().any(|p| p.id == member.identity.node_id()));
}
