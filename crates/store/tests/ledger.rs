//! The ledger in storage, on SQLite and (when `RAMPART_TEST_POSTGRES_URL` is set) on PostgreSQL: the same tests,
//! the same guarantees.

use std::sync::Arc;

use rampart_core::{AccountId, Amount, AssetCode, TransferId};
use rampart_ledger::{
    AccountFlags, CreateAccountResult as AR, CreateTransferResult as TR, Ledger, NewAccount, NewTransfer,
    PendingStatus, TransferFlags,
};
use rampart_store::{BATCH_LEN_MAX, ConnectOptions, Store, StoreError, testing};

const SEC: u64 = 1_000_000_000;
const NOW: u64 = 1_700_000_000 * SEC;

/// Runs `test` on a fresh SQLite file and, if configured, on a fresh PostgreSQL database.
macro_rules! on_both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let store = open(&testing::sqlite_url(dir.path())).await;
                ($body)(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(url) = testing::fresh_postgres_url(concat!(stringify!($name), "::postgres")).await else {
                    return;
                };
                ($body)(open(&url).await).await;
            }
        }
    };
}

async fn open(url: &str) -> Store {
    let store = Store::connect(url, &ConnectOptions::default()).await.unwrap();
    store.migrate().await.unwrap();
    // Migrating twice is a no-op.
    store.migrate().await.unwrap();
    store
}

fn btc() -> AssetCode {
    "BTC".parse().unwrap()
}

fn account(id: u128, overdraft_allowed: bool) -> NewAccount {
    NewAccount {
        id: AccountId(id),
        asset: btc(),
        code: 1,
        flags: AccountFlags { debits_must_not_exceed_credits: !overdraft_allowed, ..AccountFlags::default() },
        user_data: id,
    }
}

fn transfer(id: u128, debit: u128, credit: u128, amount: u128) -> NewTransfer {
    NewTransfer {
        id: TransferId(id),
        debit_account_id: AccountId(debit),
        credit_account_id: AccountId(credit),
        amount: Amount::new(amount),
        pending_id: None,
        asset: btc(),
        code: 7,
        flags: TransferFlags::default(),
        timeout_s: 0,
        user_data: 0,
    }
}

fn hold(id: u128, debit: u128, credit: u128, amount: u128, timeout_s: u32) -> NewTransfer {
    NewTransfer {
        flags: TransferFlags { pending: true, ..TransferFlags::default() },
        timeout_s,
        ..transfer(id, debit, credit, amount)
    }
}

fn resolve(id: u128, pending_id: u128, amount: u128, post: bool) -> NewTransfer {
    NewTransfer {
        pending_id: Some(TransferId(pending_id)),
        flags: TransferFlags { post_pending_transfer: post, void_pending_transfer: !post, ..TransferFlags::default() },
        ..transfer(id, 0, 0, amount)
    }
}

async fn assert_balanced(store: &Store) {
    let report = store.verify_ledger().await.unwrap();
    assert_eq!(report.violation, None, "ledger invariant broken: {report:?}");
}

on_both_backends!(u128_values_round_trip_exactly_at_the_extremes, |store: Store| async move {
    let big = u128::MAX - 1;
    let accounts = [account(big, true), account(1, true), account(2, true)];
    assert_eq!(store.create_accounts(&accounts, NOW).await.unwrap(), vec![AR::Ok; 3]);
    let amounts = [u128::MAX - 5, 1, 2, u128::from(u64::MAX), u128::from(u64::MAX) + 1];
    let mut batch: Vec<NewTransfer> = amounts.iter().zip(10u128..).map(|(a, id)| transfer(id, 1, 2, *a)).collect();
    batch.push(transfer(big, big, 2, 1));
    let results = store.create_transfers(&batch, NOW).await.unwrap();
    assert_eq!(
        results,
        vec![TR::Ok, TR::Ok, TR::Ok, TR::OverflowsDebitsPosted, TR::OverflowsDebitsPosted, TR::Ok],
        "u128::MAX - 5 + 1 + 2 fits; adding 2^64 more does not"
    );
    let a1 = store.account(AccountId(1)).await.unwrap().unwrap();
    assert_eq!(a1.debits_posted, Amount::new(u128::MAX - 2));
    let a2 = store.account(AccountId(2)).await.unwrap().unwrap();
    assert_eq!(a2.credits_posted, Amount::new(u128::MAX - 1));
    let stored = store.transfer(TransferId(10)).await.unwrap().unwrap();
    assert_eq!(stored.transfer.amount, Amount::new(u128::MAX - 5));
    assert_eq!(stored.transfer.timestamp, NOW);
    let biggest = store.account(AccountId(big)).await.unwrap().unwrap();
    assert_eq!(biggest.user_data, big);
    assert_eq!(store.transfer(TransferId(big)).await.unwrap().unwrap().transfer.debit_account_id, AccountId(big));
    assert!(store.account(AccountId(3)).await.unwrap().is_none());
    assert_balanced(&store).await;
});

