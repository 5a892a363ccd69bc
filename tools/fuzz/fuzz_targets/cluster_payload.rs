//! What an authenticated member could send: any payload behind a valid header and CRC (so the
//! fuzzer reaches the body decoder, not the checksum); every membership message it decodes to
//! goes through the membership machine, whose view must stay sound, and every bucket-manager
//! request (fragment reports, placements, locks, unlocks) through a manager of that view.
#![no_main]

use libfuzzer_sys::fuzz_target;
use porcupine_cluster::manager::Manager;
use porcupine_cluster::membership::{Member, Membership, Settings};
use porcupine_cluster::placement::PlacementPolicy;
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
    let me = Member {
        id: 1,
        addr: "127.0.0.1:7946".into(),
    };
    let mut membership = Membership::new(me, &[], Settings::default(), 1_800_000_000_000);
    match body {
        Body::Membership(msg) => {
            let mut out = Vec::new();
            membership.receive(1_800_000_000_001, msg, &mut out);
            membership.tick(1_800_000_001_000, &mut out);
            let view = membership.view();
            assert!(!view.members.is_empty());
            assert_eq!(view.map.managers.len(), Settings::default().buckets);
        }
        body @ (Body::Fragments { .. }
        | Body::Place { .. }
        | Body::Noted { .. }
        | Body::Lock { .. }
        | Body::Unlock { .. }) => {
            // A manager of a one-node view, complete (its own report is in), takes it.
            let view = membership.view();
            let mut manager = Manager::new(1, PlacementPolicy::default(), 7);
            manager.install(&view);
            manager.handle(Body::Fragments {
                epoch: view.epoch,
                node: 1,
                users: Vec::new(),
                locks: Vec::new(),
            });
            let _ = manager.handle(body.clone());
            let _ = manager.handle(body);
        }
        _ => {}
    }
});
