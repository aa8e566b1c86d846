//! Scenario tests of the ledger state machine through its public API.

use rampart_core::{AccountId, Amount, AssetCode, TransferId};
use rampart_ledger::{
    AccountFlags, CreateAccountResult as AR, CreateTransferResult as TR, Ledger, NewAccount, NewTransfer,
    PendingStatus, TransferFlags,
};

const SEC: u64 = 1_000_000_000;

fn btc() -> AssetCode {
    "BTC".parse().unwrap()
}

fn account(id: u128, flags: AccountFlags) -> NewAccount {
    NewAccount { id: AccountId(id), asset: btc(), code: 1, flags, user_data: 0 }
}

fn transfer(id: u128, debit: u128, credit: u128, amount: u128) -> NewTransfer {
    NewTransfer {
        id: TransferId(id),
        debit_account_id: AccountId(debit),
        credit_account_id: AccountId(credit),
        amount: Amount::new(amount),
        pending_id: None,
        asset: btc(),
        code: 1,
        flags: TransferFlags::default(),
        timeout_s: 0,
        user_data: 0,
    }
}

fn pending(id: u128, debit: u128, credit: u128, amount: u128, timeout_s: u32) -> NewTransfer {
    NewTransfer {
        flags: TransferFlags { pending: true, ..TransferFlags::default() },
        timeout_s,
        ..transfer(id, debit, credit, amount)
    }
}

fn post(id: u128, pending_id: u128, amount: u128) -> NewTransfer {
    NewTransfer {
        pending_id: Some(TransferId(pending_id)),
        flags: TransferFlags { post_pending_transfer: true, ..TransferFlags::default() },
        ..transfer(id, 0, 0, amount)
    }
}

fn void(id: u128, pending_id: u128) -> NewTransfer {
    NewTransfer {
        pending_id: Some(TransferId(pending_id)),
        flags: TransferFlags { void_pending_transfer: true, ..TransferFlags::default() },
        ..transfer(id, 0, 0, 0)
    }
}

fn linked(mut t: NewTransfer) -> NewTransfer {
    t.flags.linked = true;
    t
}

const CUSTODY: u128 = 1;
const ALICE: u128 = 2;
const BOB: u128 = 3;

/// A custody account (no constraint) and two customers who cannot overdraw, Alice holding 100.
fn funded() -> Ledger {
    let customer = AccountFlags { debits_must_not_exceed_credits: true, ..AccountFlags::default() };
    let mut ledger = Ledger::new();
    let results = ledger.create_accounts(
        &[account(CUSTODY, AccountFlags::default()), account(ALICE, customer), account(BOB, customer)],
        SEC,
    );
    assert_eq!(results, vec![AR::Ok; 3]);
    assert_eq!(ledger.create_transfers(&[transfer(100, CUSTODY, ALICE, 100)], SEC), vec![TR::Ok]);
    ledger
}

fn available(ledger: &Ledger, id: u128) -> u128 {
    ledger.account(AccountId(id)).unwrap().available().units()
}

#[test]
fn an_overdraft_is_refused_and_changes_nothing() {
    let mut ledger = funded();
    assert_eq!(ledger.create_transfers(&[transfer(1, ALICE, BOB, 101)], 2 * SEC), vec![TR::ExceedsCredits]);
    assert_eq!(available(&ledger, ALICE), 100);
    assert!(ledger.transfer(TransferId(1)).is_none());
    assert_eq!(ledger.create_transfers(&[transfer(1, ALICE, BOB, 100)], 2 * SEC), vec![TR::Ok]);
    assert_eq!(available(&ledger, ALICE), 0);
    assert_eq!(available(&ledger, BOB), 100);
    ledger.check_invariants().unwrap();
}

#[test]
fn a_retry_answers_exists_and_a_changed_retry_answers_exists_with_different_fields() {
    let mut ledger = funded();
    assert_eq!(ledger.create_transfers(&[transfer(1, ALICE, BOB, 10)], 2 * SEC), vec![TR::Ok]);
    assert_eq!(ledger.create_transfers(&[transfer(1, ALICE, BOB, 10)], 3 * SEC), vec![TR::Exists]);
    assert_eq!(ledger.create_transfers(&[transfer(1, ALICE, BOB, 11)], 3 * SEC), vec![TR::ExistsWithDifferentFields]);
    assert_eq!(available(&ledger, ALICE), 90);
    ledger.check_invariants().unwrap();
}