on_both_backends!(a_random_history_matches_the_in_memory_ledger, |store: Store| async move {
    // The store hydrates a fresh ledger per command; the model keeps everything in memory. Same results, same state.
    let mut model = Ledger::new();
    let accounts: Vec<NewAccount> = (1..=5).map(|id| account(id, id == 1)).collect();
    assert_eq!(store.create_accounts(&accounts, NOW).await.unwrap(), model.create_accounts(&accounts, NOW));
    let mut rng = SplitMix(0x5eed);
    let mut now = NOW;
    for step in 0..120u128 {
        let batch: Vec<NewTransfer> = (0..1 + rng.below(6))
            .map(|_| {
                let id = 1 + u128::from(rng.below(80));
                let (debit, credit) = (1 + u128::from(rng.below(5)), 1 + u128::from(rng.below(5)));
                let amount = u128::from(rng.below(40));
                let mut t = match rng.below(6) {
                    0 | 1 => transfer(id, debit, credit, amount),
                    2 => hold(id, debit, credit, amount, rng.below(3) as u32),
                    3 | 4 => resolve(id, 1 + u128::from(rng.below(80)), amount, rng.below(2) == 0),
                    _ => transfer(id, 1, credit, 50 + amount),
                };
                t.flags.linked = rng.below(4) == 0;
                t
            })
            .collect();
        let expected = model.create_transfers(&batch, now);
        let got = store.create_transfers(&batch, now).await.unwrap();
        assert_eq!(got, expected, "step {step}: {batch:?}");
        if rng.below(4) == 0 {
            now += SEC;
            let mut expired = model.expire_pending(now);
            let mut stored = store.expire_pending(now, 1000).await.unwrap();
            expired.sort();
            stored.sort();
            assert_eq!(stored, expired, "step {step}: expiry");
        }
    }
    model.check_invariants().unwrap();
    for a in model.accounts() {
        assert_eq!(store.account(a.id).await.unwrap().as_ref(), Some(a));
    }
    for t in model.transfers() {
        let stored = store.transfer(t.id).await.unwrap().unwrap();
        assert_eq!(&stored.transfer, t);
        assert_eq!(stored.pending, model.pending_state(t.id));
    }
    assert_balanced(&store).await;
});

on_both_backends!(concurrent_holds_never_overdraw, |store: Store| async move {
    store.create_accounts(&[account(1, true), account(2, false), account(3, true)], NOW).await.unwrap();
    store.create_transfers(&[transfer(1, 1, 2, 100)], NOW).await.unwrap();
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..200u128)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.create_transfers(&[hold(1000 + i, 2, 3, 1, 0)], NOW).await.unwrap()[0] })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            TR::Ok => ok += 1,
            TR::ExceedsCredits => {}
            other => panic!("unexpected result {other}"),
        }
    }
    assert_eq!(ok, 100);
    let a = store.account(AccountId(2)).await.unwrap().unwrap();
    assert_eq!((a.debits_pending, a.available()), (Amount::new(100), Amount::ZERO));
    assert_balanced(&store).await;
});

