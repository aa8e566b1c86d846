//! Risk records in storage, on SQLite and (when configured) PostgreSQL: the event log (idempotent appends, reads in
//! order), snapshots (the newest wins, old ones are pruned), and the review queue (a freeze freezes the account in
//! the case's own transaction; a release unfreezes it only when no other open freeze holds it; a case resolves
//! once, even under concurrent resolutions; every step audited).

use std::collections::BTreeMap;
use std::sync::Arc;

use rampart_audit::{AuditRecord, Outcome};
use rampart_store::{
    AuditFilter, CaseResolution, CaseResolved, CustomerStatus, Effects, NewCustomer, RiskEventRecord, Store,
};

const NOW: u64 = 1_800_000_000_000_000_000;

#[macro_use]
mod common;

use common::{auditor, keyring};

macro_rules! on_both_backends {
    ($name:ident, $body:expr) => {
        both_backends!("risk_", $name, $body);
    };
}

fn record(action: &str, target: &str) -> AuditRecord {
    AuditRecord {
        time_ns: NOW,
        actor: "risk".into(),
        action: action.into(),
        target: target.into(),
        outcome: Outcome::Success,
        details: BTreeMap::new(),
    }
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    b
}

async fn customer(store: &Store, email: &str) -> i64 {
    let index = keyring().blind_index("customer.email", email.as_bytes());
    let email_ct = keyring().encrypt(email.as_bytes(), b"test");
    let totp_ct = keyring().encrypt(b"01234567890123456789", b"test");
    let new = NewCustomer {
        handle: rand_bytes(),
        email_index: &index,
        email: &email_ct,
        password_hash: "$argon2id$placeholder",
        totp_pending: &totp_ct,
    };
    store
        .create_customer(&new, &rand_bytes(), "test-agent", "192.0.2.1", NOW, &auditor(), |id| {
            Effects::audit(record("auth.customer.sign_up", &format!("customer:{id}")))
        })
        .await
        .unwrap()
        .expect("a fresh email is free")
        .0
}

async fn status(store: &Store, id: i64) -> CustomerStatus {
    store.customer_by_id(id).await.unwrap().unwrap().status
}

fn event(seq: i64, customer_id: i64) -> RiskEventRecord {
    RiskEventRecord {
        seq,
        at_ns: NOW + seq as u64,
        customer_id,
        event: format!("{{\"seq\":{seq}}}"),
        outcome: "allow".into(),
        rules_version: 1,
    }
}

on_both_backends!(the_event_log_and_snapshots, |store: Arc<Store>| async move {
    assert_eq!(store.last_risk_seq().await.unwrap(), 0);
    store.append_risk_events(&(1..=5).map(|s| event(s, 7)).collect::<Vec<_>>()).await.unwrap();
    // Appending again (a retry) changes nothing: the first record of a sequence number stays.
    let mut again = event(3, 7);
    again.outcome = "block".into();
    store.append_risk_events(&[again, event(6, 8)]).await.unwrap();
    assert_eq!(store.last_risk_seq().await.unwrap(), 6);
    let after = store.risk_events_after(2, 3).await.unwrap();
    assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(after[0].outcome, "allow");
    assert_eq!(after[0], event(3, 7));

    assert_eq!(store.latest_risk_snapshot().await.unwrap(), None);
    for (seq, bytes) in [(2, b"two".as_slice()), (4, b"four"), (6, b"six")] {
        store.save_risk_snapshot(seq, bytes, NOW).await.unwrap();
    }
    assert_eq!(store.latest_risk_snapshot().await.unwrap(), Some((6, b"six".to_vec())));
});

