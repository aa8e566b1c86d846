//! `rampart demo`: the story of what works, narrated, on a fresh in-memory database.
//!
//! It grows with every capability. Today it tells the ledger's story (deposits, a withdrawal hold that is posted in
//! part, a hold that is voided, a hold that expires, an overdraft that is refused, a retried request that changes
//! nothing, a linked pair that fails together, the invariants checked), then the platform's: the seal opened by three
//! custodians' shares, a four-eyes role change, and the audit log verified.

use anyhow::{Context, ensure};
use rampart_core::{AccountId, Amount, AssetCode, AssetRegistry, Clock, ManualClock, TransferId};
use rampart_ledger::{AccountFlags, CreateTransferResult as TR, NewAccount, NewTransfer, TransferFlags};
use rampart_store::{ConnectOptions, Store};

const SEC: u64 = 1_000_000_000;

const CUSTODY: AccountId = AccountId(1);
const FEES: AccountId = AccountId(2);
const ALICE: AccountId = AccountId(10);
const BOB: AccountId = AccountId(11);

struct Demo {
    store: Store,
    clock: ManualClock,
    assets: AssetRegistry,
    btc: AssetCode,
    next_id: u128,
}

impl Demo {
    fn btc(&self, amount: Amount) -> String {
        format!("{} BTC", self.assets.get(self.btc).expect("BTC is configured").format_amount(amount))
    }

    fn amount(&self, s: &str) -> anyhow::Result<Amount> {
        Ok(self.assets.get(self.btc).expect("BTC is configured").parse_amount(s)?)
    }

    fn transfer(&mut self, debit: AccountId, credit: AccountId, amount: &str) -> anyhow::Result<NewTransfer> {
        self.next_id += 1;
        Ok(NewTransfer {
            id: TransferId(self.next_id),
            debit_account_id: debit,
            credit_account_id: credit,
            amount: self.amount(amount)?,
            pending_id: None,
            asset: self.btc,
            code: 1,
            flags: TransferFlags::default(),
            timeout_s: 0,
            user_data: 0,
        })
    }

    fn resolve(&mut self, pending: TransferId, amount: &str, post: bool) -> anyhow::Result<NewTransfer> {
        let mut t = self.transfer(AccountId(0), AccountId(0), amount)?;
        t.pending_id = Some(pending);
        t.flags =
            TransferFlags { post_pending_transfer: post, void_pending_transfer: !post, ..TransferFlags::default() };
        Ok(t)
    }

    async fn apply(&self, batch: &[NewTransfer]) -> anyhow::Result<Vec<TR>> {
        Ok(self.store.create_transfers(batch, self.clock.now_ns()).await?)
    }

    async fn expect(&self, t: NewTransfer, expected: TR) -> anyhow::Result<()> {
        let got = self.apply(&[t]).await?[0];
        ensure!(got == expected, "transfer {} answered {got}, expected {expected}", t.id);
        Ok(())
    }

    async fn balances(&self) -> anyhow::Result<()> {
        for (name, id) in [("Alice", ALICE), ("Bob", BOB)] {
            let a = self.store.account(id).await?.context("account exists")?;
            println!(
                "     {name:<6} available {:>14}   (posted credits {}, posted debits {}, held {})",
                self.btc(a.available()),
                self.btc(a.credits_posted),
                self.btc(a.debits_posted),
                self.btc(a.debits_pending)
            );
        }
        Ok(())
    }
}

fn chapter(title: &str) {
    println!("\n== {title}");
}

