//! Gossip frames on the forward path without copies or re-encoding.
//!
//! A Gossip body is `[tag: Broadcast][tag: Gossip][round: varint][envelope]` (postcard),
//! and the envelope ends with the payload. A node forwards the envelope it received
//! unchanged except for the round, so it keeps the envelope's bytes as they arrived and
//! sends `[length][tags][round + 1]` followed by those same bytes, shared by every eager
//! peer (`Bytes` is reference counted and quinn queues chunks without copying). On
//! receipt the payload is a slice of the frame, not a copy. The bytes on the wire are
//! exactly what `encode_frame` would produce: receivers need no change.

use bytes::{BufMut, Bytes, BytesMut};
use plumcast_transport::link::{Codec, Decoded, Frame};
use plumcast_transport::{NodeId, PeerInfo, TransportError, decode_body};
use serde::Deserialize;

use crate::proto::{self, broadcast};

/// The node's codec for its links: every message through postcard, a Gossip with its
/// payload borrowed from the frame and its envelope bytes kept to forward.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WireCodec;

impl Codec for WireCodec {
    type Message = proto::Message<PeerInfo>;

    fn decode(&self, body: Bytes) -> Result<Decoded<Self::Message>, TransportError> {
        decode(body)
    }
}

/// The envelope with its payload borrowed from the frame (same fields, same order as
/// [`broadcast::Envelope`]; the test below holds them together).
#[derive(Deserialize)]
struct EnvelopeRef<'a> {
    origin: NodeId,
    incarnation: u64,
    seq: u64,
    #[serde(borrow)]
    proof: &'a [u8],
    #[serde(borrow)]
    payload: &'a [u8],
}

/// The bytes that open every Gossip body: postcard's variant indices (varints) of
/// `proto::Message::Broadcast` (1) and `broadcast::Message::Gossip` (0). A test encodes a
/// Gossip and checks them, so reordering either enum fails it.
const GOSSIP_TAGS: [u8; 2] = [1, 0];

/// The bytes that open every Repair body (`broadcast::Message::Repair` is variant 5; the
/// same test holds it).
const REPAIR_TAGS: [u8; 2] = [1, 5];

/// Longest frame body of a kind that carries no payload (every kind but Gossip and
/// Repair), bytes, checked before decoding: the largest an honest node sends is an IHave
/// of [`Config::ihave_batch_max`](crate::proto::broadcast::Config::ihave_batch_max) (256)
/// announcements of at most 93 bytes, about 24 KiB, or a digest of about 5 KiB
/// (docs/performance.md). Without it a peer could make us decode 1 MiB
/// ([`plumcast_transport::MAX_FRAME_SIZE`]) of control data per frame.
pub(crate) const CONTROL_FRAME_MAX: usize = 64 << 10;

/// Largest envelope encoding besides the proof and payload bytes: a 32-byte origin, two
/// u64 varints (≤ 10 bytes each) and the proof and payload lengths (≤ 5 each).
const ENVELOPE_HEAD_MAX: usize = 32 + 10 + 10 + 5 + 5;

/// Longest postcard varint of a `u32`, bytes.
const U32_VARINT_MAX: usize = 5;

/// The headers of this many Gossip frames fit one arena allocation, about.
const ARENA_BYTES: usize = 4096;

