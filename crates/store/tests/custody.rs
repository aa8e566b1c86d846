//! Custody records in storage, on SQLite and (when configured) PostgreSQL: custodians and wallets (one active wallet
//! per asset and kind), relayed ceremony messages (once per sender, round and recipient; a round's first senders win
//! even under concurrent posts), deposit addresses whose indices are never reused, the chain watcher's bookkeeping
//! across reorganisations, the reservation of outputs by our own transactions, and four-eyes refill approvals.

use std::collections::BTreeMap;
use std::sync::Arc;

use rampart_audit::{AuditEntry, AuditRecord, Outcome};
use rampart_store::{
    AuditFilter, BlockFindings, CeremonyMessage, ChainDeposit, ComplianceResolution, ComplianceResolved,
    CustodyBalances, CustodyTx, DEPOSIT_HOLD, DepositAddress, Effects, KeyOutcome, Member, NewCase, NewCeremony,
    NewCustomer, PostOutcome, RefillDecision, Store, StoreError, Utxo,
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

fn record(action: &str, actor: &str, target: &str) -> AuditRecord {
    AuditRecord {
        time_ns: NOW,
        actor: actor.into(),
        action: action.into(),
        target: target.into(),
        outcome: Outcome::Success,
        details: BTreeMap::new(),
    }
}

/// The entries of one action, in order.
async fn audited(store: &Store, action: &str) -> Vec<AuditEntry> {
    let filter = AuditFilter { action: Some(action.into()), ..AuditFilter::default() };
    store.audit_entries(&filter, 1000).await.unwrap()
}

/// The whole log verifies against the keyring's key (chain, checkpoints and signed head).
async fn assert_log_verifies(store: &Store) {
    let report = store.verify_audit(&keyring().verifying_key()).await.unwrap();
    assert!(report.finding.is_none(), "the audit log verifies: {:?}", report.finding);
    assert!(report.entries > 0);
}

/// Creates a staff member and answers their id.
async fn staff(store: &Store, username: &str) -> i64 {
    store
        .create_staff(
            username,
            &[],
            &rand_bytes(),
            NOW + 3600 * S,
            NOW,
            &auditor(),
            vec![record("staff.create", "staff:root", &format!("staff:{username}"))],
        )
        .await
        .unwrap()
        .expect("a fresh username is free")
}

/// Creates a customer with `email` and answers their id.
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
    let (id, _) = store
        .create_customer(&new, &rand_bytes(), "test-agent", "192.0.2.1", NOW, &auditor(), |id| {
            Effects::audit(record("auth.customer.sign_up", &format!("customer:{id}"), &format!("customer:{id}")))
        })
        .await
        .unwrap()
        .expect("a fresh email is free");
    id
}

/// Registers `n` staff members as active custodians; answers the custodian ids.
async fn custodians(store: &Store, n: u8) -> Vec<i64> {
    let mut ids = Vec::new();
    for k in 1..=n {
        let staff_id = staff(store, &format!("custodian{k}")).await;
        let id = store
            .register_custodian(staff_id, &format!("custodian{k}"), &[k; 32], &[k + 100; 32], NOW, &auditor(), vec![])
            .await
            .unwrap()
            .unwrap();
        assert!(store.set_custodian_status(id, "active", &auditor(), vec![]).await.unwrap());
        ids.push(id);
    }
    ids
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut out);
    out
}

fn new_ceremony(kind: &str, asset: &str, wallet_id: Option<i64>, expires_at_ns: u64) -> NewCeremony {
    NewCeremony {
        kind: kind.into(),
        asset: asset.into(),
        wallet_id,
        threshold: 2,
        roster: r#"[{"identifier":1,"custodian_id":1},{"identifier":2,"custodian_id":2}]"#.into(),
        params: "{}".into(),
        created_by: "staff:1".into(),
        expires_at_ns,
    }
}

/// Creates a ceremony that expires in ten minutes.
async fn ceremony(store: &Store, kind: &str, asset: &str, wallet_id: Option<i64>) -> i64 {
    let new = new_ceremony(kind, asset, wallet_id, NOW + 600 * S);
    // The store names the target itself, once it knows the id.
    store.create_ceremony(&new, NOW, &auditor(), vec![record("custody.ceremony.create", "staff:1", "?")]).await.unwrap()
}

fn message(round: &str, sender: u16, recipient: u16, payload: &[u8]) -> CeremonyMessage {
    CeremonyMessage {
        round: round.into(),
        sender,
        recipient,
        payload: payload.to_vec(),
        signature: vec![u8::try_from(sender).unwrap_or(0); 64],
    }
}

async fn post(store: &Store, id: i64, m: &CeremonyMessage, max: Option<u16>, now_ns: u64) -> PostOutcome {
    store.post_ceremony_message(id, m, max, now_ns).await.unwrap()
}

fn txid(n: u8) -> Vec<u8> {
    vec![n; 32]
}

/// A distinct script for each asset and index, as a real derivation would give.
fn script(asset: &str, index: u32) -> Vec<u8> {
    let mut s = vec![0x51, 0x20];
    s.extend_from_slice(asset.as_bytes());
    s.extend_from_slice(&index.to_be_bytes());
    s
}

fn derive(asset: &'static str) -> impl Fn(u32) -> Result<(Vec<u8>, String), StoreError> + Sync {
    move |index| Ok((script(asset, index), format!("{asset}-address-{index}")))
}

/// An output paying one of our scripts (the block's height is set by `connect_block`).
fn output(tx: u8, vout: u32, wallet: &str, path: Option<(u32, u32)>, value: u64) -> Utxo {
    let script_pubkey = match path {
        Some((_, index)) => script(wallet, index),
        None => script(wallet, u32::MAX),
    };
    Utxo { txid: txid(tx), vout, wallet: wallet.into(), path, script_pubkey, value, height: 0, spent_by: None }
}

fn deposit(tx: u8, vout: u32, address: &DepositAddress, amount: u64, height: u64, state: &str) -> ChainDeposit {
    ChainDeposit {
        txid: txid(tx),
        vout,
        address_id: address.id,
        customer_id: address.customer_id,
        amount,
        height,
        state: state.into(),
    }
}

fn custody_tx(kind: &str, tx: u8, ceremony_id: Option<i64>, to_cold: u64, to_hot: u64) -> CustodyTx {
    CustodyTx {
        id: 0,
        asset: "BTC".into(),
        kind: kind.into(),
        txid: txid(tx),
        tx: b"unsigned".to_vec(),
        prevouts: b"prevouts".to_vec(),
        to_cold,
        to_hot,
        fee: 500,
        state: "signing".into(),
        ceremony_id,
        failure: None,
    }
}

async fn outpoints(store: &Store, wallet: &str) -> Vec<(Vec<u8>, u32)> {
    store.spendable_utxos("BTC", wallet, u64::MAX >> 1).await.unwrap().into_iter().map(|u| (u.txid, u.vout)).collect()
}

async fn proposal(store: &Store, id: i64) -> rampart_store::RefillProposal {
    store.refill_proposals(None).await.unwrap().into_iter().find(|p| p.id == id).expect("the proposal exists")
}

