//! Arbitrary bytes as a frame body from a peer: decoding returns a message or an error,
//! never panics; a message decoded re-encodes to a body that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plumcast::Bytes;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = plumcast::decode_frame(Bytes::copy_from_slice(data)) {
        let again = postcard::to_stdvec(&m).expect("a decoded message encodes");
        let back = plumcast::decode_frame(Bytes::from(again)).expect("a re-encoded message decodes");
        assert_eq!(back, m);
    }
});