#[test]
fn holds_are_posted_in_full_or_in_part_or_voided_and_resolve_once() {
    let mut ledger = funded();
    let now = 2 * SEC;
    assert_eq!(
        ledger.create_transfers(&[pending(1, ALICE, BOB, 30, 0), pending(2, ALICE, BOB, 30, 0)], now),
        [TR::Ok, TR::Ok]
    );
    assert_eq!(available(&ledger, ALICE), 40);
    // Partial post: 10 of 30 moves, 20 is released.
    assert_eq!(ledger.create_transfers(&[post(3, 1, 10)], now), vec![TR::Ok]);
    assert_eq!(available(&ledger, ALICE), 60);
    assert_eq!(ledger.pending_state(TransferId(1)).unwrap().status, PendingStatus::Posted);
    assert_eq!(ledger.create_transfers(&[post(4, 1, 0)], now), vec![TR::PendingTransferAlreadyPosted]);
    assert_eq!(ledger.create_transfers(&[void(4, 1)], now), vec![TR::PendingTransferAlreadyPosted]);
    // A void releases the whole hold.
    assert_eq!(ledger.create_transfers(&[void(5, 2)], now), vec![TR::Ok]);
    assert_eq!(available(&ledger, ALICE), 90);
    assert_eq!(ledger.create_transfers(&[post(6, 2, 0)], now), vec![TR::PendingTransferAlreadyVoided]);
    // A retried post answers exists, even with amount zero meaning "the whole hold" only when it was whole.
    assert_eq!(ledger.create_transfers(&[post(3, 1, 10)], now), vec![TR::Exists]);
    assert_eq!(ledger.create_transfers(&[post(3, 1, 0)], now), vec![TR::ExistsWithDifferentFields]);
    assert_eq!(ledger.create_transfers(&[void(5, 2)], now), vec![TR::Exists]);
    assert_eq!(ledger.account(AccountId(BOB)).unwrap().credits_posted, Amount::new(10));
    ledger.check_invariants().unwrap();
}

#[test]
fn a_post_cannot_exceed_the_hold_and_a_void_cannot_name_another_amount() {
    let mut ledger = funded();
    ledger.create_transfers(&[pending(1, ALICE, BOB, 30, 0)], 2 * SEC);
    assert_eq!(ledger.create_transfers(&[post(2, 1, 31)], 2 * SEC), vec![TR::ExceedsPendingTransferAmount]);
    let mut v = void(2, 1);
    v.amount = Amount::new(29);
    assert_eq!(ledger.create_transfers(&[v], 2 * SEC), vec![TR::PendingTransferHasDifferentAmount]);
    assert_eq!(ledger.create_transfers(&[post(2, 100, 0)], 2 * SEC), vec![TR::PendingTransferNotPending]);
    assert_eq!(ledger.create_transfers(&[post(2, 99, 0)], 2 * SEC), vec![TR::PendingTransferNotFound]);
    let mut wrong = post(2, 1, 0);
    wrong.debit_account_id = AccountId(BOB);
    assert_eq!(ledger.create_transfers(&[wrong], 2 * SEC), vec![TR::PendingTransferHasDifferentDebitAccountId]);
    ledger.check_invariants().unwrap();
}

#[test]
fn a_hold_expires_after_its_timeout_and_then_cannot_be_posted() {
    let mut ledger = funded();
    assert_eq!(ledger.create_transfers(&[pending(1, ALICE, BOB, 30, 60)], 2 * SEC), vec![TR::Ok]);
    assert_eq!(ledger.next_expiry_ns(), Some(62 * SEC));
    assert!(ledger.expire_pending(61 * SEC).is_empty());
    assert_eq!(available(&ledger, ALICE), 70);
    // Past the timeout a post is refused even before the expiry sweep has run.
    assert_eq!(ledger.create_transfers(&[post(2, 1, 0)], 62 * SEC), vec![TR::PendingTransferExpired]);
    assert_eq!(ledger.expire_pending(62 * SEC), vec![TransferId(1)]);
    assert_eq!(available(&ledger, ALICE), 100);
    assert_eq!(ledger.pending_state(TransferId(1)).unwrap().status, PendingStatus::Expired);
    assert_eq!(ledger.create_transfers(&[void(2, 1)], 63 * SEC), vec![TR::PendingTransferExpired]);
    assert!(ledger.expire_pending(u64::MAX).is_empty());
    ledger.check_invariants().unwrap();
}