/// Decode one frame body (without its length prefix).
///
/// # Errors
/// [`TransportError::Frame`] for malformed bytes, an unknown message, or bytes after a
/// Gossip's payload.
pub(crate) fn decode(body: Bytes) -> Result<Decoded<proto::Message<PeerInfo>>, TransportError> {
    if !body.starts_with(&GOSSIP_TAGS) {
        if body.len() > CONTROL_FRAME_MAX && !body.starts_with(&REPAIR_TAGS) {
            return Err(TransportError::Oversized { what: "control frame", len: body.len(), max: CONTROL_FRAME_MAX });
        }
        return Ok(Decoded { message: decode_body(&body)?, raw: None });
    }
    let (round, rest): (u32, &[u8]) = postcard::take_from_bytes(&body[GOSSIP_TAGS.len()..])?;
    let start = body.len() - rest.len();
    let (e, trailing): (EnvelopeRef<'_>, &[u8]) = postcard::take_from_bytes(rest)?;
    if !trailing.is_empty() {
        return Err(TransportError::Frame(postcard::Error::DeserializeBadEncoding));
    }
    let envelope = broadcast::Envelope {
        origin: e.origin,
        incarnation: e.incarnation,
        seq: e.seq,
        proof: body.slice_ref(e.proof),
        payload: body.slice_ref(e.payload),
    };
    let message = proto::Message::Broadcast(broadcast::Message::Gossip { round, envelope });
    Ok(Decoded { message, raw: Some(body.slice(start..)) })
}

/// The envelope's bytes (for a message this node originates or answers a Graft with).
///
/// # Errors
/// [`TransportError::Frame`] if it cannot be encoded.
fn encode_envelope(envelope: &broadcast::Envelope<NodeId>) -> Result<Bytes, TransportError> {
    let mut v = Vec::with_capacity(ENVELOPE_HEAD_MAX + envelope.proof.len() + envelope.payload.len());
    v = postcard::to_extend(envelope, v)?;
    Ok(Bytes::from(v))
}

/// The frame header (length prefix, tags, round) for a Gossip whose envelope bytes are
/// `envelope_len` long, cut from `arena` (one allocation per few hundred headers).
fn gossip_header(arena: &mut BytesMut, round: u32, envelope_len: usize) -> Bytes {
    let mut r = [0u8; U32_VARINT_MAX];
    // A u32 varint takes at most 5 bytes, so the buffer always has room (tested).
    let round = postcard::to_slice(&round, &mut r).expect("a u32 varint fits 5 bytes");
    let head_len = 4 + GOSSIP_TAGS.len() + round.len();
    if arena.capacity() < head_len {
        arena.reserve(ARENA_BYTES);
    }
    let body_len = GOSSIP_TAGS.len() + round.len() + envelope_len;
    arena.put_u32(body_len as u32);
    arena.put_slice(&GOSSIP_TAGS);
    arena.put_slice(round);
    arena.split().freeze()
}

/// The envelope bytes of the Gossip seen last (received, or encoded once here), so that
/// every eager push of it reuses them. A Gossip matches when it carries the very same
/// payload buffer (pinned here, so its address cannot be reused) and the same origin,
/// incarnation and sequence number.
#[derive(Default)]
pub(crate) struct EnvelopeCache {
    last: Option<(broadcast::Envelope<NodeId>, Bytes)>,
    arena: BytesMut,
}

impl EnvelopeCache {
    /// Remember the envelope bytes a Gossip arrived with.
    pub(crate) fn received(&mut self, message: &proto::Message<PeerInfo>, bytes: Bytes) {
        if let proto::Message::Broadcast(broadcast::Message::Gossip { envelope, .. }) = message {
            self.last = Some((envelope.clone(), bytes));
        }
    }

    /// The frame for a Gossip: its header, and its envelope bytes from the cache or
    /// encoded (then cached).
    ///
    /// # Errors
    /// [`TransportError::Frame`] if the envelope cannot be encoded.
    pub(crate) fn gossip(
        &mut self,
        round: u32,
        envelope: &broadcast::Envelope<NodeId>,
    ) -> Result<Frame, TransportError> {
        let hit = self.last.as_ref().filter(|(e, _)| {
            e.payload.as_ptr() == envelope.payload.as_ptr()
                && e.payload.len() == envelope.payload.len()
                && (e.origin, e.incarnation, e.seq) == (envelope.origin, envelope.incarnation, envelope.seq)
        });
        let bytes = match hit {
            Some((_, b)) => b.clone(),
            None => {
                let b = encode_envelope(envelope)?;
                self.last = Some((envelope.clone(), b.clone()));
                b
            }
        };
        let head = gossip_header(&mut self.arena, round, bytes.len());
        Ok(Frame::Split { head, body: bytes })
    }
}

#[cfg(test)]
mod tests {
    use plumcast_transport::encode_frame;

    use super::*;

    fn gossip(round: u32, payload: &[u8]) -> proto::Message<PeerInfo> {
        proto::Message::Broadcast(broadcast::Message::Gossip {
            round,
            envelope: broadcast::Envelope {
                origin: NodeId([7; 32]),
                incarnation: 1_700_000_000_000,
                seq: 300,
                proof: Bytes::from_static(b"proof bytes"),
                payload: Bytes::copy_from_slice(payload),
            },
        })
    }

    #[test]
    fn a_forwarded_frame_is_byte_for_byte_the_encoded_one_and_decodes_without_copy() {
        for (round, len) in [(0, 300), (1, 0), (127, 1), (128, 300), (70_000, 65_536), (u32::MAX, 3)] {
            let m = gossip(round, &vec![9; len]);
            let frame = encode_frame(&m).unwrap();
            let d = decode(frame.slice(4..)).unwrap();
            assert_eq!(d.message, m);
            let env = d.raw.unwrap();
            let proto::Message::Broadcast(broadcast::Message::Gossip { envelope, .. }) = &d.message else {
                panic!("not a gossip")
            };
            // The payload points into the frame: no copy.
            assert!(len == 0 || frame.as_ptr_range().contains(&envelope.payload.as_ptr()));
            assert_eq!(env, encode_envelope(envelope).unwrap());
            let mut arena = BytesMut::new();
            let head = gossip_header(&mut arena, round, env.len());
            assert_eq!([head, env].concat(), frame.to_vec(), "round {round}");
        }
    }

    #[test]
    fn gossip_bodies_open_with_the_tags_and_rounds_take_at_most_5_bytes() {
        for round in [0, 127, 128, 16_383, 16_384, u32::MAX] {
            let body = encode_frame(&gossip(round, b"x")).unwrap().slice(4..);
            assert!(body.starts_with(&GOSSIP_TAGS), "round {round}: {:?}", &body[..4]);
            let mut r = [0u8; U32_VARINT_MAX];
            let varint = postcard::to_slice(&round, &mut r).unwrap();
            assert_eq!(&body[GOSSIP_TAGS.len()..GOSSIP_TAGS.len() + varint.len()], &*varint);
        }
        // No other message opens with the tags.
        let others: [proto::Message<PeerInfo>; 2] = [
            proto::Message::Broadcast(broadcast::Message::IHave(Vec::new())),
            proto::Message::Broadcast(broadcast::Message::Prune { origin: NodeId([0; 32]) }),
        ];
        for m in others {
            assert!(!encode_frame(&m).unwrap().slice(4..).starts_with(&GOSSIP_TAGS), "{m:?}");
        }
    }

    #[test]
    fn repairs_open_with_their_tags_and_control_frames_are_bounded_before_decoding() {
        let repair: proto::Message<PeerInfo> = proto::Message::Broadcast(broadcast::Message::Repair {
            after: None,
            ask: 1,
            envelopes: vec![broadcast::Envelope::new(NodeId([1; 32]), 1, 1, Bytes::from(vec![0; 100_000]))],
            settled: Vec::new(),
            more: false,
        });
        let body = encode_frame(&repair).unwrap().slice(4..);
        assert!(body.starts_with(&REPAIR_TAGS));
        assert!(decode(body).is_ok(), "a repair may carry payloads past the control limit");
        // An IHave of 70,000 bytes is refused on its length alone.
        let mut body = vec![1u8, 1];
        body.resize(CONTROL_FRAME_MAX + 1, 0);
        match decode(Bytes::from(body)) {
            Err(TransportError::Oversized { len, max, .. }) => {
                assert_eq!((len, max), (CONTROL_FRAME_MAX + 1, CONTROL_FRAME_MAX))
            }
            other => panic!("{other:?}"),
        }
        // The largest IHave an honest node sends fits.
        let e = broadcast::Envelope::new(NodeId([3; 32]), u64::MAX, u64::MAX, Bytes::new());
        let ann = broadcast::Announcement {
            id: e.id(),
            origin: e.origin,
            incarnation: u64::MAX,
            seq: u64::MAX,
            round: u32::MAX,
        };
        let ihave: proto::Message<PeerInfo> = proto::Message::Broadcast(broadcast::Message::IHave(vec![
            ann;
            crate::proto::broadcast::config::IHAVE_BATCH_MAX
        ]));
        let f = encode_frame(&ihave).unwrap();
        assert!(f.len() - 4 <= CONTROL_FRAME_MAX, "{} bytes", f.len());
        assert!(decode(f.slice(4..)).is_ok());
    }

    #[test]
    fn other_messages_and_bad_gossip_bodies() {
        let ihave: proto::Message<PeerInfo> = proto::Message::Broadcast(broadcast::Message::IHave(Vec::new()));
        let f = encode_frame(&ihave).unwrap();
        let d = decode(f.slice(4..)).unwrap();
        assert_eq!(d.message, ihave);
        assert!(d.raw.is_none());
        let f = encode_frame(&gossip(3, b"hello")).unwrap();
        let mut long = f.slice(4..).to_vec();
        long.push(0);
        assert!(decode(Bytes::from(long)).is_err(), "bytes after the payload");
        for cut in 0..f.len() - 4 {
            assert!(decode(f.slice(4..4 + cut)).is_err(), "truncated at {cut}");
        }
    }
}

/// Peer bytes never panic the decoder, nor the protocol state fed what it decodes.
#[cfg(test)]
mod decode_props {
    use std::time::{Duration, Instant};

    use plumcast_transport::encode_frame;
    use proptest::prelude::*;
    use rand::SeedableRng;

    use super::*;

    fn peer(n: u8) -> PeerInfo {
        PeerInfo { id: NodeId([n; 32]), addr: format!("127.0.0.1:{}", 7000 + u16::from(n)).parse().unwrap() }
    }

    /// One valid frame body of each broadcast message kind and a membership one.
    fn valid_bodies() -> Vec<Vec<u8>> {
        let e = broadcast::Envelope {
            origin: NodeId([3; 32]),
            incarnation: 1_796_000_000_000,
            seq: 9,
            proof: Bytes::from_static(&[5; 70]),
            payload: Bytes::from_static(b"payload"),
        };
        let key = Some((NodeId([3; 32]), 1_796_000_000_000));
        let head = broadcast::Head { origin: NodeId([3; 32]), incarnation: 1_796_000_000_000, seq: 9 };
        let ann =
            broadcast::Announcement { id: e.id(), origin: e.origin, incarnation: e.incarnation, seq: e.seq, round: 2 };
        let messages: Vec<proto::Message<PeerInfo>> = vec![
            proto::Message::Broadcast(broadcast::Message::Gossip { round: 1, envelope: e.clone() }),
            proto::Message::Broadcast(broadcast::Message::IHave(vec![ann])),
            proto::Message::Broadcast(broadcast::Message::Graft { id: Some(e.id()), origin: e.origin }),
            proto::Message::Broadcast(broadcast::Message::Prune { origin: e.origin }),
            proto::Message::Broadcast(broadcast::Message::Digest {
                heads: vec![head],
                after: key,
                upto: None,
                reply: true,
                joined: false,
                ask: 7,
            }),
            proto::Message::Broadcast(broadcast::Message::Repair {
                after: key,
                ask: 7,
                envelopes: vec![e.clone()],
                settled: vec![broadcast::Settled {
                    origin: e.origin,
                    incarnation: e.incarnation,
                    seq: e.seq + 1,
                    payload_hash: [9; 32],
                    proof: e.proof.clone(),
                }],
                more: true,
            }),
            proto::Message::Membership(crate::proto::membership::Message::Join),
        ];
        messages.iter().map(|m| encode_frame(m).unwrap()[4..].to_vec()).collect()
    }

    /// Decode `body`; feed a decoded message to a node with neighbours 1 and 2 as if peer
    /// 1 had sent it, and peer 2 an hour later.
    fn decode_and_feed(body: Vec<u8>) {
        let Ok(d) = decode(Bytes::from(body)) else { return };
        let rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut s = proto::State::new(peer(0), 1, proto::Config::local(), rng);
        let now = Instant::now();
        for p in [1, 2] {
            // A Join from the peer makes it a neighbour: its Plumtree messages then shape
            // the tree and are answered, not dropped as a stranger's.
            let join = proto::Message::Membership(crate::proto::membership::Message::Join);
            let _ = s.handle(now, proto::Input::Message { from: peer(p), message: join }).count();
        }
        assert_eq!(s.membership().active_view().len(), 2, "both peers are neighbours");
        let _ = s.handle(now, proto::Input::Message { from: peer(1), message: d.message.clone() }).count();
        let _ = s
            .handle(now + Duration::from_secs(3600), proto::Input::Message { from: peer(2), message: d.message })
            .count();
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            decode_and_feed(body);
        }

        #[test]
        fn mutated_valid_frames_never_panic(
            which in 0usize..7,
            edits in proptest::collection::vec((any::<u16>(), any::<u8>(), 0u8..3), 1..8),
        ) {
            let mut body = valid_bodies()[which].clone();
            for (at, byte, op) in edits {
                let i = usize::from(at) % (body.len() + 1);
                match op {
                    0 if i < body.len() => body[i] = byte,
                    1 => body.insert(i, byte),
                    _ => body.truncate(i),
                }
            }
            decode_and_feed(body);
        }
    }

    #[test]
    fn the_valid_bodies_decode() {
        for b in valid_bodies() {
            assert!(decode(Bytes::from(b)).is_ok());
        }
    }
}
