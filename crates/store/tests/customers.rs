//! Customer identity in storage, on SQLite and (when configured) PostgreSQL: the atomic once-only checks that must
//! hold across nodes (a TOTP step, a backup code, an API signature, a WebAuthn counter, a one-time ticket), the shared
//! brute-force counters, and security changes written with their audit entries, notifications and outbox emails.

use std::collections::BTreeMap;
use std::sync::Arc;

use rampart_audit::{AuditRecord, Outcome};
use rampart_store::{
    ApiKeyRecord, CustomerStatus, Effects, NewCustomer, NewTicket, Notice, SecurityChange, Store,
    WebauthnCredentialRecord,
};

const NOW: u64 = 1_800_000_000_000_000_000;
const S: u64 = 1_000_000_000;

#[macro_use]
mod common;

use common::{auditor, keyring};

macro_rules! on_both_backends {
    ($name:ident, $body:expr) => {
        both_backends!("", $name, $body);
    };
}

fn record(action: &str, customer: i64) -> AuditRecord {
    AuditRecord {
        time_ns: NOW,
        actor: format!("customer:{customer}"),
        action: action.into(),
        target: format!("customer:{customer}"),
        outcome: Outcome::Success,
        details: BTreeMap::new(),
    }
}

/// Creates a customer with `email` and answers its id.
async fn customer(store: &Store, email: &str) -> i64 {
    let index = keyring().blind_index("customer.email", email.as_bytes());
    let handle = *uuid::Uuid::new_v4().as_bytes();
    let email_ct = keyring().encrypt(email.as_bytes(), b"test");
    let totp_ct = keyring().encrypt(b"01234567890123456789", b"test");
    let new = NewCustomer {
        handle,
        email_index: &index,
        email: &email_ct,
        password_hash: "$argon2id$placeholder",
        totp_pending: &totp_ct,
    };
    let device: [u8; 32] = rand_bytes();
    let (id, _) = store
        .create_customer(&new, &device, "test-agent", "192.0.2.1", NOW, &auditor(), |id| {
            Effects::audit(record("auth.customer.sign_up", id)).notify(Notice {
                kind: "email_verification".into(),
                title: "Confirm your email address".into(),
                email: Some((rand_bytes(), b"sealed payload".to_vec())),
            })
        })
        .await
        .unwrap()
        .expect("a fresh email is free");
    id
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut out);
    out
}

on_both_backends!(
    sign_up_writes_the_account_its_device_notice_and_email_in_one_transaction,
    |store: Arc<Store>| async move {
        let id = customer(&store, "ann@example.com").await;
        let index = keyring().blind_index("customer.email", b"ann@example.com");
        let found = store.customer_by_email_index(&index).await.unwrap().unwrap();
        assert_eq!(found.id, id);
        assert_eq!(found.status, CustomerStatus::Active);
        assert!(found.totp_secret.is_none() && found.totp_pending.is_some());
        assert_eq!(store.devices(id).await.unwrap().len(), 1);
        assert!(store.devices(id).await.unwrap()[0].confirmed_at_ns.is_some(), "the sign-up device is confirmed");
        assert_eq!(store.notifications(id, 10).await.unwrap().len(), 1);
        assert_eq!(store.outbox_counts().await.unwrap(), (1, 0, 0));
        // The same email again is refused without writing anything.
        let new = NewCustomer {
            handle: rand_bytes(),
            email_index: &index,
            email: b"x",
            password_hash: "$argon2id$placeholder",
            totp_pending: b"x",
        };
        let again =
            store.create_customer(&new, &rand_bytes(), "a", "192.0.2.2", NOW, &auditor(), |_| Effects::default()).await;
        assert!(again.unwrap().is_none());
        assert_eq!(store.outbox_counts().await.unwrap(), (1, 0, 0));
    }
);