on_both_backends!(custodians_register_once_per_staff_member_and_key, |store: Arc<Store>| async move {
    let (ann, bob, cy) = (staff(&store, "ann").await, staff(&store, "bob").await, staff(&store, "cy").await);
    let register = |staff_id: i64, name: &'static str, signing: u8, exchange: u8| {
        let store = Arc::clone(&store);
        async move {
            let records = vec![record("custody.custodian.register", &format!("staff:{staff_id}"), "custodians")];
            store
                .register_custodian(staff_id, name, &[signing; 32], &[exchange; 32], NOW, &auditor(), records)
                .await
                .unwrap()
        }
    };
    let a = register(ann, "ann", 1, 2).await.expect("a first registration");
    assert_eq!(register(ann, "ann", 3, 4).await, None, "the same staff member twice");
    assert_eq!(register(bob, "bob", 1, 5).await, None, "someone else's signing key");
    let b = register(bob, "bob", 6, 7).await.expect("bob with his own key");
    assert_ne!(a, b);

    let listed = store.custodians().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!((listed[0].id, listed[0].staff_id, listed[0].name.as_str()), (a, ann, "ann"));
    assert_eq!((listed[0].signing_key.clone(), listed[0].exchange_key.clone()), (vec![1; 32], vec![2; 32]));
    assert_eq!((listed[1].id, listed[1].staff_id, listed[1].signing_key.clone()), (b, bob, vec![6; 32]));
    assert!(listed.iter().all(|c| c.status == "pending"), "registered custodians wait for an administrator");

    let activate = vec![record("custody.custodian.status", "staff:99", &format!("custodian:{a}"))];
    assert!(store.set_custodian_status(a, "active", &auditor(), activate.clone()).await.unwrap());
    assert!(!store.set_custodian_status(a + b + 100, "active", &auditor(), activate).await.unwrap(), "no such one");
    let of_ann = store.custodian_of_staff(ann).await.unwrap().unwrap();
    assert_eq!((of_ann.id, of_ann.status.as_str()), (a, "active"));
    assert_eq!(store.custodian_of_staff(bob).await.unwrap().unwrap().status, "pending");
    assert!(store.custodian_of_staff(cy).await.unwrap().is_none());

    // Only what was done is in the log: two registrations and one activation, not the refusals.
    assert_eq!(audited(&store, "custody.custodian.register").await.len(), 2);
    let status = audited(&store, "custody.custodian.status").await;
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].record.target, format!("custodian:{a}"));
    assert_log_verifies(&store).await;
});

on_both_backends!(one_active_hot_wallet_per_asset_whose_key_never_prints, |store: Arc<Store>| async move {
    staff(&store, "admin").await;
    let hot_key = b"HOTKEYSECRET".to_vec();
    let create = |asset: &'static str| {
        let (store, hot_key) = (Arc::clone(&store), hot_key.clone());
        async move {
            let records = vec![record("custody.wallet.create", "staff:1", &format!("wallet:{asset}:hot"))];
            store
                .create_hot_wallet(asset, &script(asset, 0), &hot_key, "tpubHOT", NOW, &auditor(), records)
                .await
                .unwrap()
        }
    };
    let btc = create("BTC").await.expect("the first hot wallet");
    assert_eq!(create("BTC").await, None, "a second active hot wallet for the same asset");
    let ltc = create("LTC").await.expect("another asset has its own");
    assert_ne!(btc, ltc);

    let wallet = store.active_wallet("BTC", "hot").await.unwrap().unwrap();
    assert_eq!(wallet.id, btc);
    assert_eq!((wallet.asset.as_str(), wallet.kind.as_str(), wallet.status.as_str()), ("BTC", "hot", "active"));
    assert_eq!((wallet.epoch, wallet.threshold, wallet.public_package.clone()), (1, None, None));
    assert_eq!(wallet.script_pubkey, script("BTC", 0));
    assert_eq!(wallet.hot_key.as_deref(), Some(&hot_key[..]));
    assert_eq!(wallet.account_xpub.as_deref(), Some("tpubHOT"));
    assert!(store.active_wallet("BTC", "cold").await.unwrap().is_none());
    assert_eq!(store.wallet(btc).await.unwrap(), Some(wallet.clone()));
    assert_eq!(store.wallets().await.unwrap().iter().map(|w| w.id).collect::<Vec<_>>(), vec![btc, ltc]);

    // Debug output names the wallet but carries none of its key, in any rendering.
    let shown = format!("{wallet:?}");
    assert!(shown.contains("WalletRecord") && shown.contains(&btc.to_string()), "{shown}");
    for secret in [
        "HOTKEYSECRET".to_owned(),
        format!("{hot_key:?}"),
        hot_key.iter().map(|b| format!("{b:02x}")).collect(),
        "tpubHOT".to_owned(),
    ] {
        assert!(!shown.contains(&secret), "{shown} shows {secret}");
    }

    // Re-encryption replaces the key of that wallet only.
    store.rewrap_hot_key(btc, b"REWRAPPED").await.unwrap();
    assert_eq!(store.wallet(btc).await.unwrap().unwrap().hot_key.as_deref(), Some(&b"REWRAPPED"[..]));
    assert_eq!(store.wallet(ltc).await.unwrap().unwrap().hot_key, Some(hot_key));

    assert_eq!(audited(&store, "custody.wallet.create").await.len(), 2, "the refused creation wrote nothing");
    assert_log_verifies(&store).await;
});

on_both_backends!(a_message_is_stored_once_and_readers_see_only_theirs, |store: Arc<Store>| async move {
    staff(&store, "admin").await;
    let id = ceremony(&store, "dkg", "BTC", None).await;
    let created = audited(&store, "custody.ceremony.create").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].record.target, format!("ceremony:{id}"));
    let stored = store.ceremony(id).await.unwrap().unwrap();
    assert_eq!((stored.kind.as_str(), stored.asset.as_str(), stored.state.as_str()), ("dkg", "BTC", "open"));
    assert_eq!((stored.wallet_id, stored.threshold, stored.failure.clone()), (None, 2, None));
    assert_eq!((stored.created_by.as_str(), stored.expires_at_ns), ("staff:1", NOW + 600 * S));
    assert_eq!(store.ceremonies(true, 10).await.unwrap(), vec![stored]);

    let first = message("round1", 1, 0, b"commitments of 1");
    assert_eq!(post(&store, id, &first, None, NOW).await, PostOutcome::Stored);
    assert_eq!(post(&store, id, &first, None, NOW).await, PostOutcome::Duplicate, "a retry");
    let other = message("round1", 1, 0, b"different commitments");
    assert_eq!(post(&store, id, &other, None, NOW).await, PostOutcome::Conflict, "an equivocation");
    assert_eq!(store.ceremony_messages(id, None).await.unwrap(), vec![first.clone()], "the first message stays");
    assert_eq!(post(&store, id + 1000, &first, None, NOW).await, PostOutcome::Closed, "no such ceremony");

    // The signers of a round are its first three senders; a signer may still send to someone else in that round.
    let commit = |sender| message("commit", sender, 0, &[u8::try_from(sender).unwrap(); 8]);
    for sender in 1..=3 {
        assert_eq!(post(&store, id, &commit(sender), Some(3), NOW).await, PostOutcome::Stored);
    }
    assert_eq!(post(&store, id, &commit(4), Some(3), NOW).await, PostOutcome::Full);
    assert_eq!(post(&store, id, &commit(2), Some(3), NOW).await, PostOutcome::Duplicate);
    assert_eq!(post(&store, id, &message("commit", 2, 3, b"x"), Some(3), NOW).await, PostOutcome::Stored);
    let senders: Vec<u16> = store
        .ceremony_messages(id, None)
        .await
        .unwrap()
        .iter()
        .filter(|m| m.round == "commit")
        .map(|m| m.sender)
        .collect();
    assert_eq!(senders, vec![1, 2, 2, 3]);

    // Packages addressed to one participant reach that participant only; broadcasts reach everyone.
    let to_2 = message("round2", 1, 2, b"for 2 from 1");
    let to_3 = message("round2", 1, 3, b"for 3 from 1");
    let to_2_from_3 = message("round2", 3, 2, b"for 2 from 3");
    for m in [&to_3, &to_2_from_3, &to_2] {
        assert_eq!(post(&store, id, m, None, NOW).await, PostOutcome::Stored);
    }
    let seen_by_2 = store.ceremony_messages(id, Some(2)).await.unwrap();
    let expected_2 = vec![commit(1), commit(2), commit(3), first.clone(), to_2.clone(), to_2_from_3.clone()];
    assert_eq!(seen_by_2, expected_2, "in round, sender, recipient order");
    let seen_by_3 = store.ceremony_messages(id, Some(3)).await.unwrap();
    assert_eq!(seen_by_3.len(), 6);
    assert!(seen_by_3.iter().all(|m| m.recipient == 0 || m.recipient == 3));
    assert!(seen_by_3.contains(&to_3) && seen_by_3.contains(&message("commit", 2, 3, b"x")));
    assert_eq!(store.ceremony_messages(id, None).await.unwrap().len(), 8, "an operator sees everything");
    assert_log_verifies(&store).await;
});