/// Runs the demo.
pub async fn run() -> anyhow::Result<()> {
    println!("Rampart demo, on a fresh in-memory SQLite database, with a clock the demo moves by hand.");
    let store = Store::connect("sqlite::memory:", &ConnectOptions::default()).await?;
    store.migrate().await?;
    let assets = AssetRegistry::defaults();
    let btc: AssetCode = "BTC".parse()?;
    let mut demo = Demo { store, clock: ManualClock::new(1_800_000_000 * SEC), assets, btc, next_id: 100 };

    chapter("1. Accounts");
    let customer = AccountFlags { debits_must_not_exceed_credits: true, ..AccountFlags::default() };
    let accounts = [
        NewAccount { id: CUSTODY, asset: btc, code: 1, flags: AccountFlags::default(), user_data: 0 },
        NewAccount { id: FEES, asset: btc, code: 2, flags: AccountFlags::default(), user_data: 0 },
        NewAccount { id: ALICE, asset: btc, code: 10, flags: customer, user_data: 1 },
        NewAccount { id: BOB, asset: btc, code: 10, flags: customer, user_data: 2 },
    ];
    let results = demo.store.create_accounts(&accounts, demo.clock.now_ns()).await?;
    ensure!(results.iter().all(|r| *r == rampart_ledger::CreateAccountResult::Ok), "accounts: {results:?}");
    println!("   custody (1) and fees (2) for the exchange; Alice (10) and Bob (11), who can never overdraw.");

    chapter("2. Deposits: the chain watcher credits customers from custody");
    let deposits = [demo.transfer(CUSTODY, ALICE, "1.5")?, demo.transfer(CUSTODY, BOB, "0.25")?];
    ensure!(demo.apply(&deposits).await? == [TR::Ok, TR::Ok], "deposits applied");
    println!("   Alice deposits 1.5 BTC, Bob 0.25 BTC, in one atomic batch.");
    demo.balances().await?;

    chapter("3. A withdrawal holds funds first, then posts what was actually sent");
    let mut hold = demo.transfer(ALICE, CUSTODY, "0.4")?;
    hold.flags.pending = true;
    demo.expect(hold, TR::Ok).await?;
    println!("   Alice asks to withdraw 0.4 BTC: a pending transfer holds it while risk and approvals run.");
    demo.balances().await?;
    let post = demo.resolve(hold.id, "0.3999", true)?;
    demo.expect(post, TR::Ok).await?;
    println!("   The withdrawal is sent for 0.3999 BTC: posting part of the hold releases the rest.");
    demo.balances().await?;
    let t = demo.resolve(hold.id, "0", false)?;
    demo.expect(t, TR::PendingTransferAlreadyPosted).await?;
    println!("   Voiding it now is refused (pending_transfer_already_posted): a hold resolves exactly once.");

    chapter("4. A cancelled withdrawal voids its hold");
    let mut hold = demo.transfer(BOB, CUSTODY, "0.2")?;
    hold.flags.pending = true;
    demo.expect(hold, TR::Ok).await?;
    let t = demo.resolve(hold.id, "0", false)?;
    demo.expect(t, TR::Ok).await?;
    println!("   Bob holds 0.2 BTC, then cancels: the void returns all of it.");
    demo.balances().await?;

    chapter("5. An abandoned hold expires on its own");
    let mut hold = demo.transfer(BOB, CUSTODY, "0.1")?;
    hold.flags.pending = true;
    hold.timeout_s = 60;
    demo.expect(hold, TR::Ok).await?;
    println!("   Bob holds 0.1 BTC with a 60-second timeout.");
    demo.balances().await?;
    demo.clock.advance_ns(61 * SEC);
    let expired = demo.store.expire_pending(demo.clock.now_ns(), 100).await?;
    ensure!(expired == [hold.id], "the hold expired: {expired:?}");
    println!("   61 seconds later the expiry sweep releases it.");
    demo.balances().await?;
    let t = demo.resolve(hold.id, "0", true)?;
    demo.expect(t, TR::PendingTransferExpired).await?;
    println!("   Posting it now is refused: pending_transfer_expired.");

    chapter("6. An overdraft is refused, and changes nothing");
    let overdraft = demo.transfer(BOB, ALICE, "0.25000001")?;
    demo.expect(overdraft, TR::ExceedsCredits).await?;
    println!("   Bob tries to send 0.25000001 BTC with 0.25 available: exceeds_credits.");
    demo.balances().await?;

    chapter("7. Retries are safe: the transfer id is the idempotency key");
    let payment = demo.transfer(ALICE, BOB, "0.1")?;
    demo.expect(payment, TR::Ok).await?;
    demo.expect(payment, TR::Exists).await?;
    let mut changed = payment;
    changed.amount = demo.amount("0.2")?;
    demo.expect(changed, TR::ExistsWithDifferentFields).await?;
    println!("   Alice pays Bob 0.1 BTC; the retry answers exists, a retry with another amount answers");
    println!("   exists_with_different_fields; the money moved once.");
    demo.balances().await?;

    chapter("8. Linked transfers succeed or fail together");
    let mut trade = demo.transfer(ALICE, BOB, "0.05")?;
    trade.flags.linked = true;
    let fee = demo.transfer(BOB, FEES, "10")?;
    let results = demo.apply(&[trade, fee]).await?;
    ensure!(results == [TR::LinkedEventFailed, TR::ExceedsCredits], "chain failed: {results:?}");
    println!(
        "   A payment linked to a fee the payer cannot afford: [{}, {}]; neither applied.",
        results[0], results[1]
    );
    demo.balances().await?;

    chapter("9. The books balance");
    let report = demo.store.verify_ledger().await?;
    for (asset, totals) in &report.totals {
        ensure!(totals.debits_posted.high == 0 && totals.debits_pending.high == 0, "demo totals fit in 128 bits");
        println!(
            "   {asset}: Σ posted debits {} = Σ posted credits {}; Σ held {} = {}",
            demo.btc(Amount::new(totals.debits_posted.low)),
            demo.btc(Amount::new(totals.credits_posted.low)),
            demo.btc(Amount::new(totals.debits_pending.low)),
            demo.btc(Amount::new(totals.credits_pending.low)),
        );
    }
    ensure!(report.violation.is_none(), "LEDGER INVARIANT BROKEN: {:?}", report.violation);
    println!("   Every invariant holds: Σ debits = Σ credits, no account beyond its flags, every hold accounted for.");
    let keyring = std::sync::Arc::new(platform(&demo.store).await?);
    crate::demo_identity::run(demo.store.clone(), keyring.clone()).await?;
    crate::demo_custody::run(demo.store.clone(), keyring.clone()).await?;
    crate::demo_risk::run(demo.store.clone(), keyring.clone()).await?;
    crate::demo_reserves::run(demo.store.clone(), keyring.clone()).await?;
    closing(&demo.store, &keyring).await?;
    println!(
        "\nThe end: every capability above ran against the real service, on the development chain, with the ledger's \
         invariants and the audit log checked along the way and once more at the close."
    );
    Ok(())
}