on_both_backends!(a_totp_step_is_accepted_once_even_by_concurrent_requests, |store: Arc<Store>| async move {
    let id = customer(&store, "bob@example.com").await;
    // Enrolment proves the secret with step 100: that step cannot be used again.
    let confirmed = store
        .apply_security_change(
            id,
            SecurityChange::TotpConfirmed { step: 100 },
            None,
            NOW,
            &auditor(),
            Effects::default(),
        )
        .await
        .unwrap();
    assert!(confirmed);
    assert!(!store.accept_customer_totp_step(id, 100).await.unwrap(), "the enrolment step is spent");
    // Sixteen concurrent requests with the same new step, as two nodes racing a replay: exactly one wins.
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.accept_customer_totp_step(id, 101).await.unwrap() })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        accepted += usize::from(t.await.unwrap());
    }
    assert_eq!(accepted, 1);
    assert!(!store.accept_customer_totp_step(id, 99).await.unwrap(), "an older step is refused too");
    assert!(store.accept_customer_totp_step(id, 102).await.unwrap());
});

on_both_backends!(backup_codes_signatures_and_tickets_work_once, |store: Arc<Store>| async move {
    let id = customer(&store, "cy@example.com").await;
    let codes: Vec<[u8; 32]> = (0..10).map(|_| rand_bytes()).collect();
    store
        .apply_security_change(id, SecurityChange::BackupCodes(&codes), None, NOW, &auditor(), Effects::default())
        .await
        .unwrap();
    assert_eq!(store.backup_codes_left(id).await.unwrap(), 10);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            let code = codes[3];
            tokio::spawn(async move { store.use_backup_code(id, &code, NOW).await.unwrap() })
        })
        .collect();
    let mut used = 0;
    for t in tasks {
        used += usize::from(t.await.unwrap());
    }
    assert_eq!(used, 1, "a backup code works once");
    assert_eq!(store.backup_codes_left(id).await.unwrap(), 9);
    assert!(!store.use_backup_code(id, &rand_bytes(), NOW).await.unwrap(), "an unknown code never works");

    // A request signature is spent once, across concurrent requests; it is forgotten once its window has passed.
    let signature: [u8; 32] = rand_bytes();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.spend_api_signature("rak_x", &signature, NOW + 5 * S, NOW).await.unwrap() })
        })
        .collect();
    let mut fresh = 0;
    for t in tasks {
        fresh += usize::from(t.await.unwrap());
    }
    assert_eq!(fresh, 1, "a signature is accepted once");
    assert_eq!(store.purge_expired_auth(NOW + 6 * S).await.unwrap(), 1);

    // A ticket is consumed once; an expired one never works; a limited one allows its attempts only.
    let hash: [u8; 32] = rand_bytes();
    let limited: [u8; 32] = rand_bytes();
    let ticket = |token_hash, purpose| NewTicket {
        token_hash,
        purpose,
        owner: format!("customer:{id}"),
        data: Some(b"state".to_vec()),
        expires_at_ns: NOW + 60 * S,
    };
    store
        .store_tickets(&auditor(), Effects::default().ticket(ticket(hash, "device")).ticket(ticket(limited, "sign_in")))
        .await
        .unwrap();
    assert!(store.take_ticket(&hash, "sign_in", NOW).await.unwrap().is_none(), "the purpose must match");
    assert!(store.take_ticket(&hash, "device", NOW + 61 * S).await.unwrap().is_none(), "expired");
    let taken = store.take_ticket(&hash, "device", NOW).await.unwrap().unwrap();
    assert_eq!(taken.data.as_deref(), Some(&b"state"[..]));
    assert!(store.take_ticket(&hash, "device", NOW).await.unwrap().is_none(), "consumed");
    for attempt in 1..=3 {
        assert_eq!(store.use_ticket(&limited, "sign_in", 3, NOW).await.unwrap().unwrap().attempts, attempt);
    }
    assert!(store.use_ticket(&limited, "sign_in", 3, NOW).await.unwrap().is_none(), "attempts exhausted");
});

on_both_backends!(failure_counters_are_shared_and_forget_after_quiet, |store: Arc<Store>| async move {
    let block = |f: u32| if f >= 3 { NOW + u64::from(f) * S } else { 0 };
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(
                async move { store.record_auth_failure("ip", "198.51.100.7", NOW, 3600 * S, block).await.unwrap() },
            )
        })
        .collect();
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap().failures);
    }
    counts.sort_unstable();
    assert_eq!(counts, (1..=10).collect::<Vec<_>>(), "every concurrent failure is counted once");
    let state = store.throttle_state("ip", "198.51.100.7").await.unwrap().unwrap();
    assert_eq!(state.failures, 10);
    assert_eq!(state.blocked_until_ns, NOW + 10 * S);
    let later = store.record_auth_failure("ip", "198.51.100.7", NOW + 7200 * S, 3600 * S, block).await.unwrap();
    assert_eq!(later.failures, 1, "an hour of quiet starts the count again");
    store.clear_throttle("ip", "198.51.100.7").await.unwrap();
    assert!(store.throttle_state("ip", "198.51.100.7").await.unwrap().is_none());
});