on_both_backends!(concurrent_posts_admit_exactly_the_rounds_limit_of_senders, |store: Arc<Store>| async move {
    staff(&store, "admin").await;
    // Several sessions in turn: the first also opens the pool's connections, so that in the later ones the ten
    // posts, released together by the barrier, really overlap in the database.
    for _ in 0..5 {
        let id = ceremony(&store, "sign", "BTC", None).await;
        let start = Arc::new(tokio::sync::Barrier::new(10));
        let tasks: Vec<_> = (1..=10u16)
            .map(|sender| {
                let (store, start) = (Arc::clone(&store), Arc::clone(&start));
                tokio::spawn(async move {
                    let m = message("commit", sender, 0, &sender.to_be_bytes());
                    start.wait().await;
                    (sender, store.post_ceremony_message(id, &m, Some(3), NOW).await.unwrap())
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                (sender, PostOutcome::Stored) => winners.push(sender),
                (_, PostOutcome::Full) => {}
                (sender, other) => panic!("sender {sender}: {other:?}"),
            }
        }
        winners.sort_unstable();
        assert_eq!(winners.len(), 3, "exactly three signers: {winners:?}");
        let stored: Vec<u16> = store.ceremony_messages(id, None).await.unwrap().iter().map(|m| m.sender).collect();
        assert_eq!(stored, winners, "the stored messages are those of the winners");
    }
});

on_both_backends!(expired_and_failed_ceremonies_accept_nothing, |store: Arc<Store>| async move {
    staff(&store, "admin").await;
    let new = new_ceremony("dkg", "BTC", None, NOW + 60 * S);
    let expiring = store.create_ceremony(&new, NOW, &auditor(), vec![]).await.unwrap();
    let failing = ceremony(&store, "dkg", "LTC", None).await;
    let done = ceremony(&store, "repair", "BTC", None).await;
    assert!(store.complete_ceremony(done, &KeyOutcome::Unchanged, NOW, &auditor(), vec![]).await.unwrap());

    let m = message("round1", 1, 0, b"late");
    assert_eq!(post(&store, expiring, &m, None, NOW + 60 * S).await, PostOutcome::Closed, "at its expiry");
    assert_eq!(post(&store, expiring, &m, None, NOW + 59 * S).await, PostOutcome::Stored, "just before");
    assert_eq!(store.expire_ceremonies(NOW + 59 * S).await.unwrap(), Vec::<i64>::new());
    assert_eq!(store.expire_ceremonies(NOW + 60 * S).await.unwrap(), vec![expiring]);
    let expired = store.ceremony(expiring).await.unwrap().unwrap();
    assert_eq!((expired.state.as_str(), expired.failure.as_deref()), ("expired", Some("expired")));
    assert_eq!(post(&store, expiring, &message("round1", 2, 0, b"x"), None, NOW).await, PostOutcome::Closed);
    assert_eq!(store.expire_ceremonies(NOW + 60 * S).await.unwrap(), Vec::<i64>::new(), "expired once");

    let reason = vec![record("custody.ceremony.fail", "system", &format!("ceremony:{failing}"))];
    assert!(store.fail_ceremony(failing, "custodian 2 sent a bad share", NOW, &auditor(), reason).await.unwrap());
    let failed = store.ceremony(failing).await.unwrap().unwrap();
    assert_eq!((failed.state.as_str(), failed.failure.as_deref()), ("failed", Some("custodian 2 sent a bad share")));
    assert_eq!(post(&store, failing, &m, None, NOW).await, PostOutcome::Closed);
    assert!(!store.fail_ceremony(failing, "again", NOW, &auditor(), vec![]).await.unwrap(), "failed once");
    assert!(!store.fail_ceremony(done, "too late", NOW, &auditor(), vec![]).await.unwrap(), "completed already");
    assert!(!store.complete_ceremony(failing, &KeyOutcome::Unchanged, NOW, &auditor(), vec![]).await.unwrap());
    assert_eq!(
        store.ceremony(failing).await.unwrap().unwrap().failure.as_deref(),
        Some("custodian 2 sent a bad share")
    );

    // Neither a failed nor a completed ceremony expires later.
    assert_eq!(store.expire_ceremonies(NOW + 3600 * S).await.unwrap(), Vec::<i64>::new());
    assert_eq!(store.ceremony(done).await.unwrap().unwrap().state, "completed");
    assert!(store.ceremonies(true, 10).await.unwrap().is_empty());
    assert_eq!(store.ceremonies(false, 10).await.unwrap().len(), 3);
    assert_eq!(audited(&store, "custody.ceremony.fail").await.len(), 1);
    assert_log_verifies(&store).await;
});

on_both_backends!(
    key_ceremonies_create_one_cold_wallet_per_asset_and_raise_its_epoch,
    |store: Arc<Store>| async move {
        let c = custodians(&store, 3).await;
        let members: Vec<Member> = c
            .iter()
            .enumerate()
            .map(|(k, id)| Member { identifier: u16::try_from(k + 1).unwrap(), custodian_id: *id })
            .collect();
        let new_wallet = |package: &[u8]| KeyOutcome::NewWallet {
            script_pubkey: script("cold", 1),
            public_package: package.to_vec(),
            members: members.clone(),
        };
        let complete = |id: i64, outcome: KeyOutcome| {
            let store = Arc::clone(&store);
            async move {
                let records = vec![record("custody.ceremony.complete", "system", &format!("ceremony:{id}"))];
                store.complete_ceremony(id, &outcome, NOW, &auditor(), records).await.unwrap()
            }
        };

        let dkg = ceremony(&store, "dkg", "BTC", None).await;
        assert!(complete(dkg, new_wallet(b"package 1")).await);
        let cold = store.active_wallet("BTC", "cold").await.unwrap().expect("the key generation made a wallet");
        assert_eq!(
            (cold.kind.as_str(), cold.status.as_str(), cold.epoch, cold.threshold),
            ("cold", "active", 1, Some(2))
        );
        assert_eq!(cold.script_pubkey, script("cold", 1));
        assert_eq!(cold.public_package.as_deref(), Some(&b"package 1"[..]));
        assert_eq!((cold.hot_key.clone(), cold.account_xpub.clone()), (None, None));
        assert_eq!(store.wallet_members(cold.id, 1).await.unwrap(), members);
        let finished = store.ceremony(dkg).await.unwrap().unwrap();
        assert_eq!((finished.state.as_str(), finished.wallet_id), ("completed", Some(cold.id)));
        let entries = audited(&store, "custody.ceremony.complete").await;
        assert_eq!(entries.len(), 1);
        assert_eq!(
            entries[0].record.details.get("wallet_id"),
            Some(&cold.id.to_string()),
            "the entry names the wallet"
        );
        assert!(!complete(dkg, new_wallet(b"package 1")).await, "completed once");

        // A second key generation for the asset cannot replace the active cold wallet, and stays open.
        let second = ceremony(&store, "dkg", "BTC", None).await;
        assert!(!complete(second, new_wallet(b"package 2")).await);
        let still = store.ceremony(second).await.unwrap().unwrap();
        assert_eq!((still.state.as_str(), still.wallet_id), ("open", None));
        let cold_wallets: Vec<_> = store.wallets().await.unwrap().into_iter().filter(|w| w.kind == "cold").collect();
        assert_eq!(cold_wallets, vec![cold.clone()]);
        assert_eq!(audited(&store, "custody.ceremony.complete").await.len(), 1, "the refusal wrote nothing");

        // A refresh leaves the group key and raises the epoch, with the new epoch's members (here: one fewer).
        let refresh = ceremony(&store, "refresh", "BTC", Some(cold.id)).await;
        let fewer = members[..2].to_vec();
        assert!(
            complete(
                refresh,
                KeyOutcome::NewEpoch { public_package: b"package 1, epoch 2".to_vec(), members: fewer.clone() }
            )
            .await
        );
        let refreshed = store.wallet(cold.id).await.unwrap().unwrap();
        assert_eq!(refreshed.epoch, 2);
        assert_eq!(refreshed.public_package.as_deref(), Some(&b"package 1, epoch 2"[..]));
        assert_eq!(refreshed.script_pubkey, cold.script_pubkey, "the same key");
        assert_eq!(store.wallet_members(cold.id, 2).await.unwrap(), fewer);
        assert_eq!(store.wallet_members(cold.id, 1).await.unwrap(), members, "the old epoch's record stays");
        assert!(store.wallet_members(cold.id, 3).await.unwrap().is_empty());

        // A repair changes nothing in the wallet.
        let repair = ceremony(&store, "repair", "BTC", Some(cold.id)).await;
        assert!(complete(repair, KeyOutcome::Unchanged).await);
        assert_eq!(store.wallet(cold.id).await.unwrap().unwrap(), refreshed);
        assert_eq!(audited(&store, "custody.ceremony.complete").await.len(), 3);
        assert_log_verifies(&store).await;
    }
);

on_both_backends!(deposit_address_indices_are_never_reused_even_concurrently, |store: Arc<Store>| async move {
    let ann = customer(&store, "ann@example.com").await;
    let bob = customer(&store, "bob@example.com").await;
    let btc = derive("BTC");
    let mut made = Vec::new();
    for who in [ann, bob, ann] {
        made.push(store.create_deposit_address(who, "BTC", &btc, NOW).await.unwrap());
    }
    assert_eq!(made.iter().map(|a| a.index).collect::<Vec<_>>(), vec![0, 1, 2], "per asset, whoever asks");
    assert_eq!((made[1].customer_id, made[1].asset.as_str()), (bob, "BTC"));
    assert_eq!((made[1].script_pubkey.clone(), made[1].address.as_str()), (script("BTC", 1), "BTC-address-1"));
    let ltc = store.create_deposit_address(bob, "LTC", &derive("LTC"), NOW).await.unwrap();
    assert_eq!(ltc.index, 0, "another asset counts on its own");

    assert_eq!(store.latest_deposit_address(ann, "BTC").await.unwrap(), Some(made[2].clone()));
    assert_eq!(store.latest_deposit_address(bob, "BTC").await.unwrap(), Some(made[1].clone()));
    assert_eq!(store.latest_deposit_address(bob, "LTC").await.unwrap(), Some(ltc.clone()));
    assert_eq!(store.latest_deposit_address(ann, "LTC").await.unwrap(), None);

    // Eight creations released together by a barrier (the earlier ones opened some of the pool's connections).
    let start = Arc::new(tokio::sync::Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|k| {
            let (store, start) = (Arc::clone(&store), Arc::clone(&start));
            let who = if k % 2 == 0 { ann } else { bob };
            tokio::spawn(async move {
                let btc = derive("BTC");
                start.wait().await;
                store.create_deposit_address(who, "BTC", &btc, NOW).await.unwrap()
            })
        })
        .collect();
    let mut indices = Vec::new();
    for t in tasks {
        let address = t.await.unwrap();
        assert_eq!(address.script_pubkey, script("BTC", address.index));
        indices.push(address.index);
    }
    indices.sort_unstable();
    assert_eq!(indices, (3..=10).collect::<Vec<u32>>(), "eight distinct new indices");

    let mut scripts = store.deposit_scripts("BTC").await.unwrap();
    scripts.sort_by_key(|s| s.2);
    assert_eq!(scripts.iter().map(|s| s.2).collect::<Vec<_>>(), (0..=10).collect::<Vec<u32>>());
    assert!(scripts.iter().all(|(_, _, index, s)| *s == script("BTC", *index)));
    assert_eq!(
        scripts[..3].iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(),
        made.iter().map(|a| (a.id, a.customer_id)).collect::<Vec<_>>()
    );
    assert_eq!(store.deposit_scripts("LTC").await.unwrap(), vec![(ltc.id, bob, 0, script("LTC", 0))]);
    assert!(store.deposit_scripts("ETH").await.unwrap().is_empty());
});

on_both_backends!(
    the_watcher_records_blocks_deposits_and_undoes_them_on_a_reorganisation,
    |store: Arc<Store>| async move {
        staff(&store, "admin").await;
        let ann = customer(&store, "ann@example.com").await;
        let bob = customer(&store, "bob@example.com").await;
        let a = store.create_deposit_address(ann, "BTC", &derive("deposit"), NOW).await.unwrap();
        let b = store.create_deposit_address(bob, "BTC", &derive("deposit"), NOW).await.unwrap();
        let (h100, h101) = (vec![0xA0; 32], vec![0xA1; 32]);

        let block_100 = BlockFindings {
            outputs: vec![
                output(1, 0, "hot", Some((0, 0)), 5_000),
                output(2, 0, "deposit", Some((1, a.index)), 1_000),
                output(2, 1, "deposit", Some((1, b.index)), 2_000),
                output(3, 0, "cold", None, 100_000),
            ],
            deposits: vec![deposit(2, 0, &a, 1_000, 0, "pending"), deposit(2, 1, &b, 2_000, 0, "pending")],
            spends: vec![],
            txids: vec![txid(1), txid(2), txid(3)],
            sources: vec![],
        };
        let block_101 = BlockFindings {
            outputs: vec![output(4, 0, "deposit", Some((1, a.index)), 3_000)],
            deposits: vec![deposit(4, 0, &a, 3_000, 0, "pending")],
            ..BlockFindings::default()
        };
        assert!(store.seen_tip("BTC").await.unwrap().is_none());
        assert!(store.connect_block("BTC", 100, &h100, &block_100, NOW).await.unwrap());
        assert!(store.connect_block("BTC", 101, &h101, &block_101, NOW).await.unwrap());
        assert_eq!(store.seen_tip("BTC").await.unwrap(), Some((101, h101.clone())));
        assert_eq!(store.seen_block("BTC", 100).await.unwrap(), Some(h100.clone()));
        assert_eq!(store.seen_block("BTC", 99).await.unwrap(), None);
        assert!(store.seen_tip("LTC").await.unwrap().is_none(), "per asset");

        let hot = store.spendable_utxos("BTC", "hot", 100).await.unwrap();
        assert_eq!(hot, vec![Utxo { height: 100, ..output(1, 0, "hot", Some((0, 0)), 5_000) }]);
        assert!(store.spendable_utxos("BTC", "hot", 99).await.unwrap().is_empty(), "not confirmed by then");
        let expected = CustodyBalances {
            cold: (100_000, 1),
            hot: (5_000, 1),
            deposit: (6_000, 3),
            pending_deposits: 3,
            ..CustodyBalances::default()
        };
        assert_eq!(store.custody_balances("BTC").await.unwrap(), expected);
        assert_eq!(store.custody_balances("LTC").await.unwrap(), CustodyBalances::default());

        // The same height again (another node, or a replay) changes nothing.
        let replay =
            BlockFindings { outputs: vec![output(9, 0, "hot", Some((0, 1)), 7_000)], ..BlockFindings::default() };
        assert!(!store.connect_block("BTC", 101, &[0xEE; 32], &replay, NOW).await.unwrap());
        assert_eq!(store.seen_block("BTC", 101).await.unwrap(), Some(h101.clone()));
        assert_eq!(store.custody_balances("BTC").await.unwrap(), expected);

        assert!(store.creditable_deposits("BTC", 99).await.unwrap().is_empty());
        assert_eq!(
            store.creditable_deposits("BTC", 100).await.unwrap(),
            vec![deposit(2, 0, &a, 1_000, 100, "pending"), deposit(2, 1, &b, 2_000, 100, "pending")]
        );
        assert_eq!(store.creditable_deposits("BTC", 101).await.unwrap().len(), 3);

        let settle = |tx: u8, vout: u32| {
            let store = Arc::clone(&store);
            async move {
                let records = vec![record("custody.deposit.credit", "system", "deposit")];
                store.settle_deposit("BTC", &txid(tx), vout, "credited", NOW, &auditor(), records).await.unwrap()
            }
        };
        assert!(settle(2, 0).await);
        assert!(!settle(2, 0).await, "credited once");
        assert!(!settle(7, 0).await, "no such deposit");
        assert_eq!(audited(&store, "custody.deposit.credit").await.len(), 1);
        assert_eq!(
            store.creditable_deposits("BTC", 101).await.unwrap(),
            vec![deposit(2, 1, &b, 2_000, 100, "pending"), deposit(4, 0, &a, 3_000, 101, "pending")]
        );
        let mut of_ann = store.customer_deposits(ann, 10).await.unwrap();
        of_ann.sort_by(|x, y| x.txid.cmp(&y.txid));
        assert_eq!(of_ann, vec![deposit(2, 0, &a, 1_000, 100, "credited"), deposit(4, 0, &a, 3_000, 101, "pending")]);
        assert_eq!(store.deposits_at("BTC", 100).await.unwrap().len(), 2);

        // A reorganisation disconnects from the tip down: a pending deposit is orphaned, a credited one (whose reversing
        // transfer the caller has posted) is reversed, and the blocks' outputs disappear.
        let undo = |height: u64, reversed: Vec<(Vec<u8>, u32)>| {
            let store = Arc::clone(&store);
            async move {
                let records = vec![record("custody.block.disconnect", "system", &format!("block:{height}"))];
                store.disconnect_block("BTC", height, &reversed, &[], NOW, &auditor(), records).await.unwrap();
            }
        };
        undo(101, vec![]).await;
        assert_eq!(store.seen_tip("BTC").await.unwrap(), Some((100, h100.clone())));
        assert!(store.deposits_at("BTC", 101).await.unwrap().is_empty());
        let after_101 = CustodyBalances { deposit: (3_000, 2), pending_deposits: 1, ..expected.clone() };
        assert_eq!(store.custody_balances("BTC").await.unwrap(), after_101);

        undo(100, vec![(txid(2), 0)]).await;
        assert_eq!(store.seen_tip("BTC").await.unwrap(), None);
        assert_eq!(store.seen_block("BTC", 100).await.unwrap(), None);
        assert!(store.deposits_at("BTC", 100).await.unwrap().is_empty());
        assert!(store.creditable_deposits("BTC", 1000).await.unwrap().is_empty());
        assert_eq!(store.custody_balances("BTC").await.unwrap(), CustodyBalances::default());
        let mut of_ann = store.customer_deposits(ann, 10).await.unwrap();
        of_ann.sort_by(|x, y| x.txid.cmp(&y.txid));
        assert_eq!(of_ann, vec![deposit(2, 0, &a, 1_000, 100, "reversed"), deposit(4, 0, &a, 3_000, 101, "orphaned")]);
        assert_eq!(store.customer_deposits(bob, 10).await.unwrap(), vec![deposit(2, 1, &b, 2_000, 100, "orphaned")]);
        assert_eq!(audited(&store, "custody.block.disconnect").await.len(), 2);

        // The reversed deposit, mined again in the new chain, waits for its confirmations once more.
        let again = BlockFindings {
            outputs: vec![output(2, 0, "deposit", Some((1, a.index)), 1_000)],
            deposits: vec![deposit(2, 0, &a, 1_000, 0, "pending")],
            ..BlockFindings::default()
        };
        assert!(store.connect_block("BTC", 100, &[0xB0; 32], &again, NOW).await.unwrap());
        assert_eq!(
            store.creditable_deposits("BTC", 100).await.unwrap(),
            vec![deposit(2, 0, &a, 1_000, 100, "pending")]
        );
        assert_log_verifies(&store).await;
    }
);

on_both_backends!(a_deposit_from_a_listed_address_is_held_until_compliance_decides, |store: Arc<Store>| async move {
    staff(&store, "admin").await;
    let ann = customer(&store, "ann@example.com").await;
    let a = store.create_deposit_address(ann, "BTC", &derive("deposit"), NOW).await.unwrap();
    let block_100 = BlockFindings {
        outputs: vec![
            output(2, 0, "deposit", Some((1, a.index)), 1_000),
            output(2, 1, "deposit", Some((1, a.index)), 2_000),
            output(4, 0, "deposit", Some((1, a.index)), 3_000),
        ],
        deposits: vec![
            deposit(2, 0, &a, 1_000, 0, "pending"),
            deposit(2, 1, &a, 2_000, 0, "pending"),
            deposit(4, 0, &a, 3_000, 0, "pending"),
        ],
        sources: vec![(txid(2), "bcrt1qsource".into()), (txid(2), "bcrt1qother".into())],
        ..BlockFindings::default()
    };
    assert!(store.connect_block("BTC", 100, &[0xA0; 32], &block_100, NOW).await.unwrap());
    assert_eq!(store.deposit_sources("BTC", &txid(2)).await.unwrap(), ["bcrt1qother", "bcrt1qsource"]);
    assert!(store.deposit_sources("BTC", &txid(4)).await.unwrap().is_empty());
    assert!(store.deposit_sources("LTC", &txid(2)).await.unwrap().is_empty(), "per asset");

    let hold = |tx: u8, vout: u32| {
        let store = Arc::clone(&store);
        async move {
            let new = NewCase { customer_id: ann, kind: DEPOSIT_HOLD, outcome: "hold", details: "{}" };
            let records = vec![record("compliance.deposit.held", "system", "deposit")];
            store.hold_deposit("BTC", &txid(tx), vout, new, "another", NOW, &auditor(), records).await.unwrap()
        }
    };
    // The first held deposit opens the case, the second is noted on it; a deposit no longer pending is not held.
    let case = hold(2, 0).await.expect("held");
    assert_eq!(hold(2, 1).await, Some(case));
    assert_eq!(hold(2, 0).await, None);
    let (opened, notes) = store.compliance_case(case).await.unwrap().unwrap();
    assert_eq!((opened.kind.as_str(), opened.state.as_str()), (DEPOSIT_HOLD, "open"));
    assert_eq!(notes.len(), 1);
    assert_eq!(audited(&store, "compliance.deposit.held").await.len(), 2);
    assert_eq!(store.creditable_deposits("BTC", 100).await.unwrap(), vec![deposit(4, 0, &a, 3_000, 100, "pending")]);

    // Released: both deposits become creditable, once.
    let resolve = |case: i64, resolution: ComplianceResolution| {
        let store = Arc::clone(&store);
        async move { store.resolve_compliance_case(case, resolution, "leo", "why", NOW, &auditor(), vec![]).await.unwrap() }
    };
    assert_eq!(
        resolve(case, ComplianceResolution::Release).await,
        ComplianceResolved::Done { unfrozen: false, deposits: 2 }
    );
    assert_eq!(
        store.creditable_deposits("BTC", 100).await.unwrap(),
        vec![
            deposit(2, 0, &a, 1_000, 100, "released"),
            deposit(2, 1, &a, 2_000, 100, "released"),
            deposit(4, 0, &a, 3_000, 100, "pending"),
        ]
    );
    let records = || vec![record("custody.deposit.credited", "system", "deposit")];
    assert!(store.settle_deposit("BTC", &txid(2), 0, "credited", NOW, &auditor(), records()).await.unwrap());
    assert!(!store.settle_deposit("BTC", &txid(2), 0, "credited", NOW, &auditor(), records()).await.unwrap());

    // Kept: the deposit is refused for good and never creditable.
    let second = hold(4, 0).await.expect("held");
    assert_ne!(second, case, "the first case is resolved: a new one opens");
    assert_eq!(
        resolve(second, ComplianceResolution::KeepFrozen).await,
        ComplianceResolved::Done { unfrozen: false, deposits: 1 }
    );
    assert_eq!(store.creditable_deposits("BTC", 100).await.unwrap(), vec![deposit(2, 1, &a, 2_000, 100, "released")]);
    let mut states: Vec<(Vec<u8>, u32, String)> =
        store.customer_deposits(ann, 10).await.unwrap().into_iter().map(|d| (d.txid, d.vout, d.state)).collect();
    states.sort();
    assert_eq!(
        states,
        vec![
            (txid(2), 0, "credited".to_owned()),
            (txid(2), 1, "released".to_owned()),
            (txid(4), 0, "refused".to_owned())
        ]
    );

    // A reorganisation that mines the refused deposit again does not reopen it; the others wait once more.
    let records = vec![record("custody.block.disconnect", "system", "block:100")];
    store.disconnect_block("BTC", 100, &[], &[], NOW, &auditor(), records).await.unwrap();
    assert!(store.connect_block("BTC", 100, &[0xB0; 32], &block_100, NOW).await.unwrap());
    let mut states: Vec<(Vec<u8>, u32, String)> =
        store.customer_deposits(ann, 10).await.unwrap().into_iter().map(|d| (d.txid, d.vout, d.state)).collect();
    states.sort();
    let expected = [(txid(2), 0, "pending"), (txid(2), 1, "pending"), (txid(4), 0, "refused")];
    assert_eq!(states, expected.map(|(t, v, s)| (t, v, s.to_owned())));
    assert_log_verifies(&store).await;
});

on_both_backends!(a_custody_transaction_reserves_its_outputs_until_it_fails, |store: Arc<Store>| async move {
    staff(&store, "admin").await;
    let block_100 = BlockFindings {
        outputs: vec![
            output(1, 0, "hot", Some((0, 0)), 4_000),
            output(1, 1, "hot", Some((0, 1)), 6_000),
            output(2, 0, "deposit", Some((1, 0)), 1_000),
        ],
        ..BlockFindings::default()
    };
    assert!(store.connect_block("BTC", 100, &[0xA0; 32], &block_100, NOW).await.unwrap());
    let record_tx = |new: CustodyTx, spends: Vec<(Vec<u8>, u32)>| {
        let store = Arc::clone(&store);
        async move {
            let records = vec![record("custody.tx.create", "system", "?")];
            store.record_custody_tx(&new, &spends, NOW, &auditor(), records).await.unwrap()
        }
    };
    let advance = |id: i64,
                   from: &'static str,
                   to: &'static str,
                   signed: Option<&'static [u8]>,
                   failure: Option<&'static str>| {
        let store = Arc::clone(&store);
        async move {
            let records = vec![record("custody.tx.advance", "system", &format!("custody_tx:{id}"))];
            store.advance_custody_tx(id, from, to, signed, failure, NOW, &auditor(), records).await.unwrap()
        }
    };

    let sweep = custody_tx("sweep", 0x51, None, 9_500, 0);
    let first = record_tx(sweep.clone(), vec![(txid(1), 0), (txid(1), 1)]).await.expect("the outputs are free");
    assert_eq!(store.custody_tx(first).await.unwrap(), Some(CustodyTx { id: first, ..sweep.clone() }));
    let created = audited(&store, "custody.tx.create").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].record.target, format!("custody_tx:{first}"));
    assert!(outpoints(&store, "hot").await.is_empty(), "reserved");

    // A second transaction that would spend a reserved output writes nothing, not even the reservation of the
    // free output it names first.
    let clash = custody_tx("sweep", 0x52, None, 1_500, 0);
    assert_eq!(record_tx(clash.clone(), vec![(txid(2), 0), (txid(1), 1)]).await, None);
    assert_eq!(record_tx(clash, vec![(txid(9), 9)]).await, None, "an output we do not have");
    assert_eq!(outpoints(&store, "deposit").await, vec![(txid(2), 0)]);
    assert_eq!(store.custody_txs("BTC", &[]).await.unwrap().iter().map(|t| t.id).collect::<Vec<_>>(), vec![first]);
    assert_eq!(audited(&store, "custody.tx.create").await.len(), 1);
    let expected = CustodyBalances {
        hot: (0, 0),
        deposit: (1_000, 1),
        in_flight_to_cold: 9_500,
        pending_sweeps: 1,
        ..CustodyBalances::default()
    };
    assert_eq!(store.custody_balances("BTC").await.unwrap(), expected);

    assert!(advance(first, "signing", "signed", Some(&b"signed bytes"[..]), None).await);
    assert!(!advance(first, "signing", "broadcast", None, None).await, "it is not signing any more");
    assert!(advance(first, "signed", "broadcast", None, None).await);
    let broadcast = store.custody_tx(first).await.unwrap().unwrap();
    assert_eq!((broadcast.state.as_str(), broadcast.tx.as_slice()), ("broadcast", &b"signed bytes"[..]));
    assert_eq!(store.custody_txs("BTC", &["broadcast"]).await.unwrap(), vec![broadcast]);
    assert!(store.custody_txs("BTC", &["signing", "signed"]).await.unwrap().is_empty());
    assert_eq!(store.custody_balances("BTC").await.unwrap(), expected, "still in flight");

    // Its block confirms it: the spent outputs are gone from the balances, its output to cold arrives.
    let block_101 = BlockFindings {
        outputs: vec![output(0x51, 0, "cold", None, 9_500)],
        spends: vec![(txid(1), 0, txid(0x51)), (txid(1), 1, txid(0x51))],
        txids: vec![txid(7), txid(0x51)],
        ..BlockFindings::default()
    };
    assert!(store.connect_block("BTC", 101, &[0xA1; 32], &block_101, NOW).await.unwrap());
    assert_eq!(store.custody_tx(first).await.unwrap().unwrap().state, "confirmed");
    let confirmed = CustodyBalances { cold: (9_500, 1), deposit: (1_000, 1), ..CustodyBalances::default() };
    assert_eq!(store.custody_balances("BTC").await.unwrap(), confirmed);
    assert!(!advance(first, "broadcast", "failed", None, Some("x")).await, "confirmed is final here");

    // A transaction that fails releases what it reserved.
    let second = record_tx(custody_tx("sweep", 0x53, None, 900, 0), vec![(txid(2), 0)]).await.unwrap();
    assert!(outpoints(&store, "deposit").await.is_empty());
    assert_eq!(
        store.custody_balances("BTC").await.unwrap(),
        CustodyBalances { cold: (9_500, 1), in_flight_to_cold: 900, pending_sweeps: 1, ..CustodyBalances::default() }
    );
    assert!(advance(second, "signing", "failed", None, Some("fee too low")).await);
    let failed = store.custody_tx(second).await.unwrap().unwrap();
    assert_eq!((failed.state.as_str(), failed.failure.as_deref()), ("failed", Some("fee too low")));
    assert_eq!(outpoints(&store, "deposit").await, vec![(txid(2), 0)], "spendable again");
    assert_eq!(store.custody_balances("BTC").await.unwrap(), confirmed);
    assert!(!advance(second, "signing", "failed", None, Some("again")).await);
    assert_eq!(store.custody_txs("BTC", &["failed"]).await.unwrap(), vec![failed]);
    assert_eq!(audited(&store, "custody.tx.advance").await.len(), 3);
    assert_log_verifies(&store).await;
});

