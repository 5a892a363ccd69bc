//! What an authenticated member could send: any payload behind a valid header and CRC (so the
//! fuzzer reaches the decoders, not the checksum); every membership message it decodes to goes
//! through the membership machine, whose view must stay sound, and every bucket-manager call
//! (fragment reports, placements, notes, locks, unlocks, fragment lookups) through a manager
//! of that view.
#![no_main]

use libfuzzer_sys::fuzz_target;
use porcupine_cluster::manager::{Manager, ManagerCall};
use porcupine_cluster::membership::{Member, Membership, Settings};
use porcupine_cluster::placement::PlacementPolicy;
use porcupine_cluster::rpc::{OneWay, ReportFragments, Request};
use porcupine_cluster::wire::{self, FrameKind};

/// A manager of `membership`'s one-node view, complete (its own report is in), takes `call`
/// twice.
fn twice<C: ManagerCall + Clone>(membership: &Membership, call: C)
where
    C::Reply: Send,
{
    let view = membership.view();
    let mut manager = Manager::new(1, PlacementPolicy::default(), 7);
    manager.install(view);
    let _ = manager.report(ReportFragments {
        epoch: view.epoch,
        node: 1,
        users: Vec::new(),
        locks: Vec::new(),
    });
    let _ = call.clone().serve(&mut manager);
    let _ = call.serve(&mut manager);
}

fuzz_target!(|payload: &[u8]| {
    let Some(header_bytes) = wire::header_for(FrameKind::Request, 1, 0, 1, payload) else {
        return;
    };
    let Ok(header) = wire::decode_header(&header_bytes) else {
        return;
    };
    if wire::verify_payload(&header_bytes, &header, payload).is_err() {
        return;
    }
    let me = Member {
        id: 1,
        addr: "127.0.0.1:7946".into(),
    };
    let mut membership = Membership::new(me, &[], Settings::default(), 1_800_000_000_000);
    if let Ok(OneWay::Membership(msg)) = wire::decode::<OneWay>(payload) {
        let mut out = Vec::new();
        membership.receive(1_800_000_000_001, msg, &mut out);
        membership.tick(1_800_000_001_000, &mut out);
        let view = membership.view();
        assert!(!view.members.is_empty());
        assert_eq!(view.map.managers.len(), Settings::default().buckets);
    }
    if let Ok(request) = wire::decode::<Request>(payload) {
        match request {
            Request::ReportFragments(call) => twice(&membership, call),
            Request::PlaceMail(call) => twice(&membership, call),
            Request::NoteFragment(call) => twice(&membership, call),
            Request::LockMaildrop(call) => twice(&membership, call),
            Request::UnlockMaildrop(call) => twice(&membership, call),
            Request::UserFragments(call) => twice(&membership, call),
            // Served by the node's shards, not by a pure machine: decoding is what is fuzzed.
            Request::StoreMessage(_)
            | Request::PushUpdate(_)
            | Request::ListFragment(_)
            | Request::FetchMessage(_)
            | Request::DescribeMessage(_)
            | Request::DeleteMessages(_)
            | Request::Authenticate(_)
            | Request::SyncProfiles(_)
            | Request::HeldDigest(_)
            | Request::HeldItems(_)
            | Request::CurrentEpoch(_)
            | Request::FileMessages(_)
            | Request::ImapRequest(_)
            | Request::UserUsage(_) => {}
        }
    }
    // A peer's report of a user's usage: adding reports up never panics (it saturates), and
    // a report heard twice counts once (each replica set is counted at its largest).
    if let Ok(entries) = wire::decode::<Vec<porcupine_cluster::rpc::UsageEntry>>(payload) {
        use porcupine_cluster::node::quota::merge;
        let once = merge([(1, entries.clone())]);
        assert_eq!(merge([(1, entries.clone()), (1, entries)]), once);
    }
    // A peer's anti-entropy answers: whatever shape they have, comparing them never panics.
    if let Ok(digest) = wire::decode::<porcupine_cluster::anti_entropy::Digest>(payload) {
        use porcupine_cluster::anti_entropy::{differing, Digest, BUCKETS};
        let mine = Digest::default();
        let buckets = differing(&mine, &digest, u16::MAX, BUCKETS);
        assert!(buckets.len() <= BUCKETS);
        assert!(digest.well_formed() || buckets.is_empty());
    }
    if let Ok(held) = wire::decode::<porcupine_cluster::rpc::Held>(payload) {
        let _ = porcupine_cluster::anti_entropy::missing_there(&held.items, &held.items);
    }
});