on_both_backends!(concurrent_retries_of_one_id_apply_once, |store: Store| async move {
    store.create_accounts(&[account(1, true), account(2, true)], NOW).await.unwrap();
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.create_transfers(&[transfer(9, 1, 2, 5)], NOW).await.unwrap()[0] })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    assert_eq!(results.iter().filter(|r| **r == TR::Ok).count(), 1);
    assert_eq!(results.iter().filter(|r| **r == TR::Exists).count(), 49);
    assert_eq!(store.account(AccountId(2)).await.unwrap().unwrap().credits_posted, Amount::new(5));
});

on_both_backends!(concurrent_posts_of_one_hold_resolve_it_once, |store: Store| async move {
    store.create_accounts(&[account(1, true), account(2, true)], NOW).await.unwrap();
    store.create_transfers(&[hold(1, 1, 2, 10, 0)], NOW).await.unwrap();
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..40u128)
        .map(|i| {
            let store = Arc::clone(&store);
            let post = i % 2 == 0;
            tokio::spawn(async move { store.create_transfers(&[resolve(100 + i, 1, 0, post)], NOW).await.unwrap()[0] })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        if task.await.unwrap() == TR::Ok {
            ok += 1;
        }
    }
    assert_eq!(ok, 1);
    assert_balanced(&store).await;
});

on_both_backends!(holds_expire_and_release_their_amount, |store: Store| async move {
    store.create_accounts(&[account(1, true), account(2, false), account(3, true)], NOW).await.unwrap();
    let batch = [transfer(1, 1, 2, 11), hold(2, 2, 3, 10, 5), hold(3, 2, 3, 1, 0)];
    assert_eq!(store.create_transfers(&batch, NOW).await.unwrap(), vec![TR::Ok; 3]);
    assert!(store.expire_pending(NOW + 4 * SEC, 100).await.unwrap().is_empty());
    assert_eq!(store.expire_pending(NOW + 5 * SEC, 100).await.unwrap(), vec![TransferId(2)]);
    let stored = store.transfer(TransferId(2)).await.unwrap().unwrap();
    assert_eq!(stored.pending.unwrap().status, PendingStatus::Expired);
    assert_eq!(store.account(AccountId(2)).await.unwrap().unwrap().available(), Amount::new(10));
    let late = store.create_transfers(&[resolve(4, 2, 0, true)], NOW + 6 * SEC).await.unwrap();
    assert_eq!(late, vec![TR::PendingTransferExpired]);
    assert_balanced(&store).await;
});

on_both_backends!(account_history_is_newest_first, |store: Store| async move {
    store.create_accounts(&[account(1, true), account(2, true), account(3, true)], NOW).await.unwrap();
    store.create_transfers(&[transfer(1, 1, 2, 1), transfer(2, 2, 3, 1), transfer(3, 1, 3, 1)], NOW).await.unwrap();
    let ids: Vec<TransferId> = store.account_transfers(AccountId(2), 10).await.unwrap().iter().map(|t| t.id).collect();
    assert_eq!(ids, vec![TransferId(2), TransferId(1)]);
    assert_eq!(store.account_transfers(AccountId(1), 1).await.unwrap().len(), 1);
});

on_both_backends!(an_oversized_batch_is_refused_whole, |store: Store| async move {
    store.create_accounts(&[account(1, true), account(2, true)], NOW).await.unwrap();
    let batch: Vec<NewTransfer> = (1..=BATCH_LEN_MAX as u128 + 1).map(|id| transfer(id, 1, 2, 1)).collect();
    let err = store.create_transfers(&batch, NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::BatchTooLarge { .. }), "{err}");
    assert!(store.transfer(TransferId(1)).await.unwrap().is_none());
    // The largest batch allowed goes through in one transaction.
    let results = store.create_transfers(&batch[..BATCH_LEN_MAX], NOW).await.unwrap();
    assert!(results.iter().all(|r| *r == TR::Ok));
    assert_eq!(store.account(AccountId(2)).await.unwrap().unwrap().credits_posted, Amount::new(BATCH_LEN_MAX as u128));
});

/// A small deterministic generator for reproducible histories (not for anything secret).
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}
