//! Proof-of-reserves records, on SQLite and (when configured) PostgreSQL: the consistent read of every customer's
//! posted balances (a pending hold still counts; custody accounts and zero balances do not; a read taken while
//! transfers commit sees the ledger at one point), and snapshots (recorded once per name, audited, read back).

use std::collections::BTreeMap;
use std::sync::Arc;

use rampart_audit::{AuditRecord, Outcome};
use rampart_core::{AccountId, Amount, AssetCode, TransferId};
use rampart_ledger::{AccountFlags, NewAccount, NewTransfer, TransferFlags};
use rampart_store::{Attestation, AuditFilter, Effects, LiabilityOwner, NewCustomer, NewReservesSnapshot, Store};

const NOW: u64 = 1_800_000_000_000_000_000;
const CUSTOMER: u16 = 1;

#[macro_use]
mod common;

use common::{auditor, keyring};

macro_rules! on_both_backends {
    ($name:ident, $body:expr) => {
        both_backends!("reserves_", $name, $body);
    };
}

fn record(action: &str, target: &str) -> AuditRecord {
    AuditRecord {
        time_ns: NOW,
        actor: "staff:ops".into(),
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

async fn customer(store: &Store, email: &str) -> (i64, [u8; 16]) {
    let index = keyring().blind_index("customer.email", email.as_bytes());
    let email_ct = keyring().encrypt(email.as_bytes(), b"test");
    let totp_ct = keyring().encrypt(b"01234567890123456789", b"test");
    let handle = rand_bytes();
    let new = NewCustomer {
        handle,
        email_index: &index,
        email: &email_ct,
        password_hash: "$argon2id$placeholder",
        totp_pending: &totp_ct,
    };
    let id = store
        .create_customer(&new, &rand_bytes(), "test-agent", "192.0.2.1", NOW, &auditor(), |id| {
            Effects::audit(record("auth.customer.sign_up", &format!("customer:{id}")))
        })
        .await
        .unwrap()
        .expect("a fresh email is free")
        .0;
    (id, handle)
}

fn asset(code: &str) -> AssetCode {
    AssetCode::new(code).unwrap()
}

fn account(id: u128, code: u16, user: i64, coin: &str, limited: bool) -> NewAccount {
    NewAccount {
        id: AccountId(id),
        asset: asset(coin),
        code,
        flags: AccountFlags { debits_must_not_exceed_credits: limited, ..AccountFlags::default() },
        user_data: u128::try_from(user).unwrap(),
    }
}

fn transfer(id: u128, debit: u128, credit: u128, amount: u128, coin: &str, pending: bool) -> NewTransfer {
    NewTransfer {
        id: TransferId(id),
        debit_account_id: AccountId(debit),
        credit_account_id: AccountId(credit),
        amount: Amount::new(amount),
        pending_id: None,
        asset: asset(coin),
        code: 7,
        flags: TransferFlags { pending, ..TransferFlags::default() },
        timeout_s: 0,
        user_data: 0,
    }
}

on_both_backends!(the_read_is_every_customers_posted_balance, |store: Arc<Store>| async move {
    let (alice, alice_handle) = customer(&store, "alice@example.com").await;
    let (bob, bob_handle) = customer(&store, "bob@example.com").await;
    let (carol, _) = customer(&store, "carol@example.com").await;
    // Custody accounts (code 10, user 0) fund the customers' accounts (code 1).
    let accounts = [
        account(100, 10, 0, "BTC", false),
        account(101, 10, 0, "ETH", false),
        account(1, CUSTOMER, alice, "BTC", true),
        account(2, CUSTOMER, alice, "ETH", true),
        account(3, CUSTOMER, bob, "BTC", true),
        account(4, CUSTOMER, carol, "BTC", true),
        // An account of the customers' code made by hand, naming nobody: still a liability.
        account(5, CUSTOMER, 9_999, "BTC", true),
        // One that may go below zero and does: it owes, and is left out (never netted).
        account(6, CUSTOMER, 9_998, "BTC", false),
    ];
    store.create_accounts(&accounts, NOW).await.unwrap();
    let eth = u128::from(u64::MAX) * 1_000; // wei beyond 2^64
    let batch = [
        transfer(10, 100, 1, 5_000, "BTC", false),
        transfer(11, 101, 2, eth, "ETH", false),
        transfer(12, 100, 3, 700, "BTC", false),
        transfer(14, 100, 5, 9, "BTC", false),
        transfer(15, 6, 100, 4, "BTC", false),
        // Bob's withdrawal in flight: a hold of 200 still counts as owed.
        transfer(13, 3, 100, 200, "BTC", true),
    ];
    store.create_transfers(&batch, NOW).await.unwrap();
    let read = store.read_liabilities(CUSTOMER).await.unwrap();
    assert_eq!(read.ledger_seq, 6);
    assert_eq!(read.overdrawn, vec![6]);
    let mut got = read.balances.clone();
    got.sort();
    let mut want = vec![
        (LiabilityOwner::Customer(alice_handle.to_vec()), "BTC".to_owned(), 5_000),
        (LiabilityOwner::Customer(alice_handle.to_vec()), "ETH".to_owned(), eth),
        (LiabilityOwner::Customer(bob_handle.to_vec()), "BTC".to_owned(), 700),
        (LiabilityOwner::Account(5), "BTC".to_owned(), 9),
    ];
    want.sort();
    assert_eq!(got, want, "carol's zero balance and the custody accounts are left out");

    // Reads taken while transfers commit each see whole batches: the total of customers' BTC is always a multiple
    // of a batch's 30 units plus the starting 5,709.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..40u128 {
                let batch = [
                    transfer(1_000 + 3 * i, 100, 1, 10, "BTC", false),
                    transfer(1_001 + 3 * i, 100, 3, 10, "BTC", false),
                    transfer(1_002 + 3 * i, 100, 1, 10, "BTC", false),
                ];
                store.create_transfers(&batch, NOW).await.unwrap();
            }
        })
    };
    for _ in 0..20 {
        let read = store.read_liabilities(CUSTOMER).await.unwrap();
        let btc: u128 = read.balances.iter().filter(|b| b.1 == "BTC").map(|b| b.2).sum();
        assert_eq!((btc - 5_709) % 30, 0, "a read saw part of a batch: {btc}");
        assert_eq!(u128::try_from(read.ledger_seq - 6).unwrap() * 10, btc - 5_709, "the ledger point names the read");
    }
    writer.await.unwrap();
});