on_both_backends!(
    security_changes_revoke_sessions_lock_withdrawals_and_never_shorten_a_lock,
    |store: Arc<Store>| async move {
        let id = customer(&store, "dee@example.com").await;
        let device = store.devices(id).await.unwrap()[0].id;
        let (a, b): ([u8; 32], [u8; 32]) = (rand_bytes(), rand_bytes());
        for token_hash in [a, b] {
            let new = rampart_store::NewSession {
                token_hash,
                device_id: device,
                expires_at_ns: NOW + 3600 * S,
                second_factor: "totp",
            };
            store.create_customer_session(id, &new, "192.0.2.1", NOW, &auditor(), Effects::default()).await.unwrap();
        }
        assert_eq!(store.customer_sessions(id, NOW).await.unwrap().len(), 2);
        let effects = Effects::audit(record("auth.customer.password_change", id));
        let changed = store
            .apply_security_change(
                id,
                SecurityChange::Password { hash: "$argon2id$new", keep_session: Some(a) },
                Some((NOW + 24 * 3600 * S, "password change")),
                NOW,
                &auditor(),
                effects,
            )
            .await
            .unwrap();
        assert!(changed);
        let left = store.customer_sessions(id, NOW).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].token_hash, a, "only the session that made the change stays");
        let c = store.customer_by_id(id).await.unwrap().unwrap();
        assert_eq!(c.password_hash, "$argon2id$new");
        assert_eq!(c.withdrawal_lock_until_ns, Some(NOW + 24 * 3600 * S));
        // A shorter lock later does not shorten the longer one.
        store
            .apply_security_change(
                id,
                SecurityChange::None,
                Some((NOW + 3600 * S, "x")),
                NOW,
                &auditor(),
                Effects::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            store.customer_by_id(id).await.unwrap().unwrap().withdrawal_lock_until_ns,
            Some(NOW + 24 * 3600 * S)
        );
        // The idle timeout: a session unused for longer than the idle limit is not found.
        assert!(store.customer_session(&a, NOW + 10 * S, 5 * S, 0).await.unwrap().is_none());
        assert!(store.customer_session(&a, NOW + 4 * S, 5 * S, 0).await.unwrap().is_some());
        // Locking stops sign-ins but leaves the owner's sessions alone; a recovery ends every session.
        let index = keyring().blind_index("customer.email", b"dee@example.com");
        assert!(
            store
                .apply_security_change(id, SecurityChange::Locked, None, NOW, &auditor(), Effects::default())
                .await
                .unwrap()
        );
        assert_eq!(store.customer_sessions(id, NOW).await.unwrap().len(), 1);
        assert_eq!(store.customer_by_id(id).await.unwrap().unwrap().status, CustomerStatus::Locked);
        let recovered = SecurityChange::Recovered { password_hash: None, reset_factors: true, email_index: &index };
        assert!(store.apply_security_change(id, recovered, None, NOW, &auditor(), Effects::default()).await.unwrap());
        assert_eq!(store.customer_by_id(id).await.unwrap().unwrap().status, CustomerStatus::Active);
        assert!(store.customer_sessions(id, NOW).await.unwrap().is_empty(), "a recovery ends every session");
    }
);