on_both_backends!(a_refill_needs_a_quorum_of_approvers_other_than_its_proposer, |store: Arc<Store>| async move {
    let proposer = staff(&store, "proposer").await;
    let (x, y, z) = (staff(&store, "x").await, staff(&store, "y").await, staff(&store, "z").await);
    let propose = |amount: u64| {
        let store = Arc::clone(&store);
        async move {
            let records = vec![record("custody.refill.propose", &format!("staff:{proposer}"), "?")];
            store
                .propose_refill(
                    "BTC",
                    amount,
                    "the hot wallet is low",
                    &format!("staff:{proposer}"),
                    NOW,
                    &auditor(),
                    records,
                )
                .await
                .unwrap()
        }
    };
    // Approvals are listed in the order they were given: each call is a second later than the one before.
    let clock = std::sync::atomic::AtomicU64::new(NOW);
    let approve = |id: i64, staff_id: i64| {
        let store = Arc::clone(&store);
        let now = clock.fetch_add(S, std::sync::atomic::Ordering::Relaxed);
        async move {
            let records = vec![record("custody.refill.approve", &format!("staff:{staff_id}"), &format!("refill:{id}"))];
            store.approve_refill(id, staff_id, 2, now, &auditor(), records).await.unwrap()
        }
    };

    let id = propose(50_000).await;
    let proposed = audited(&store, "custody.refill.propose").await;
    assert_eq!(proposed.len(), 1);
    assert_eq!(proposed[0].record.target, format!("refill:{id}"));
    let pending = proposal(&store, id).await;
    assert_eq!(
        (pending.asset.as_str(), pending.amount, pending.reason.as_str()),
        ("BTC", 50_000, "the hot wallet is low")
    );
    assert_eq!((pending.state.as_str(), pending.ceremony_id, pending.approvals.clone()), ("pending", None, vec![]));
    assert_eq!(pending.proposed_by, format!("staff:{proposer}"));
    assert_eq!(store.custody_balances("BTC").await.unwrap().pending_refills, 1);

    assert_eq!(approve(id, proposer).await, RefillDecision::OwnProposal);
    let RefillDecision::Recorded(recorded) = approve(id, x).await else { panic!("one approval of two") };
    assert_eq!((recorded.state.as_str(), recorded.approvals.clone()), ("pending", vec![x]));
    assert_eq!(approve(id, x).await, RefillDecision::AlreadyApproved);
    let RefillDecision::Approved(approved) = approve(id, y).await else { panic!("the quorum") };
    assert_eq!((approved.state.as_str(), approved.approvals.clone()), ("approved", vec![x, y]));
    assert_eq!(approve(id, z).await, RefillDecision::NotPending);
    assert_eq!(approve(id + 1000, z).await, RefillDecision::NotFound);
    assert_eq!(proposal(&store, id).await.approvals, vec![x, y], "the refused approvals are not counted");
    assert_eq!(audited(&store, "custody.refill.approve").await.len(), 2, "only the counted approvals");
    assert_eq!(store.custody_balances("BTC").await.unwrap().pending_refills, 1, "approved is not done");

    // Only an approved refill takes a signing ceremony, and only one.
    let other = propose(10_000).await;
    let signing = ceremony(&store, "sign", "BTC", None).await;
    assert!(!store.attach_refill_ceremony(other, signing).await.unwrap(), "still pending");
    assert!(store.attach_refill_ceremony(id, signing).await.unwrap());
    let later = ceremony(&store, "sign", "BTC", None).await;
    assert!(!store.attach_refill_ceremony(id, later).await.unwrap(), "it has one already");
    assert_eq!(proposal(&store, id).await.ceremony_id, Some(signing));

    assert_eq!(
        store.refill_proposals(Some("BTC")).await.unwrap().iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![other, id]
    );
    assert!(store.refill_proposals(Some("LTC")).await.unwrap().is_empty());
    assert_eq!(store.custody_balances("BTC").await.unwrap().pending_refills, 2);
    assert_log_verifies(&store).await;
});

