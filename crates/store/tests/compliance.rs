//! Compliance records in storage, on SQLite and (when configured) PostgreSQL: list versions (an unchanged import is
//! refused), compliance cases (one open case of a kind per customer; a freeze lifted only when no risk or compliance
//! freeze holds the account), KYC submissions (one pending at a time, decided once, levels only rise), the
//! exchange's address lists, Travel Rule records, and the three-level review (rules applied under the row lock, so
//! two reviewers racing for one level cannot both decide it).

use std::collections::BTreeMap;
use std::sync::Arc;

use rampart_audit::{AuditRecord, Outcome};
use rampart_compliance::review::{Refused, State};
use rampart_store::{
    CaseResolution, CaseResolved, ComplianceResolution, ComplianceResolved, CustomerStatus, Effects, KycDecided,
    NewCase, NewCustomer, NewDocument, ReviewDecided, Store, TravelRuleRecord,
};

const NOW: u64 = 1_800_000_000_000_000_000;

#[macro_use]
mod common;

use common::{auditor, keyring};

macro_rules! on_both_backends {
    ($name:ident, $body:expr) => {
        both_backends!("compliance_", $name, $body);
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

on_both_backends!(list_versions, |store: Arc<Store>| async move {
    let files = vec![("alt.csv".to_owned(), b"alt".to_vec()), ("sdn.csv".to_owned(), b"sdn".to_vec())];
    let v1 = store
        .record_sanctions_list("ofac-sdn", &[1; 32], 2, "{}", &files, "sana", NOW, &auditor(), vec![record("i", "l")])
        .await
        .unwrap();
    assert_eq!(v1, Some(1));
    let same = store
        .record_sanctions_list("ofac-sdn", &[1; 32], 2, "{}", &files, "sana", NOW, &auditor(), vec![record("i", "l")])
        .await
        .unwrap();
    assert_eq!(same, None, "the same digest again is no new version");
    let v2 = store
        .record_sanctions_list("ofac-sdn", &[2; 32], 3, "{\"x\":1}", &files[..1], "sana", NOW, &auditor(), vec![])
        .await
        .unwrap();
    assert_eq!(v2, Some(2));
    let (latest, latest_files) = store.latest_sanctions_list("ofac-sdn").await.unwrap().unwrap();
    assert_eq!((latest.version, latest.entries, latest.rescreened_at_ns), (2, 3, None));
    assert_eq!(latest_files, files[..1].to_vec());
    store.finish_rescreen(2, "{\"screened\":0}", NOW + 1).await.unwrap();
    let all = store.sanctions_lists(10).await.unwrap();
    assert_eq!(all.iter().map(|v| v.version).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(all[0].rescreened_at_ns, Some(NOW + 1));
    assert_eq!(store.latest_sanctions_list("other").await.unwrap(), None);
});

on_both_backends!(cases_freeze_until_no_freeze_holds, |store: Arc<Store>| async move {
    let finn = customer(&store, "finn@example.com").await;
    let case = |kind| NewCase { customer_id: finn, kind, outcome: "freeze", details: "{\"entry\":1}" };
    let first =
        store.open_compliance_case(case("sanctions_match"), NOW, &auditor(), vec![record("c", "x")]).await.unwrap();
    assert!(first.is_some());
    assert_eq!(status(&store, finn).await, CustomerStatus::Frozen);
    let again = store.open_compliance_case(case("sanctions_match"), NOW, &auditor(), vec![]).await.unwrap();
    assert_eq!(again, None, "one open case of a kind per customer");
    let risk = store.open_risk_case(finn, 1, "sign_in", "freeze", "[]", true, NOW, &auditor(), vec![]).await.unwrap();

    let release = ComplianceResolution::Release;
    let done =
        store.resolve_compliance_case(first.unwrap(), release, "leo", "false positive", NOW, &auditor(), vec![]).await;
    assert_eq!(done.unwrap(), ComplianceResolved::Done { unfrozen: false, deposits: 0 });
    assert_eq!(status(&store, finn).await, CustomerStatus::Frozen, "the risk case still holds the account");
    let twice = store.resolve_compliance_case(first.unwrap(), release, "leo", "again", NOW, &auditor(), vec![]).await;
    assert_eq!(twice.unwrap(), ComplianceResolved::AlreadyResolved);
    let resolved =
        store.resolve_risk_case(risk, CaseResolution::Release, "rita", NOW, &auditor(), vec![]).await.unwrap();
    assert!(matches!(resolved, CaseResolved::Done { unfrozen: true, .. }), "{resolved:?}");
    assert_eq!(status(&store, finn).await, CustomerStatus::Active);

    // Once resolved, a new case of the kind may open; a flag does not freeze.
    assert!(store.open_compliance_case(case("sanctions_match"), NOW, &auditor(), vec![]).await.unwrap().is_some());
    let jo = customer(&store, "jo@example.com").await;
    let flag = NewCase { customer_id: jo, kind: "offboarding", outcome: "flag", details: "{}" };
    let id = store.open_compliance_case(flag, NOW, &auditor(), vec![]).await.unwrap().unwrap();
    assert_eq!(status(&store, jo).await, CustomerStatus::Active);
    assert!(store.work_compliance_case(id, "leo", true, Some("calling"), NOW, &auditor(), vec![]).await.unwrap());
    let (c, notes) = store.compliance_case(id).await.unwrap().unwrap();
    assert_eq!((c.assigned_to.as_deref(), notes.len()), (Some("leo"), 1));
    assert_eq!(store.compliance_cases(false, 10).await.unwrap().len(), 2);
});

on_both_backends!(kyc_submissions, |store: Arc<Store>| async move {
    let finn = customer(&store, "finn@example.com").await;
    let docs =
        vec![NewDocument { kind: "passport".into(), content_type: "application/pdf".into(), sha256: vec![7; 32] }];
    let seal = |id: i64| keyring().encrypt(b"{\"identity\":1}", format!("kyc:{id}:identity").as_bytes());
    let seal_doc = |id: i64, _: usize| keyring().encrypt(b"%PDF-1.4", format!("kyc_document:{id}").as_bytes());
    let first = store.submit_kyc(finn, 1, "manual", &docs, seal, seal_doc, NOW, &auditor(), vec![]).await.unwrap();
    let first = first.expect("a first submission");
    let pending = store.submit_kyc(finn, 2, "manual", &docs, seal, seal_doc, NOW, &auditor(), vec![]).await.unwrap();
    assert_eq!(pending, None, "one pending submission at a time");
    let sub = store.kyc_submission(first).await.unwrap().unwrap();
    assert_eq!((sub.level, sub.state.as_str(), sub.documents.len()), (1, "pending", 1));
    let identity = keyring().decrypt(&sub.data, format!("kyc:{first}:identity").as_bytes()).unwrap();
    assert_eq!(identity.as_slice(), b"{\"identity\":1}");
    let (doc, of, body) = store.kyc_document(sub.documents[0].id).await.unwrap().unwrap();
    assert_eq!((doc.kind.as_str(), of), ("passport", first));
    assert!(!body.windows(4).any(|w| w == b"%PDF"), "documents are stored sealed");

    let approved = store.decide_kyc(first, true, "leo", "ok", NOW, &auditor(), vec![]).await.unwrap();
    assert_eq!(approved, KycDecided::Done { customer_id: finn, level: 1 });
    assert_eq!(
        store.decide_kyc(first, false, "leo", "no", NOW, &auditor(), vec![]).await.unwrap(),
        KycDecided::AlreadyDecided
    );
    let second =
        store.submit_kyc(finn, 2, "manual", &docs, seal, seal_doc, NOW, &auditor(), vec![]).await.unwrap().unwrap();
    let rejected = store.decide_kyc(second, false, "leo", "blurred", NOW, &auditor(), vec![]).await.unwrap();
    assert_eq!(rejected, KycDecided::Done { customer_id: finn, level: 1 }, "a rejection keeps the level");
    assert_eq!(store.kyc_level(finn).await.unwrap(), 1);
    assert_eq!(store.kyc_submissions(false, None, 10).await.unwrap().len(), 0);
    assert_eq!(store.kyc_submissions(true, Some(finn), 10).await.unwrap().len(), 2);
    assert_eq!(store.decide_kyc(999, true, "leo", "?", NOW, &auditor(), vec![]).await.unwrap(), KycDecided::NotFound);
});

on_both_backends!(address_lists_and_travel_rule, |store: Arc<Store>| async move {
    let a = "bc1qexample000000000000000000000000000000";
    let id = store.add_address_listing(a, None, "blocked", "mixer", "sana", NOW, &auditor(), vec![]).await.unwrap();
    let dup =
        store.add_address_listing(a, Some("BTC"), "risk", "again", "sana", NOW, &auditor(), vec![]).await.unwrap();
    assert_eq!(dup, None, "one live listing per address");
    assert_eq!(store.address_listings().await.unwrap().len(), 1);
    assert!(store.remove_address_listing(id.unwrap(), "sana", NOW, &auditor(), vec![]).await.unwrap());
    assert!(!store.remove_address_listing(id.unwrap(), "sana", NOW, &auditor(), vec![]).await.unwrap());
    assert!(
        store.add_address_listing(a, None, "risk", "watch", "sana", NOW, &auditor(), vec![]).await.unwrap().is_some()
    );

    let finn = customer(&store, "finn@example.com").await;
    let record = TravelRuleRecord {
        reference: "wd-1".into(),
        customer_id: finn,
        asset: "BTC".into(),
        amount: "25000000".into(),
        amount_usd: 25_000_000_000,
        data: vec![1, 2, 3],
        created_at_ns: NOW,
    };
    assert!(store.record_travel_rule(&record, &auditor(), vec![]).await.unwrap());
    assert!(!store.record_travel_rule(&record, &auditor(), vec![]).await.unwrap(), "one record per transfer");
    assert_eq!(store.travel_rule_records(Some(finn), 10).await.unwrap(), vec![record]);
});

on_both_backends!(three_level_review, |store: Arc<Store>| async move {
    let finn = customer(&store, "finn@example.com").await;
    let open = |reference: &'static str| {
        let store = Arc::clone(&store);
        async move {
            store
                .open_transfer_review(reference, finn, "tom", "BTC", "1", 20_000_000_000, NOW, &auditor(), vec![])
                .await
                .unwrap()
        }
    };
    let id = open("wd-7").await.expect("a review");
    assert_eq!(open("wd-7").await, None, "one review per transfer");
    let decide = |who: &'static str, levels: &'static [u8]| {
        let store = Arc::clone(&store);
        async move { store.decide_transfer_review(id, who, levels, true, "ok", NOW, &auditor(), vec![]).await.unwrap() }
    };
    assert_eq!(decide("tom", &[1]).await, ReviewDecided::Refused(Refused::Requester));
    assert_eq!(decide("lena", &[2]).await, ReviewDecided::Refused(Refused::WrongLevel { level: 1 }));
    // Two level-1 reviewers at once: exactly one decides level 1.
    let (a, b) = tokio::join!(decide("leo", &[1]), decide("lia", &[1]));
    let done = [&a, &b].iter().filter(|d| ***d == ReviewDecided::Done(State::Pending { level: 2 })).count();
    assert_eq!(done, 1, "{a:?} {b:?}");
    let r = store.transfer_review(id).await.unwrap().unwrap();
    let winner: &'static str = if r.decisions[0].0.reviewer == "leo" { "leo" } else { "lia" };
    assert_eq!(decide(winner, &[1, 2]).await, ReviewDecided::Refused(Refused::AlreadyDecided { level: 1 }));
    assert_eq!(decide("lena", &[2]).await, ReviewDecided::Done(State::Pending { level: 3 }));
    assert_eq!(decide("mara", &[3]).await, ReviewDecided::Done(State::Approved));
    assert_eq!(decide("max", &[1, 2, 3]).await, ReviewDecided::Refused(Refused::Closed));
    let r = store.transfer_review(id).await.unwrap().unwrap();
    assert_eq!(r.state, State::Approved);
    assert_eq!(r.decisions.iter().map(|d| d.0.level).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(store.transfer_reviews(false, 10).await.unwrap().len(), 0);
    assert_eq!(
        store.decide_transfer_review(99, "x", &[1], true, "?", NOW, &auditor(), vec![]).await.unwrap(),
        ReviewDecided::NotFound
    );
});
