//! Property tests: random sequences of transfers keep every ledger invariant, and a ledger hydrated with only the
//! records a batch reads (as the store does) decides exactly as the complete in-memory ledger does.

use std::collections::HashMap;

use proptest::prelude::*;
use rampart_core::{AccountId, Amount, AssetCode, TransferId};
use rampart_ledger::{
    Account, AccountFlags, CreateTransferResult as TR, Ledger, NewAccount, NewTransfer, PendingState, PendingStatus,
    Transfer, TransferFlags,
};

const SEC: u64 = 1_000_000_000;
const ACCOUNTS: u128 = 6;

fn asset() -> AssetCode {
    "BTC".parse().unwrap()
}

/// Account 1 is unconstrained (custody), 2..=4 cannot overdraw, 5 cannot be credited beyond its debits, 6 holds ETH.
fn accounts() -> Vec<NewAccount> {
    (1..=ACCOUNTS)
        .map(|id| NewAccount {
            id: AccountId(id),
            asset: if id == 6 { "ETH".parse().unwrap() } else { asset() },
            code: 1,
            flags: AccountFlags {
                debits_must_not_exceed_credits: (2..=4).contains(&id),
                credits_must_not_exceed_debits: id == 5,
            },
            user_data: 0,
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Op {
    Batch(Vec<NewTransfer>),
    Advance(u64),
    Expire,
}

fn new_transfer() -> impl Strategy<Value = NewTransfer> {
    (
        1u128..40,
        0u128..=ACCOUNTS,
        0u128..=ACCOUNTS,
        prop_oneof![Just(0u128), 1u128..50, Just(u128::MAX - 3)],
        0u8..6,
        1u128..40,
        prop_oneof![Just(0u32), 1u32..5],
        any::<bool>(),
    )
        .prop_map(|(id, debit, credit, amount, kind, pending_id, timeout_s, linked)| {
            let mut flags = TransferFlags { linked, ..TransferFlags::default() };
            let (mut pending_ref, mut timeout) = (None, 0);
            match kind {
                0 | 1 => {}
                2 => {
                    flags.pending = true;
                    timeout = timeout_s;
                }
                3 => {
                    flags.post_pending_transfer = true;
                    pending_ref = Some(TransferId(pending_id));
                }
                4 => {
                    flags.void_pending_transfer = true;
                    pending_ref = Some(TransferId(pending_id));
                }
                _ => {
                    // Deliberately malformed: flags that exclude each other.
                    flags.pending = true;
                    flags.void_pending_transfer = true;
                }
            }
            let resolves = flags.resolves_pending();
            NewTransfer {
                id: TransferId(id),
                debit_account_id: AccountId(if resolves { 0 } else { debit }),
                credit_account_id: AccountId(if resolves { 0 } else { credit }),
                amount: Amount::new(amount),
                pending_id: pending_ref,
                asset: asset(),
                code: if resolves { 0 } else { 1 },
                flags,
                timeout_s: timeout,
                user_data: 0,
            }
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(new_transfer(), 1..6).prop_map(Op::Batch),
        1 => (1u64..4).prop_map(|s| Op::Advance(s * SEC)),
        1 => Just(Op::Expire),
    ]
}

/// A stand-in for the database: complete records, hydrated into a fresh journaling ledger per command, the way
/// `rampart-store` does inside a transaction.
#[derive(Default)]
struct Records {
    accounts: HashMap<AccountId, Account>,
    transfers: HashMap<TransferId, Transfer>,
    pending: HashMap<TransferId, PendingState>,
}

impl Records {
    fn hydrate(&self, transfer_ids: &[TransferId], pending_ids: &[TransferId], account_ids: &[AccountId]) -> Ledger {
        let mut ledger = Ledger::with_journal();
        let mut account_ids = account_ids.to_vec();
        for id in transfer_ids {
            if let Some(t) = self.transfers.get(id) {
                ledger.load_transfer(*t);
            }
        }
        for id in pending_ids {
            if let Some(state) = self.pending.get(id) {
                ledger.load_pending(*id, *state);
                let t = self.transfers[id];
                account_ids.extend([t.debit_account_id, t.credit_account_id]);
            }
        }
        for id in account_ids {
            if let Some(a) = self.accounts.get(&id) {
                ledger.load_account(*a);
            }
        }
        ledger
    }

    fn write_back(&mut self, ledger: &mut Ledger) {
        let journal = ledger.take_journal();
        for id in journal.accounts_created.iter().chain(&journal.accounts_updated) {
            self.accounts.insert(*id, *ledger.account(*id).unwrap());
        }
        for id in journal.transfers_created {
            assert!(self.transfers.insert(id, *ledger.transfer(id).unwrap()).is_none());
        }
        for id in journal.pending_changed {
            self.pending.insert(id, ledger.pending_state(id).unwrap());
        }
    }

    fn create_transfers(&mut self, batch: &[NewTransfer], now: u64) -> Vec<TR> {
        let deps = Ledger::transfer_dependencies(batch);
        let mut ledger = self.hydrate(&deps.transfer_ids, &deps.pending_ids, &deps.account_ids);
        let results = ledger.create_transfers(batch, now);
        self.write_back(&mut ledger);
        results
    }

    fn expire(&mut self, now: u64) -> Vec<TransferId> {
        let mut due: Vec<TransferId> = self
            .pending
            .iter()
            .filter(|(_, s)| s.status == PendingStatus::Pending && s.expires_at_ns.is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        due.sort();
        let mut ledger = self.hydrate(&due, &due, &[]);
        let mut expired = ledger.expire_pending(now);
        self.write_back(&mut ledger);
        expired.sort();
        expired
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_keep_every_invariant(ops in prop::collection::vec(op(), 1..40)) {
        let mut model = Ledger::new();
        let mut records = Records::default();
        let mut now = SEC;
        let setup = accounts();
        model.create_accounts(&setup, now);
        let mut setup_ledger = Ledger::with_journal();
        setup_ledger.create_accounts(&setup, now);
        records.write_back(&mut setup_ledger);
        // Fund the customers so that transfers between them can succeed.
        let funding: Vec<NewTransfer> = (2..=4u128).map(|id| NewTransfer {
            id: TransferId(1000 + id), debit_account_id: AccountId(1), credit_account_id: AccountId(id),
            amount: Amount::new(60), pending_id: None, asset: asset(), code: 1,
            flags: TransferFlags::default(), timeout_s: 0, user_data: 0,
        }).collect();
        prop_assert!(model.create_transfers(&funding, now).iter().all(|r| *r == TR::Ok));
        records.create_transfers(&funding, now);

        let mut resolved: HashMap<TransferId, PendingStatus> = HashMap::new();
        for op in ops {
            match op {
                Op::Advance(d) => now += d,
                Op::Expire => {
                    let mut expired = model.expire_pending(now);
                    expired.sort();
                    prop_assert_eq!(&expired, &records.expire(now));
                }
                Op::Batch(batch) => {
                    let results = model.create_transfers(&batch, now);
                    prop_assert_eq!(&results, &records.create_transfers(&batch, now));
                    // A retry of anything applied alone answers exists and changes nothing.
                    for (t, r) in batch.iter().zip(&results) {
                        if *r == TR::Ok && !t.flags.linked {
                            let before = model.account(AccountId(2)).copied();
                            prop_assert_eq!(model.create_transfers(&[*t], now), vec![TR::Exists]);
                            prop_assert_eq!(before, model.account(AccountId(2)).copied());
                        }
                    }
                }
            }
            if let Err(violation) = model.check_invariants() {
                return Err(TestCaseError::fail(format!("invariant broken: {violation:?}")));
            }
            // A pending transfer leaves the pending state at most once.
            for t in model.transfers().filter(|t| t.flags.pending) {
                let status = model.pending_state(t.id).unwrap().status;
                if let Some(previous) = resolved.get(&t.id) {
                    prop_assert_eq!(*previous, status, "pending transfer {} resolved twice", t.id);
                } else if status != PendingStatus::Pending {
                    resolved.insert(t.id, status);
                }
            }
        }
        // The hydrated records agree with the model record for record.
        for a in model.accounts() {
            prop_assert_eq!(Some(a), records.accounts.get(&a.id));
        }
        prop_assert_eq!(model.transfers().count(), records.transfers.len());
        for t in model.transfers() {
            prop_assert_eq!(Some(t), records.transfers.get(&t.id));
            if t.flags.pending {
                prop_assert_eq!(model.pending_state(t.id), records.pending.get(&t.id).copied());
            }
        }
    }
}