#[test]
fn linked_transfers_succeed_or_fail_together() {
    let mut ledger = funded();
    let results = ledger.create_transfers(
        &[
            linked(transfer(1, ALICE, BOB, 50)),
            linked(pending(2, ALICE, BOB, 40, 0)),
            transfer(3, ALICE, BOB, 20), // would overdraw: the whole chain fails
            transfer(4, ALICE, BOB, 5),  // outside the chain: applies
        ],
        2 * SEC,
    );
    assert_eq!(results, vec![TR::LinkedEventFailed, TR::LinkedEventFailed, TR::ExceedsCredits, TR::Ok]);
    assert!(ledger.transfer(TransferId(1)).is_none());
    assert!(ledger.pending_state(TransferId(2)).is_none());
    assert_eq!(available(&ledger, ALICE), 95);

    let results = ledger.create_transfers(&[linked(transfer(5, ALICE, BOB, 50)), transfer(6, BOB, ALICE, 1)], 2 * SEC);
    assert_eq!(results, vec![TR::Ok, TR::Ok]);

    let results = ledger.create_transfers(&[transfer(7, ALICE, BOB, 1), linked(transfer(8, ALICE, BOB, 1))], 2 * SEC);
    assert_eq!(results, vec![TR::Ok, TR::LinkedEventChainOpen]);
    assert!(ledger.transfer(TransferId(8)).is_none());
    ledger.check_invariants().unwrap();
}

#[test]
fn a_failed_chain_rolls_back_a_post_and_its_pending_state() {
    let mut ledger = funded();
    ledger.create_transfers(&[pending(1, ALICE, BOB, 30, 0)], 2 * SEC);
    let results = ledger.create_transfers(&[linked(post(2, 1, 0)), transfer(3, BOB, ALICE, 1_000)], 2 * SEC);
    assert_eq!(results, vec![TR::LinkedEventFailed, TR::ExceedsCredits]);
    assert_eq!(ledger.pending_state(TransferId(1)).unwrap().status, PendingStatus::Pending);
    assert_eq!(ledger.create_transfers(&[post(2, 1, 0)], 2 * SEC), vec![TR::Ok]);
    ledger.check_invariants().unwrap();
}