// Regression: `approve_refill` looked its proposal up among the 200 newest only, so approving an older one recorded
// the approval (and could approve it) but answered `NotFound`.
on_both_backends!(approving_an_old_refill_among_many_answers_its_decision, |store: Arc<Store>| async move {
    let proposer = format!("staff:{}", staff(&store, "proposer").await);
    let (x, y) = (staff(&store, "x").await, staff(&store, "y").await);
    let old = store.propose_refill("BTC", 1_000, "old", &proposer, NOW, &auditor(), vec![]).await.unwrap();
    for _ in 0..200 {
        store.propose_refill("BTC", 1_000, "newer", &proposer, NOW, &auditor(), vec![]).await.unwrap();
    }
    let first = store.approve_refill(old, x, 2, NOW, &auditor(), vec![]).await.unwrap();
    assert!(matches!(&first, RefillDecision::Recorded(p) if p.id == old && p.approvals == vec![x]), "{first:?}");
    let second = store.approve_refill(old, y, 2, NOW + S, &auditor(), vec![]).await.unwrap();
    assert!(matches!(&second, RefillDecision::Approved(p) if p.id == old && p.state == "approved"), "{second:?}");
});

on_both_backends!(concurrent_approvals_approve_a_refill_exactly_once, |store: Arc<Store>| async move {
    let proposer = staff(&store, "proposer").await;
    let mut approvers = Vec::new();
    for k in 0..5 {
        approvers.push(staff(&store, &format!("approver{k}")).await);
    }
    let id = store
        .propose_refill("BTC", 70_000, "low", &format!("staff:{proposer}"), NOW, &auditor(), vec![])
        .await
        .unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(approvers.len()));
    let tasks: Vec<_> = approvers
        .iter()
        .map(|&staff_id| {
            let (store, start) = (Arc::clone(&store), Arc::clone(&start));
            tokio::spawn(async move {
                let records =
                    vec![record("custody.refill.approve", &format!("staff:{staff_id}"), &format!("refill:{id}"))];
                start.wait().await;
                (staff_id, store.approve_refill(id, staff_id, 2, NOW, &auditor(), records).await.unwrap())
            })
        })
        .collect();
    let (mut recorded, mut approved, mut not_pending) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        match t.await.unwrap() {
            (staff_id, RefillDecision::Recorded(_)) => recorded.push(staff_id),
            (staff_id, RefillDecision::Approved(p)) => {
                assert_eq!(p.state, "approved");
                approved.push(staff_id);
            }
            (_, RefillDecision::NotPending) => not_pending += 1,
            (staff_id, other) => panic!("staff {staff_id}: {other:?}"),
        }
    }
    assert_eq!((recorded.len(), approved.len(), not_pending), (1, 1, 3), "one counted, one approving, three late");
    let done = proposal(&store, id).await;
    assert_eq!(done.state, "approved");
    let mut counted = done.approvals.clone();
    counted.sort_unstable();
    let mut winners = [recorded, approved].concat();
    winners.sort_unstable();
    assert_eq!(counted, winners, "the approvals stored are exactly those answered as counted");
    assert_eq!(audited(&store, "custody.refill.approve").await.len(), 2);
    assert_log_verifies(&store).await;
});

