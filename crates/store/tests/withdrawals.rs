//! What the gates of a new withdrawal read, on SQLite and (when configured) PostgreSQL: the grouped read
//! (`withdrawal_positions`, one statement on PostgreSQL) answers each ask as the single read does — its customer's KYC
//! level and whitelist mode, the destination's entry, the balance, and the sums since each of the ask's own times —
//! in the asks' order, `None` for a customer that does not exist.

use std::sync::Arc;

use rampart_core::{AccountId, Amount, AssetCode, TransferId};
use rampart_ledger::{AccountFlags, NewAccount, NewTransfer, TransferFlags};
use rampart_store::{Effects, NewCustomer, NewWithdrawal, PositionAsk, Requested, Store};

const NOW: u64 = 1_800_000_000_000_000_000;
const HOUR: u64 = 3_600_000_000_000;

#[macro_use]
mod common;

use common::auditor;

macro_rules! on_both_backends {
    ($name:ident, $body:expr) => {
        both_backends!("withdrawals_", $name, $body);
    };
}

async fn customer(store: &Store, n: u8) -> i64 {
    let index = [n; 32];
    let new = NewCustomer { handle: [n; 16], email_index: &index, email: b"e", password_hash: "h", totp_pending: b"t" };
    store
        .create_customer(&new, &[n; 32], "test", "127.0.0.1", NOW, &auditor(), |_| Effects::default())
        .await
        .unwrap()
        .unwrap()
        .0
}

fn account(id: u128, flags: AccountFlags) -> NewAccount {
    NewAccount { id: AccountId(id), asset: AssetCode::BTC, code: 1, flags, user_data: 0 }
}

fn transfer(id: u128, debit: u128, credit: u128, amount: u128, flags: TransferFlags) -> NewTransfer {
    NewTransfer {
        id: TransferId(id),
        debit_account_id: AccountId(debit),
        credit_account_id: AccountId(credit),
        amount: Amount::new(amount),
        pending_id: None,
        asset: AssetCode::BTC,
        code: 1,
        flags,
        timeout_s: 0,
        user_data: 0,
    }
}

/// A withdrawal of `usd_micro`, made `at_ns`, holding `amount` of the customer's account 100 on clearing account 200.
fn withdrawal(customer_id: i64, n: u128, amount: u128, usd_micro: u64) -> NewWithdrawal {
    NewWithdrawal {
        id: format!("{n:032x}"),
        customer_id,
        idempotency_key: format!("key-{n}"),
        request_hash: [0; 32],
        asset: "BTC".into(),
        amount,
        fee_held: 0,
        usd_micro,
        address: "bcrt1qdestination".into(),
        whitelist_id: None,
        initiator: "api_key",
        actor: format!("customer:{customer_id}"),
        clearing: None,
        hold: transfer(n, 100, 200, amount, TransferFlags { pending: true, ..TransferFlags::default() }),
        then: None,
        windows: Vec::new(),
        screening: None,
        frozen_ok: false,
        effects: Effects::default(),
        risk_events: Vec::new(),
    }
}

on_both_backends!(grouped_reads_answer_as_single_reads, |store: Arc<Store>| async move {
    let store = &*store;
    let (alice, bob) = (customer(store, 1).await, customer(store, 2).await);
    // Alice: a confirmed whitelist entry, an account of 1,000,000 units, two withdrawals an hour apart.
    let entry = store
        .add_whitelist_address(alice, "BTC", "bcrt1qalice", "mine", NOW, &auditor(), |_| Effects::default())
        .await
        .unwrap()
        .unwrap();
    store.confirm_whitelist_address(entry.id, alice, NOW, NOW, &auditor(), Effects::default()).await.unwrap();
    let guarded = AccountFlags { debits_must_not_exceed_credits: true, ..AccountFlags::default() };
    let made = store
        .create_accounts(
            &[account(100, guarded), account(200, AccountFlags::default()), account(300, AccountFlags::default())],
            NOW,
        )
        .await
        .unwrap();
    assert!(made.iter().all(|r| matches!(r, rampart_ledger::CreateAccountResult::Ok)), "{made:?}");
    let funded =
        store.create_transfers(&[transfer(1, 300, 100, 1_000_000, TransferFlags::default())], NOW).await.unwrap();
    assert!(funded[0].is_recorded());
    let limits = |_: &NewWithdrawal, _: rampart_store::Position| Ok::<(), ()>(());
    for (n, at, usd) in [(10, NOW, 7_000_000), (11, NOW + HOUR, 5_000_000)] {
        let recorded =
            store.request_withdrawal(withdrawal(alice, n, 1_000, usd), 0, 0, limits, at, &auditor()).await.unwrap();
        assert!(matches!(recorded, Requested::Recorded(_)));
    }

    let ask = |customer_id: i64, address: &str, account: u128, since_ns: Vec<u64>| PositionAsk {
        customer_id,
        asset: "BTC".into(),
        address: address.into(),
        account: AccountId(account),
        since_ns,
    };
    let asks = vec![
        ask(alice, "bcrt1qalice", 100, vec![NOW, NOW + HOUR]),
        ask(bob, "bcrt1qbob", 101, vec![NOW, NOW + HOUR]),
        ask(i64::MAX, "bcrt1qnobody", 100, vec![NOW, NOW + HOUR]),
        ask(alice, "bcrt1qelsewhere", 100, vec![NOW + HOUR, NOW, NOW + 2 * HOUR]),
        ask(alice, "bcrt1qalice", 100, Vec::new()),
        ask(alice, "bcrt1qalice", 100, vec![NOW]),
    ];
    let grouped = store.withdrawal_positions(&asks).await.unwrap();
    let mut single = Vec::new();
    for a in &asks {
        single.push(store.withdrawal_position(a).await.unwrap());
    }
    assert_eq!(grouped, single);

    let first = grouped[0].as_ref().unwrap();
    assert_eq!(first.whitelist.as_ref().map(|e| e.id), Some(entry.id));
    assert!(!first.whitelist_only);
    assert_eq!(first.available, Some(1_000_000 - 2_000));
    assert_eq!(first.usd_since, vec![12_000_000, 5_000_000]);
    let second = grouped[1].as_ref().unwrap();
    assert_eq!((second.whitelist.as_ref(), second.available, second.usd_since.clone()), (None, None, vec![0, 0]));
    assert_eq!(grouped[2], None);
    let fourth = grouped[3].as_ref().unwrap();
    assert_eq!((fourth.whitelist.as_ref(), fourth.usd_since.clone()), (None, vec![5_000_000, 12_000_000, 0]));
    assert!(grouped[4].as_ref().unwrap().usd_since.is_empty());
    assert_eq!(grouped[5].as_ref().unwrap().usd_since, vec![12_000_000]);
    assert_eq!(store.withdrawal_positions(&[]).await.unwrap(), Vec::new());
});