#[test]
fn malformed_transfers_get_result_codes() {
    let mut ledger = funded();
    let eth: AssetCode = "ETH".parse().unwrap();
    ledger.create_accounts(&[NewAccount { asset: eth, ..account(9, AccountFlags::default()) }], SEC);
    let cases = [
        (transfer(0, ALICE, BOB, 1), TR::IdMustNotBeZero),
        (transfer(u128::MAX, ALICE, BOB, 1), TR::IdMustNotBeIntMax),
        (transfer(1, 0, BOB, 1), TR::DebitAccountIdMustNotBeZero),
        (transfer(1, ALICE, 0, 1), TR::CreditAccountIdMustNotBeZero),
        (transfer(1, ALICE, ALICE, 1), TR::AccountsMustBeDifferent),
        (transfer(1, ALICE, BOB, 0), TR::AmountMustNotBeZero),
        (transfer(1, 77, BOB, 1), TR::DebitAccountNotFound),
        (transfer(1, ALICE, 77, 1), TR::CreditAccountNotFound),
        (transfer(1, ALICE, 9, 1), TR::AccountsMustHaveTheSameAsset),
        (NewTransfer { asset: eth, ..transfer(1, ALICE, BOB, 1) }, TR::TransferMustHaveTheSameAssetAsAccounts),
        (NewTransfer { timeout_s: 5, ..transfer(1, ALICE, BOB, 1) }, TR::TimeoutReservedForPendingTransfer),
        (NewTransfer { pending_id: Some(TransferId(5)), ..transfer(1, ALICE, BOB, 1) }, TR::PendingIdMustBeZero),
        (NewTransfer { pending_id: None, ..post(1, 5, 0) }, TR::PendingIdMustNotBeZero),
        (post(1, 1, 0), TR::PendingIdMustBeDifferent),
        (
            NewTransfer {
                flags: TransferFlags { pending: true, void_pending_transfer: true, ..Default::default() },
                ..post(1, 5, 0)
            },
            TR::FlagsAreMutuallyExclusive,
        ),
        (transfer(1, BOB, ALICE, 1), TR::ExceedsCredits),
        (transfer(1, CUSTODY, ALICE, u128::MAX), TR::OverflowsDebitsPosted),
        (pending(1, ALICE, BOB, 1, u32::MAX), TR::Ok),
    ];
    for (t, expected) in cases {
        assert_eq!(ledger.create_transfers(&[t], 2 * SEC), vec![expected], "{t:?}");
    }
    let stuck = ledger.create_transfers(&[pending(2, ALICE, BOB, 1, 1)], u64::MAX - 1);
    assert_eq!(stuck, vec![TR::OverflowsTimeout]);
    let credit_bound = AccountFlags { credits_must_not_exceed_debits: true, ..AccountFlags::default() };
    ledger.create_accounts(&[account(10, credit_bound)], SEC);
    assert_eq!(ledger.create_transfers(&[transfer(3, CUSTODY, 10, 1)], 2 * SEC), vec![TR::ExceedsDebits]);
    ledger.check_invariants().unwrap();
}

#[test]
fn accounts_are_idempotent_and_validated() {
    let mut ledger = Ledger::new();
    let a = account(1, AccountFlags::default());
    assert_eq!(ledger.create_accounts(&[a], SEC), vec![AR::Ok]);
    assert_eq!(ledger.create_accounts(&[a], SEC), vec![AR::Exists]);
    assert_eq!(ledger.create_accounts(&[NewAccount { code: 2, ..a }], SEC), vec![AR::ExistsWithDifferentFields]);
    assert_eq!(ledger.create_accounts(&[account(0, AccountFlags::default())], SEC), vec![AR::IdMustNotBeZero]);
    assert_eq!(
        ledger.create_accounts(&[account(u128::MAX, AccountFlags::default())], SEC),
        vec![AR::IdMustNotBeIntMax]
    );
    let both = AccountFlags { debits_must_not_exceed_credits: true, credits_must_not_exceed_debits: true };
    assert_eq!(ledger.create_accounts(&[account(2, both)], SEC), vec![AR::FlagsAreMutuallyExclusive]);
}

#[test]
fn the_journal_lists_exactly_what_changed_and_forgets_rolled_back_links() {
    let mut ledger = Ledger::with_journal();
    ledger.create_accounts(&[account(1, AccountFlags::default()), account(2, AccountFlags::default())], SEC);
    let journal = ledger.take_journal();
    assert_eq!(journal.accounts_created, vec![AccountId(1), AccountId(2)]);
    let results =
        ledger.create_transfers(&[pending(10, 1, 2, 5, 0), linked(transfer(11, 1, 2, 1)), transfer(12, 1, 1, 1)], SEC);
    assert_eq!(results, vec![TR::Ok, TR::LinkedEventFailed, TR::AccountsMustBeDifferent]);
    let journal = ledger.take_journal();
    assert_eq!(journal.transfers_created, vec![TransferId(10)]);
    assert_eq!(journal.pending_changed, vec![TransferId(10)]);
    assert_eq!(journal.accounts_updated, vec![AccountId(1), AccountId(2)]);
    assert!(ledger.take_journal().is_empty());
}

#[test]
fn dependencies_name_every_record_a_batch_reads() {
    let deps = Ledger::transfer_dependencies(&[transfer(1, 5, 6, 1), post(2, 1, 0), transfer(1, 6, 5, 1)]);
    assert_eq!(deps.transfer_ids, vec![TransferId(1), TransferId(2)]);
    assert_eq!(deps.pending_ids, vec![TransferId(1)]);
    assert_eq!(deps.account_ids, vec![AccountId(5), AccountId(6)]);
}