on_both_backends!(a_refills_signing_session_that_fails_or_expires_frees_its_outputs_and_the_refill, |store: Arc<
    Store,
>| async move {
    let proposer = staff(&store, "proposer").await;
    let (x, y) = (staff(&store, "x").await, staff(&store, "y").await);
    let cold = BlockFindings { outputs: vec![output(3, 0, "cold", None, 100_000)], ..BlockFindings::default() };
    assert!(store.connect_block("BTC", 100, &[0xA0; 32], &cold, NOW).await.unwrap());
    let id = store
        .propose_refill("BTC", 40_000, "low", &format!("staff:{proposer}"), NOW, &auditor(), vec![])
        .await
        .unwrap();
    assert!(matches!(
        store.approve_refill(id, x, 2, NOW, &auditor(), vec![]).await.unwrap(),
        RefillDecision::Recorded(_)
    ));
    assert!(matches!(
        store.approve_refill(id, y, 2, NOW, &auditor(), vec![]).await.unwrap(),
        RefillDecision::Approved(_)
    ));
    // Each attempt: a signing session carrying the refill transaction, which reserves the cold output.
    let attempt = |tx: u8| {
        let store = Arc::clone(&store);
        async move {
            let session = ceremony(&store, "sign", "BTC", None).await;
            assert!(store.attach_refill_ceremony(id, session).await.unwrap(), "the refill is free for a session");
            let refill = custody_tx("refill", tx, Some(session), 59_500, 40_000);
            let tx_id =
                store.record_custody_tx(&refill, &[(txid(3), 0)], NOW, &auditor(), vec![]).await.unwrap().unwrap();
            assert!(outpoints(&store, "cold").await.is_empty());
            assert_eq!(store.custody_tx_of_ceremony(session).await.unwrap().unwrap().id, tx_id);
            (session, tx_id)
        }
    };

    let (session, tx_id) = attempt(0x61).await;
    let in_flight = store.custody_balances("BTC").await.unwrap();
    assert_eq!((in_flight.in_flight_to_cold, in_flight.in_flight_to_hot), (59_500, 40_000));
    assert_eq!((in_flight.pending_sweeps, in_flight.pending_refills, in_flight.cold), (0, 1, (0, 0)));
    assert!(store.fail_ceremony(session, "custodian 3 did not answer", NOW, &auditor(), vec![]).await.unwrap());
    let failed = store.custody_tx(tx_id).await.unwrap().unwrap();
    assert_eq!((failed.state.as_str(), failed.failure.as_deref()), ("failed", Some("custodian 3 did not answer")));
    assert_eq!(outpoints(&store, "cold").await, vec![(txid(3), 0)]);
    let refill = proposal(&store, id).await;
    assert_eq!((refill.state.as_str(), refill.ceremony_id), ("approved", None));

    let (session, tx_id) = attempt(0x62).await;
    assert_eq!(store.expire_ceremonies(NOW + 600 * S).await.unwrap(), vec![session]);
    let expired = store.custody_tx(tx_id).await.unwrap().unwrap();
    assert_eq!((expired.state.as_str(), expired.failure.as_deref()), ("failed", Some("expired")));
    assert_eq!(outpoints(&store, "cold").await, vec![(txid(3), 0)]);
    let refill = proposal(&store, id).await;
    assert_eq!((refill.state.as_str(), refill.ceremony_id), ("approved", None), "as after a failure");

    let (session, tx_id) = attempt(0x63).await;
    let signed = KeyOutcome::Signed { custody_tx_id: tx_id, tx: b"signed refill".to_vec() };
    assert!(store.complete_ceremony(session, &signed, NOW, &auditor(), vec![]).await.unwrap());
    let done = store.custody_tx(tx_id).await.unwrap().unwrap();
    assert_eq!((done.state.as_str(), done.tx.as_slice()), ("signed", &b"signed refill"[..]));
    assert_eq!(proposal(&store, id).await.state, "done");
    let balances = store.custody_balances("BTC").await.unwrap();
    assert_eq!((balances.pending_refills, balances.in_flight_to_hot, balances.cold), (0, 40_000, (0, 0)));
    assert_log_verifies(&store).await;
});