on_both_backends!(a_freeze_case_freezes_and_only_the_last_release_unfreezes, |store: Arc<Store>| async move {
    let finn = customer(&store, "finn@example.com").await;
    let reasons = r#"[{"rule":"large_withdrawal_new_ip_after_sign_in"}]"#;
    let first = store
        .open_risk_case(
            finn,
            10,
            "withdrawal",
            "freeze",
            reasons,
            true,
            NOW,
            &auditor(),
            vec![record("risk.decision", "c")],
        )
        .await
        .unwrap();
    assert_eq!(status(&store, finn).await, CustomerStatus::Frozen);
    let second = store
        .open_risk_case(
            finn,
            11,
            "whitelist_change",
            "freeze",
            "[]",
            true,
            NOW,
            &auditor(),
            vec![record("risk.decision", "c")],
        )
        .await
        .unwrap();
    let held =
        store.open_risk_case(finn, 12, "withdrawal", "hold", "[]", false, NOW, &auditor(), vec![]).await.unwrap();
    let open = store.risk_cases(false, 10).await.unwrap();
    assert_eq!(open.iter().map(|c| c.id).collect::<Vec<_>>(), [held, second, first]);
    assert_eq!(open[2].reasons, reasons);

    assert!(
        store.assign_risk_case(first, "staff:4", &auditor(), vec![record("risk.case.assigned", "c")]).await.unwrap()
    );
    assert!(store.note_risk_case(first, "staff:4", "called the customer", NOW, &auditor(), vec![]).await.unwrap());
    assert!(!store.note_risk_case(9_999, "staff:4", "nobody", NOW, &auditor(), vec![]).await.unwrap());

    let resolved = store
        .resolve_risk_case(
            first,
            CaseResolution::Release,
            "staff:4",
            NOW,
            &auditor(),
            vec![record("risk.case.resolved", "c")],
        )
        .await
        .unwrap();
    assert!(matches!(resolved, CaseResolved::Done { unfrozen: false, .. }), "{resolved:?}");
    assert_eq!(status(&store, finn).await, CustomerStatus::Frozen, "the second freeze still holds the account");
    let resolved = store
        .resolve_risk_case(
            second,
            CaseResolution::Release,
            "staff:4",
            NOW,
            &auditor(),
            vec![record("risk.case.resolved", "c")],
        )
        .await
        .unwrap();
    assert!(matches!(resolved, CaseResolved::Done { unfrozen: true, .. }), "{resolved:?}");
    assert_eq!(status(&store, finn).await, CustomerStatus::Active);

    let again =
        store.resolve_risk_case(first, CaseResolution::KeepFrozen, "staff:5", NOW, &auditor(), vec![]).await.unwrap();
    assert_eq!(again, CaseResolved::AlreadyResolved);
    assert_eq!(
        store.resolve_risk_case(9_999, CaseResolution::Release, "x", NOW, &auditor(), vec![]).await.unwrap(),
        CaseResolved::NotFound
    );
    assert!(
        !store.assign_risk_case(first, "staff:5", &auditor(), vec![]).await.unwrap(),
        "a resolved case is not reassigned"
    );

    let (case, notes) = store.risk_case(first).await.unwrap().unwrap();
    assert_eq!(
        (case.state.as_str(), case.resolution.as_deref(), case.assigned_to.as_deref()),
        ("resolved", Some("release"), Some("staff:4"))
    );
    assert_eq!(notes.len(), 1);
    assert_eq!(store.risk_cases(false, 10).await.unwrap().len(), 1, "only the hold is open");
    assert_eq!(store.risk_cases(true, 10).await.unwrap().len(), 3);

    let filter = |action: &str| AuditFilter { action: Some(action.into()), ..AuditFilter::default() };
    let decisions = store.audit_entries(&filter("risk.decision"), 100).await.unwrap();
    assert_eq!(decisions.len(), 2);
    assert_eq!(decisions[0].record.details.get("case"), Some(&first.to_string()), "the entry names its case");
    assert_eq!(store.audit_entries(&filter("risk.case.resolved"), 100).await.unwrap().len(), 2);
    let report = store.verify_audit(&keyring().verifying_key()).await.unwrap();
    assert!(report.finding.is_none(), "{:?}", report.finding);
});

on_both_backends!(concurrent_resolutions_resolve_once, |store: Arc<Store>| async move {
    let finn = customer(&store, "finn@example.com").await;
    let id = store.open_risk_case(finn, 1, "sign_in", "freeze", "[]", true, NOW, &auditor(), vec![]).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|k| {
            let store = store.clone();
            tokio::spawn(async move {
                let resolution = if k % 2 == 0 { CaseResolution::Release } else { CaseResolution::KeepFrozen };
                store
                    .resolve_risk_case(
                        id,
                        resolution,
                        &format!("staff:{k}"),
                        NOW,
                        &auditor(),
                        vec![record("risk.case.resolved", "c")],
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut done = 0;
    for t in tasks {
        match t.await.unwrap() {
            CaseResolved::Done { .. } => done += 1,
            CaseResolved::AlreadyResolved => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(done, 1);
    let filter = AuditFilter { action: Some("risk.case.resolved".into()), ..AuditFilter::default() };
    assert_eq!(store.audit_entries(&filter, 100).await.unwrap().len(), 1, "one resolution, one entry");
});