/// The whole day's state checked once more: the ledger's invariants, the cold share, the audit log.
async fn closing(store: &Store, keyring: &rampart_crypto::Keyring) -> anyhow::Result<()> {
    chapter("44. At the close: the books balance, the coins are cold, the audit log is whole");
    let report = store.verify_ledger().await?;
    ensure!(report.violation.is_none(), "LEDGER INVARIANT BROKEN: {:?}", report.violation);
    println!(
        "   The ledger: {} accounts in {} assets, {} holds still pending; every \
         invariant holds.",
        report.accounts,
        report.totals.len(),
        report.pending
    );
    let b = store.custody_balances("BTC").await?;
    let share = rampart_custody::policy::cold_share_bps(&rampart_custody::policy::Balances {
        cold: b.cold.0,
        hot: b.hot.0,
        deposit: b.deposit.0,
        in_flight_to_cold: b.in_flight_to_cold,
        in_flight_to_hot: b.in_flight_to_hot,
    });
    ensure!(share >= 9_500, "the cold share is {share} basis points, below the floor of 9,500");
    println!(
        "   Custody: cold {} sat, hot {} sat, deposits {} sat: the cold share is {}.{:02} % (floor 95 %).",
        b.cold.0,
        b.hot.0,
        b.deposit.0,
        share / 100,
        share % 100
    );
    let audit = store.verify_audit(&keyring.verifying_key()).await?;
    ensure!(audit.finding.is_none(), "the audit log does not verify: {:?}", audit.finding);
    println!(
        "   `rampart audit verify`: {} entries, each committing to the one before, under a signed head: intact.",
        audit.entries
    );
    Ok(())
}