on_both_backends!(a_replacement_takes_the_reservation_and_gives_it_back, |store: Arc<Store>| async move {
    staff(&store, "admin").await;
    let block = BlockFindings {
        outputs: vec![output(1, 0, "hot", Some((0, 0)), 4_000), output(1, 1, "hot", Some((0, 0)), 6_000)],
        ..BlockFindings::default()
    };
    assert!(store.connect_block("BTC", 100, &[0xB0; 32], &block, NOW).await.unwrap());
    let spends = vec![(txid(1), 0), (txid(1), 1)];
    let original = custody_tx("withdrawal", 0x61, None, 0, 2_000);
    let first = store.record_custody_tx(&original, &spends, NOW, &auditor(), vec![]).await.unwrap().unwrap();
    let replacement = CustodyTx { txid: txid(0x62), fee: 1_500, to_hot: 1_000, state: "signed".into(), ..original };
    let replace = |old: i64, inputs: usize| {
        let (store, new) = (Arc::clone(&store), replacement.clone());
        async move {
            let records = vec![record("withdrawal.fee_bumped", "staff:1", "withdrawal:x")];
            store.replace_custody_tx(old, &new, inputs, NOW, &auditor(), records).await.unwrap()
        }
    };
    let reserved_by = |tx: u8| {
        let store = Arc::clone(&store);
        async move {
            let mut by = Vec::new();
            for vout in 0..2 {
                by.push(store.output_spend("BTC", &txid(1), vout).await.unwrap().unwrap().spent_by);
            }
            by == vec![Some(txid(tx)), Some(txid(tx))]
        }
    };
    // Only a broadcast transaction is replaced.
    assert_eq!(replace(first, 2).await, None);
    assert!(
        store.advance_custody_tx(first, "signing", "broadcast", None, None, NOW, &auditor(), vec![]).await.unwrap()
    );
    // Nor when one of its inputs is no longer reserved for it: nothing is written.
    assert_eq!(replace(first, 3).await, None);
    assert_eq!(store.custody_tx(first).await.unwrap().unwrap().state, "broadcast");
    assert!(store.custody_tx_by_txid(&txid(0x62)).await.unwrap().is_none());
    let second = replace(first, 2).await.expect("replaced");
    let old = store.custody_tx(first).await.unwrap().unwrap();
    assert_eq!(old.state, "failed");
    assert_eq!(old.failure, Some(format!("replaced by {}", rampart_store::txid_text(&txid(0x62)))));
    assert!(reserved_by(0x62).await, "the reservation moved");
    assert!(outpoints(&store, "hot").await.is_empty(), "the failed original released nothing");
    assert_eq!(store.custody_tx_by_txid(&txid(0x62)).await.unwrap().map(|t| (t.id, t.fee)), Some((second, 1_500)));
    assert_eq!(store.custody_balances("BTC").await.unwrap().in_flight_to_hot, 1_000, "only the replacement counts");
    assert_eq!(replace(first, 2).await, None, "replaced once");

    // The chain refuses the replacement: everything goes back to the original.
    let restore = |state: &'static str| {
        let store = Arc::clone(&store);
        async move { store.restore_replaced(second, first, state, "refused", NOW, &auditor(), vec![]).await.unwrap() }
    };
    assert!(restore("broadcast").await);
    assert!(!restore("broadcast").await, "restored once");
    assert_eq!(store.custody_tx(first).await.unwrap().unwrap().state, "broadcast");
    let refused = store.custody_tx(second).await.unwrap().unwrap();
    assert_eq!((refused.state.as_str(), refused.failure.as_deref()), ("failed", Some("refused")));
    assert!(reserved_by(0x61).await, "the reservation came back");
    assert!(outpoints(&store, "hot").await.is_empty());
    assert_eq!(audited(&store, "withdrawal.fee_bumped").await.len(), 1);
    assert_log_verifies(&store).await;
});
