//! The hash chain detects every kind of tampering, and an intact chain verifies.

use std::collections::BTreeMap;

use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;
use rampart_audit::{
    AuditEntry, AuditRecord, Checkpoint, FindingKind, GENESIS_HASH, Outcome, SignedHead, Verifier, checkpoint_message,
    entry_hash, head_message,
};

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn record(i: u64) -> AuditRecord {
    AuditRecord {
        time_ns: 1_800_000_000_000_000_000 + i,
        actor: format!("staff:{}", i % 3),
        action: "ledger.transfer.create".into(),
        target: format!("transfer:{i}"),
        outcome: if i.is_multiple_of(5) { Outcome::Denied } else { Outcome::Success },
        details: BTreeMap::from([("amount".to_owned(), format!("{i}.5"))]),
    }
}

/// A log of `n` entries with a checkpoint every `every` entries, and its signed head.
fn log(n: u64, every: u64) -> (Vec<AuditEntry>, Vec<Checkpoint>, SignedHead) {
    let key = key();
    let mut entries = Vec::new();
    let mut checkpoints = Vec::new();
    let (mut seq, mut prev) = (0, GENESIS_HASH);
    for i in 1..=n {
        let entry = AuditEntry::next(seq, prev, record(i));
        (seq, prev) = (entry.seq, entry.hash);
        if i.is_multiple_of(every) {
            let time_ns = entry.record.time_ns;
            let signature = key.sign(&checkpoint_message(seq, &prev, time_ns)).to_bytes();
            checkpoints.push(Checkpoint { seq, hash: prev, time_ns, signature });
        }
        entries.push(entry);
    }
    let head = SignedHead { seq, hash: prev, signature: key.sign(&head_message(seq, &prev)).to_bytes() };
    (entries, checkpoints, head)
}

fn verify(entries: &[AuditEntry], checkpoints: Vec<Checkpoint>, head: &SignedHead) -> Option<(u64, FindingKind)> {
    let mut verifier = Verifier::new(&key().verifying_key().to_bytes(), checkpoints).unwrap();
    for e in entries {
        if !verifier.push(e) {
            break;
        }
    }
    verifier.finish(Some(head)).finding.map(|f| (f.seq, f.kind))
}

#[test]
fn an_intact_log_verifies() {
    let (entries, checkpoints, head) = log(100, 10);
    let mut verifier = Verifier::new(&key().verifying_key().to_bytes(), checkpoints).unwrap();
    assert!(entries.iter().all(|e| verifier.push(e)));
    let report = verifier.finish(Some(&head));
    assert_eq!((report.entries, report.checkpoints, report.finding), (100, 10, None));
}

#[test]
fn an_edited_field_is_pinpointed() {
    let (mut entries, checkpoints, head) = log(100, 10);
    entries[41].record.details.insert("amount".into(), "1000000".into());
    assert_eq!(verify(&entries, checkpoints, &head), Some((42, FindingKind::Edited)));
}

#[test]
fn an_edit_with_every_later_hash_recomputed_is_caught_by_the_next_checkpoint() {
    let (mut entries, checkpoints, head) = log(100, 10);
    entries[41].record.actor = "staff:innocent".into();
    for i in 41..entries.len() {
        let prev = if i == 0 { GENESIS_HASH } else { entries[i - 1].hash };
        entries[i].prev_hash = prev;
        entries[i].hash = entry_hash(entries[i].seq, &entries[i].record, &prev);
    }
    assert_eq!(verify(&entries, checkpoints, &head), Some((50, FindingKind::Checkpoint)));
}

#[test]
fn a_deleted_entry_is_pinpointed() {
    let (mut entries, checkpoints, head) = log(100, 10);
    entries.remove(56);
    assert_eq!(verify(&entries, checkpoints, &head), Some((57, FindingKind::Deleted)));
}

#[test]
fn an_inserted_entry_is_pinpointed() {
    let (mut entries, checkpoints, head) = log(100, 10);
    let forged = AuditEntry::next(30, entries[29].hash, record(999));
    entries.insert(30, forged);
    let finding = verify(&entries, checkpoints, &head).unwrap();
    assert_eq!(finding.0, 31);
}

#[test]
fn a_reordering_is_pinpointed() {
    let (mut entries, checkpoints, head) = log(100, 10);
    entries.swap(20, 21);
    assert_eq!(verify(&entries, checkpoints, &head), Some((21, FindingKind::Deleted)));
    let (mut entries, checkpoints, head) = log(100, 10);
    // Renumbered to look in order: the chain still breaks.
    entries.swap(20, 21);
    entries[20].seq = 21;
    entries[21].seq = 22;
    assert!(verify(&entries, checkpoints, &head).is_some_and(|(seq, _)| seq == 21));
}

#[test]
fn a_truncated_tail_after_the_last_checkpoint_is_caught_by_the_signed_head() {
    let (mut entries, checkpoints, head) = log(105, 10);
    entries.truncate(102);
    assert_eq!(verify(&entries, checkpoints, &head), Some((103, FindingKind::Truncated)));
}

#[test]
fn a_forged_checkpoint_or_head_is_refused() {
    let (entries, mut checkpoints, head) = log(30, 10);
    checkpoints[1].signature[0] ^= 1;
    assert_eq!(verify(&entries, checkpoints, &head), Some((20, FindingKind::Checkpoint)));
    let (entries, checkpoints, mut head) = log(30, 10);
    head.signature[5] ^= 1;
    assert_eq!(verify(&entries, checkpoints, &head), Some((30, FindingKind::Checkpoint)));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any change to any field of any entry is detected.
    #[test]
    fn any_single_edit_is_detected(at in 0usize..40, field in 0u8..6, n in 40u64..60) {
        let (mut entries, checkpoints, head) = log(n, 7);
        let e = &mut entries[at];
        match field {
            0 => e.record.time_ns += 1,
            1 => e.record.actor.push('x'),
            2 => e.record.action.push('x'),
            3 => e.record.target.push('x'),
            4 => e.record.outcome = if e.record.outcome == Outcome::Success { Outcome::Failure } else { Outcome::Success },
            _ => { e.record.details.insert("extra".into(), "1".into()); }
        }
        prop_assert_eq!(verify(&entries, checkpoints, &head), Some((at as u64 + 1, FindingKind::Edited)));
    }
}