/// The seal, staff and the audit log; answers the unsealed keyring.
async fn platform(store: &Store) -> anyhow::Result<rampart_crypto::Keyring> {
    use rampart_audit::{AuditRecord, Outcome, Role};
    use rampart_crypto::{Keyring, UnsealProgress, Unsealer};
    use rampart_store::{AuditedBy, Auditor, RoleDecision};

    chapter("10. Initialisation: a root key nobody holds");
    let admins = ["alice".to_owned(), "bob".to_owned()];
    let init = crate::init::initialise(store, 5, 3, &admins, None).await?;
    println!("   `rampart init` made a root key, split it into 5 unseal shares (any 3 unseal), and forgot it.");
    println!("   Administrators alice and bob were created, each with a one-time enrolment code.");

    chapter("11. Unsealing: three custodians, three shares");
    let seal = store.seal_config().await?.context("initialised")?;
    let mut unsealer = Unsealer::new(seal.clone());
    let mut keyring = None;
    for (i, share) in [&init.shares[0], &init.shares[0], &init.shares[2], &init.shares[4]].into_iter().enumerate() {
        match unsealer.submit(share.clone()) {
            Ok(UnsealProgress::Progress { received, threshold }) => {
                println!("   custodian {} submits share {}: {received} of {threshold}", i + 1, share.index());
            }
            Ok(UnsealProgress::Unsealed(root)) => {
                println!("   custodian {} submits share {}: unsealed", i + 1, share.index());
                keyring = Some(Keyring::open(root, seal.init_id, &store.crypto_keys().await?)?);
            }
            Err(e) => println!("   custodian {} submits share {} again: refused ({e})", i + 1, share.index()),
        }
    }
    let keyring = keyring.context("three distinct shares unseal")?;
    let secret = keyring.encrypt(b"JBSWY3DPEHPK3PXP", b"staff:1:totp_secret");
    ensure!(keyring.decrypt(&secret, b"staff:2:totp_secret").is_err(), "a ciphertext moved to another row must fail");
    println!("   A TOTP secret encrypted for staff 1 does not decrypt as staff 2's: the row is bound in.");

    chapter("12. Four eyes: nobody approves their own role change");
    let clock = ManualClock::new(1_800_000_100 * SEC);
    let auditor = Auditor { signer: &keyring, checkpoint_every: crate::init::CHECKPOINT_EVERY };
    let record = |actor: &str, action: &str, target: &str, outcome| AuditRecord {
        time_ns: clock.now_ns(),
        actor: actor.into(),
        action: action.into(),
        target: target.into(),
        outcome,
        details: Default::default(),
    };
    let carol = store
        .create_staff(
            "carol",
            &[],
            &[7; 32],
            clock.now_ns() + 3600 * SEC,
            clock.now_ns(),
            &auditor,
            vec![record("staff:1", "staff.create", "staff:carol", Outcome::Success)],
        )
        .await?
        .context("carol is new")?;
    let request = store
        .request_role_change(
            carol,
            Role::Auditor,
            true,
            "staff:1",
            clock.now_ns(),
            &auditor,
            vec![record("staff:1", "staff.role.request", &format!("staff:{carol}"), Outcome::Success)],
        )
        .await?;
    println!("   alice (staff:1) asks for carol to become an auditor.");
    let own = store.decide_role_request(request, true, "staff:1", clock.now_ns(), &auditor, vec![]).await?;
    ensure!(own == RoleDecision::OwnRequest, "self-approval refused");
    store
        .append_audit(vec![record("staff:1", "staff.role.approve", "role_request", Outcome::Denied)], &auditor)
        .await?;
    println!("   alice tries to approve it herself: refused, and the refusal is in the audit log.");
    let decided = store
        .decide_role_request(
            request,
            true,
            "staff:2",
            clock.now_ns(),
            &auditor,
            vec![record("staff:2", "staff.role.approve", "role_request", Outcome::Success)],
        )
        .await?;
    ensure!(matches!(decided, RoleDecision::Decided(_)), "bob approves");
    let roles = store.staff_by_id(carol).await?.context("carol exists")?.roles;
    println!(
        "   bob (staff:2) approves: carol's roles are now {:?}.",
        roles.iter().map(|r| r.as_str()).collect::<Vec<_>>()
    );

    chapter("13. The audit log: every privileged act, chained and signed");
    let by = AuditedBy::new(auditor, "system");
    let btc: AssetCode = "BTC".parse()?;
    let payment = NewTransfer {
        id: TransferId(900),
        debit_account_id: ALICE,
        credit_account_id: BOB,
        amount: Amount::new(1_000),
        pending_id: None,
        asset: btc,
        code: 1,
        flags: TransferFlags::default(),
        timeout_s: 0,
        user_data: 0,
    };
    ensure!(store.create_transfers_audited(&[payment], clock.now_ns(), &by).await? == [TR::Ok], "audited payment");
    println!("   A system transfer is recorded in the audit log in the same database transaction as the transfer.");
    let report = store.verify_audit(&keyring.verifying_key()).await?;
    ensure!(report.finding.is_none(), "the audit log is intact: {:?}", report.finding);
    let entries = store.audit_entries(&rampart_store::AuditFilter::default(), 100).await?;
    for e in &entries {
        println!(
            "     #{:<2} {:<9} {:<24} {:<16} {}",
            e.seq,
            e.record.actor,
            e.record.action,
            e.record.target,
            e.record.outcome.as_str()
        );
    }
    println!(
        "   `rampart audit verify`: {} entries, each committing to the one before, and a signed head: intact.",
        report.entries
    );
    println!(
        "   Editing, deleting, inserting or reordering an entry, or cutting the tail, is pinpointed (see the tests)."
    );
    Ok(keyring)
}
