//! What an authenticated member could send: any payload behind a valid header and CRC (so the
//! fuzzer reaches the body decoder, not the checksum); every membership message it decodes to
//! goes through the membership machine, whose view must stay sound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use porcupine_cluster::membership::{Member, Membership, Settings};
use porcupine_cluster::wire::{self, Body, FrameKind};

fuzz_target!(|payload: &[u8]| {
    let Some(header_bytes) = wire::header_for(FrameKind::Request, 1, 0, 1, payload) else {
        return;
    };
    let Ok(header) = wire::decode_header(&header_bytes) else {
        return;
    };
    let Ok(body) = wire::decode_payload(&header_bytes, &header, payload) else {
        return;
    };
    if let Body::Membership(msg) = body {
        let me = Member {
            id: 1,
            addr: "127.0.0.1:7946".into(),
        };
        let mut membership = Membership::new(me, &[], Settings::default(), 1_800_000_000_000);
        let mut out = Vec::new();
        membership.receive(1_800_000_000_001, msg, &mut out);
        membership.tick(1_800_000_001_000, &mut out);
        let view = membership.view();
        assert!(!view.members.is_empty());
        assert_eq!(view.map.managers.len(), Settings::default().buckets);
    }
});
