//! Arbitrary proof bytes on an envelope: the check says yes or no, never panics, and says
//! yes only to the proof the origin made.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use plumcast::proto::Envelope;
use plumcast::proto::broadcast::Authenticator;
use plumcast::{Bytes, Identity};

fn origin() -> &'static (Identity, Bytes) {
    static ORIGIN: OnceLock<(Identity, Bytes)> = OnceLock::new();
    ORIGIN.get_or_init(|| {
        let id = Identity::generate().unwrap();
        let mut e = Envelope::new(id.node_id(), 1, 1, Bytes::from_static(b"payload"));
        plumcast::sign::sign_alone(&id, &mut e).unwrap();
        (id, e.proof)
    })
}

fuzz_target!(|data: &[u8]| {
    let (id, real) = origin();
    let mut checker = plumcast::sign::Signatures::new(&Identity::generate().unwrap()).unwrap();
    let mut e = Envelope::new(id.node_id(), 1, 1, Bytes::from_static(b"payload"));
    e.proof = Bytes::copy_from_slice(data);
    let ok = checker.verify(&e, &e.id());
    assert_eq!(ok, data == &real[..], "only the origin's proof passes");
});