on_both_backends!(snapshots_are_recorded_once_and_audited, |store: Arc<Store>| async move {
    let cold = Attestation {
        asset: "BTC".into(),
        script_pubkey: vec![0x51, 0x20, 1],
        wallet: "cold".into(),
        height: 812,
        block_hash: "00ab".into(),
        balance: 300,
        outputs: vec![("aa:0".into(), 100), ("bb:1".into(), 200)],
        signature: None,
        ceremony_id: None,
    };
    let hot = Attestation {
        script_pubkey: vec![0x51, 0x20, 2],
        wallet: "hot".into(),
        balance: 5,
        outputs: vec![("cc:0".into(), 5)],
        signature: Some(vec![9; 64]),
        ..cold.clone()
    };
    let attestations = [cold.clone(), hot.clone()];
    let new = NewReservesSnapshot {
        name: "2026-12-04/ledger-4",
        ledger_seq: 4,
        created_by: "staff:ops",
        params: "{\"height\":10}",
        root: &[7; 32],
        totals: "[\"5700\"]",
        users: 2,
        secret: b"sealed secret",
        holdings: b"encoded holdings",
        attestations: &attestations,
        form: "private",
        publication: Some(b"the publication"),
    };
    let id = store
        .insert_reserves_snapshot(&new, NOW, &auditor(), vec![record("reserves.snapshot", "reserves")])
        .await
        .unwrap()
        .expect("a fresh name");
    assert!(store.insert_reserves_snapshot(&new, NOW, &auditor(), vec![]).await.unwrap().is_none());
    let listed = store.reserves_snapshots(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    let got = store.reserves_snapshot(new.name).await.unwrap().unwrap();
    assert_eq!(got, listed[0]);
    assert_eq!((got.id, got.ledger_seq, got.root.as_slice(), got.users), (id, 4, &[7u8; 32][..], 2));
    assert_eq!((got.params.as_str(), got.totals.as_str(), got.created_at_ns), (new.params, new.totals, NOW));
    let (secret, holdings) = store.reserves_snapshot_material(new.name).await.unwrap().unwrap();
    assert_eq!((secret.as_slice(), holdings.as_slice()), (&b"sealed secret"[..], &b"encoded holdings"[..]));
    assert!(store.reserves_snapshot("nope").await.unwrap().is_none());
    let entries = store.audit_entries(&AuditFilter::default(), 100).await.unwrap();
    let entry = entries.iter().find(|e| e.record.action == "reserves.snapshot").expect("audited");
    assert_eq!(entry.record.details.get("reserves_snapshot"), Some(&id.to_string()));
    // The reserves' side, stored with it; no session names the cold address yet.
    assert_eq!(store.reserves_attestations(id).await.unwrap(), vec![cold, hot]);
    assert_eq!(got.form, "private");
    assert_eq!(store.reserves_publication(new.name).await.unwrap().as_deref(), Some(&b"the publication"[..]));
    assert_eq!(store.reserves_publication("nope").await.unwrap(), None);
});
