//! The composed protocol state (HyParView + Plumtree, sans-IO) fed an arbitrary sequence
//! of inputs: each step is an opcode byte, a peer byte and, for a message, a postcard
//! frame. The state must never panic, and its tables stay within their bounds.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use plumcast::proto::{self, Config, Input, State, membership};
use rand::SeedableRng;

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut s: State<u32, rand_chacha::ChaCha8Rng> =
        State::new(0, 1, Config::local(), rand_chacha::ChaCha8Rng::seed_from_u64(1));
    let mut now = t0;
    let mut timers = Vec::new();
    let mut rest = data;
    let mut steps = 0;
    while rest.len() >= 2 && steps < 256 {
        steps += 1;
        let (op, peer) = (rest[0], u32::from(rest[1] % 8) + 1);
        rest = &rest[2..];
        let input = match op % 6 {
            0 => Input::Membership(membership::Input::Join { contact: peer }),
            1 => Input::Membership(membership::Input::ConnectionLost { peer }),
            2 => {
                now += Duration::from_millis(u64::from(peer) * 97);
                match timers.pop() {
                    Some(t) => Input::Timer(t),
                    None => continue,
                }
            }
            3 => {
                let Some((&b, tail)) = rest.split_first() else { break };
                rest = tail;
                let _ = s.broadcast(now, vec![b; usize::from(b)].into()).1.count();
                continue;
            }
            _ => match postcard::take_from_bytes::<proto::Message<u32>>(rest) {
                Ok((message, tail)) => {
                    rest = tail;
                    Input::Message { from: peer, message }
                }
                Err(_) => break,
            },
        };
        for o in s.handle(now, input) {
            if let proto::Output::Timer { timer, .. } = o {
                timers.push(timer);
            }
        }
        timers.truncate(1024);
    }
    let b = s.broadcast_state();
    assert!(b.missing_len() <= b.config().max_missing);
    assert!(s.membership().active_view().len() <= s.membership().config().active_view_capacity);
});