on_both_backends!(
    a_webauthn_counter_only_goes_up_and_the_outbox_leases_each_email_once,
    |store: Arc<Store>| async move {
        let id = customer(&store, "eve@example.com").await;
        let credential = WebauthnCredentialRecord {
            credential_id: b"cred-1".to_vec(),
            owner: format!("customer:{id}"),
            name: "key".into(),
            data: b"{}".to_vec(),
            counter: 5,
            created_at_ns: NOW,
            last_used_ns: None,
        };
        store
            .apply_security_change(
                id,
                SecurityChange::WebauthnAdded(&credential),
                None,
                NOW,
                &auditor(),
                Effects::default(),
            )
            .await
            .unwrap();
        assert!(store.webauthn_used(b"cred-1", 5, 6, b"{}", NOW).await.unwrap());
        assert!(!store.webauthn_used(b"cred-1", 5, 7, b"{}", NOW).await.unwrap(), "a stale counter loses the race");
        assert!(!store.webauthn_used(b"cred-1", 6, 6, b"{}", NOW).await.unwrap(), "the counter must go up");
        assert_eq!(store.webauthn_credentials(&format!("customer:{id}")).await.unwrap()[0].counter, 6);

        // Two workers claim at once: each email goes to one of them.
        let (first, second) = tokio::join!(store.claim_outbox(NOW, 60 * S, 10), store.claim_outbox(NOW, 60 * S, 10));
        assert_eq!(first.unwrap().len() + second.unwrap().len(), 1);
        assert!(store.claim_outbox(NOW + S, 60 * S, 10).await.unwrap().is_empty(), "leased");
        let again = store.claim_outbox(NOW + 61 * S, 60 * S, 10).await.unwrap();
        assert_eq!(again.len(), 1, "a lease that ran out (a crashed worker) lets another node deliver it");
        store.outbox_attempted(&again[0].id, Err((Some(NOW + 70 * S), "busy")), NOW + 61 * S).await.unwrap();
        let retry = store.claim_outbox(NOW + 70 * S, 60 * S, 10).await.unwrap();
        assert_eq!(retry[0].attempts, 1);
        store.outbox_attempted(&retry[0].id, Ok(()), NOW + 70 * S).await.unwrap();
        assert_eq!(store.outbox_counts().await.unwrap(), (0, 1, 0));
        assert!(store.claim_outbox(NOW + 10_000 * S, 60 * S, 10).await.unwrap().is_empty(), "sent is never sent again");
    }
);

on_both_backends!(api_requests_are_admitted_in_groups, |store: Arc<Store>| async move {
    let id = customer(&store, "ada@example.com").await;
    let key = ApiKeyRecord {
        id: "rak_admit".into(),
        customer_id: id,
        label: "bot".into(),
        secret: vec![7; 48],
        scopes: "read,withdraw".into(),
        allow_list: "203.0.113.0/24".into(),
        created_at_ns: NOW,
        expires_at_ns: NOW + 3600 * S,
        revoked_at_ns: None,
        last_used_ns: None,
    };
    store.create_api_key(&key, &auditor(), Effects::default()).await.unwrap();
    let (a, b): ([u8; 32], [u8; 32]) = (rand_bytes(), rand_bytes());
    let forget = NOW + 5 * S;
    // One batch: two signatures of the key, the first repeated (an in-batch replay), and an unknown key.
    let spends = [
        ("rak_admit".to_owned(), a, forget),
        ("rak_admit".to_owned(), b, forget),
        ("rak_admit".to_owned(), a, forget),
        ("rak_nobody".to_owned(), rand_bytes(), forget),
    ];
    let admitted = store.admit_api_requests(&spends, NOW).await.unwrap();
    assert_eq!(admitted.iter().map(|a| a.fresh).collect::<Vec<_>>(), [true, true, false, true]);
    let (k, c) = admitted[0].key.clone().expect("the key with its customer");
    assert_eq!((k.id.as_str(), k.customer_id, c.id, c.status), ("rak_admit", id, id, CustomerStatus::Active));
    assert_eq!(k.last_used_ns, Some(NOW), "read after its last use was written");
    assert!(admitted[2].key.is_some(), "a replay's key is read too");
    assert!(admitted[3].key.is_none(), "an unknown key has none");
    // A later batch: the spent signature is a replay; the key is read as it is now (revoked).
    assert!(store.revoke_api_key(id, "rak_admit", NOW + S, &auditor(), Effects::default()).await.unwrap());
    let again = store.admit_api_requests(&spends[..1], NOW + 2 * S).await.unwrap();
    assert!(!again[0].fresh, "a signature works once, across batches");
    assert_eq!(again[0].key.as_ref().and_then(|(k, _)| k.revoked_at_ns), Some(NOW + S));
    assert!(store.admit_api_requests(&[], NOW).await.unwrap().is_empty());
});
