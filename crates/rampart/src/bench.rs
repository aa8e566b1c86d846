//! `rampart bench`: measures performance and prints figures, ending with one JSON line for scripts to read.
//!
//! `rampart bench ledger` measures three things, each over the same kind of workload (random transfers between many
//! customer accounts, with some holds that are later posted or voided):
//!
//! 1. the pure state machine, held entirely in memory, with only `Ledger::create_transfers` timed;
//! 2. single-transfer commands through the store, one transaction each, with each one's latency recorded;
//! 3. batched commands through the store, optionally from several concurrent writers.
//!
//! Workloads are generated before the clock starts, so the figures measure the ledger rather than the random number
//! generator. Every run ends by checking the ledger's invariants and fails loudly if one is broken: a fast ledger that
//! loses money is not a result.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::builder::RangedU64ValueParser;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use rampart_core::{AccountId, Amount, AssetCode, Clock, SystemClock, TransferId};
use rampart_ledger::{
    AccountFlags, CreateAccountResult, CreateTransferResult, Ledger, NewAccount, NewTransfer, TransferFlags, WideSum,
};
use rampart_store::{BATCH_LEN_MAX, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::config::{Config, redact_url};

/// What to measure.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Transfers per second of the ledger: the pure state machine in memory, then single and batched commands
    /// through the store, with latency percentiles.
    Ledger(LedgerArgs),
    /// Audit appends per second and latency (in transactions, as the server does them), and verification speed.
    Audit(crate::bench_audit::AuditArgs),
    /// Argon2id hashes, TOTP verifications and signed API requests per second, with latency percentiles.
    Auth(crate::bench_auth::AuthArgs),
    /// A 5-custodian key generation, a 3-of-5 signing ceremony and Bitcoin Core's check of the spend, in
    /// milliseconds; the hot/cold rebalancing simulation.
    Custody(crate::bench_custody::CustodyArgs),
    /// Risk decisions per second on one thread and on two (users partitioned between two engines), decision latency
    /// at a sustained rate, and the memory of a million user profiles, on a generated stream of realistic events.
    Risk(crate::bench_risk::RiskArgs),
    /// Sanctions screening: name queries against the whole SDN list (rate and latency on one thread), address
    /// lookups, and re-screening a million customers on every core.
    Screening(crate::bench_screening::ScreeningArgs),
    /// Withdrawal requests accepted per second over HTTP through the whole gate chain, with latency percentiles, on
    /// SQLite or PostgreSQL.
    Withdrawals(crate::bench_withdrawals::WithdrawalsArgs),
    /// The proof-of-reserves liabilities tree: build time, every user's proof, one proof's generation and
    /// verification, proof size and peak memory.
    Reserves(crate::bench_reserves::ReservesArgs),
}

/// Flags of `rampart bench ledger`.
#[derive(Args, Debug)]
pub struct LedgerArgs {
    /// The database to measure: `postgres://…` (used as given: migrated, then the benchmark adds accounts and
    /// transfers with fresh random ids, so runs never collide) or `sqlite://path`. Without it, a fresh SQLite file in
    /// a temporary directory, removed afterwards. The configured `database_url` is deliberately ignored, so that a
    /// benchmark never writes to a production database by accident.
    #[arg(long)]
    database_url: Option<String>,
    /// Customer accounts that transfers move money between; one custody account funds them all.
    #[arg(long, default_value_t = 10_000, value_parser = RangedU64ValueParser::<usize>::new().range(2..=1_000_000))]
    accounts: usize,
    /// Transfers applied to the in-memory state machine.
    #[arg(long, default_value_t = 1_000_000, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    state_machine_transfers: usize,
    /// Single-transfer commands through the store, one after another, for latency.
    #[arg(long, default_value_t = 2_000, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    single: usize,
    /// Transfers through the store in batches.
    #[arg(long, default_value_t = 100_000, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    transfers: usize,
    /// Transfers per batch, for the store and the state machine alike.
    #[arg(
        long,
        default_value_t = BATCH_LEN_MAX,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..=BATCH_LEN_MAX as u64),
    )]
    batch: usize,
    /// Concurrent batch writers through the store.
    #[arg(long, default_value_t = 1, value_parser = RangedU64ValueParser::<usize>::new().range(1..=64))]
    concurrency: usize,
    /// Percent of transfers that open a hold; about as many again post (three in four) or void (one in four) an open
    /// hold of the same batch.
    #[arg(long, default_value_t = 10, value_parser = RangedU64ValueParser::<u32>::new().range(0..=50))]
    pending_percent: u32,
    /// Seeds the workload (which accounts, which amounts, which holds) so that a run can be repeated. Ids are always
    /// fresh. Random when absent; printed either way.
    #[arg(long)]
    seed: Option<u64>,
}

/// Runs a benchmark.
pub async fn run(command: BenchCommand, config: Config) -> anyhow::Result<()> {
    match command {
        BenchCommand::Ledger(args) => ledger(args, config).await,
        BenchCommand::Audit(args) => crate::bench_audit::run(args, config).await,
        BenchCommand::Auth(args) => crate::bench_auth::run(args).await,
        BenchCommand::Custody(args) => crate::bench_custody::run(args).await,
        BenchCommand::Risk(args) => crate::bench_risk::run(args).await,
        BenchCommand::Screening(args) => crate::bench_screening::run(args).await,
        BenchCommand::Withdrawals(args) => crate::bench_withdrawals::run(args).await,
        BenchCommand::Reserves(args) => crate::bench_reserves::run(args).await,
    }
}

/// The asset every benchmark account holds.
const ASSET: AssetCode = AssetCode::BTC;
/// The account code of the custody account that funds the customers.
const CUSTODY_CODE: u16 = 1;
/// The account code of a customer account.
const CUSTOMER_CODE: u16 = 2;
/// The transfer code of a funding deposit.
const DEPOSIT_CODE: u16 = 1;
/// The transfer code of a payment between customers.
const PAYMENT_CODE: u16 = 2;
/// What each customer starts with: far more than the workload can spend, so that rejections stay rare.
const FUNDING_UNITS: u128 = 1_000_000_000_000_000;
/// The largest payment, in units.
const PAYMENT_UNITS_MAX: u128 = 100_000;
/// Holds expire after an hour: long enough never to expire during a run, and the expiry index is exercised.
const HOLD_TIMEOUT_S: u32 = 3600;
/// The histograms' range: one microsecond to an hour.
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Every figure of one `bench ledger` run: the JSON line, and the source of the human summary.
#[derive(Debug, Serialize)]
struct LedgerFigures {
    bench: &'static str,
    backend: &'static str,
    database: String,
    seed: u64,
    accounts: usize,
    batch_size: usize,
    concurrency: usize,
    pending_percent: u32,
    state_machine_transfers: u64,
    state_machine_ok: u64,
    state_machine_ms: u64,
    state_machine_transfers_per_s: u64,
    single_transfers: u64,
    single_ok: u64,
    single_ms: u64,
    single_transfers_per_s: u64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    batched_transfers: u64,
    batched_ok: u64,
    batched_ms: u64,
    batched_transfers_per_s: u64,
    batch_p50_us: u64,
    batch_p99_us: u64,
    batch_max_us: u64,
    rejections: BTreeMap<&'static str, u64>,
    ledger_balanced: bool,
    ledger_accounts: u64,
    ledger_pending: u64,
}

async fn ledger(args: LedgerArgs, mut config: Config) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(rand::random);
    println!("rampart bench ledger: seed {seed}, {} customer accounts, batches of {}", args.accounts, args.batch);

    // The database is opened first, so that a bad URL fails at once. The temporary directory is declared before the
    // store, so the store (and its open files) drops first.
    let (url, _temp_dir) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let dir = TempDir::create()?;
            (Store::sqlite_url_in(&dir.0), Some(dir))
        }
    };
    config.database_url = Some(url.clone());
    let database = redact_url(&url);
    let store = crate::serve::open_store(&config, &url).await?;
    store.migrate().await.context("database migration failed")?;
    println!("store:          {} at {database}", store.backend().as_str());

    let state_machine = {
        let (accounts, batch, transfers, pending_percent) =
            (args.accounts, args.batch, args.state_machine_transfers, args.pending_percent);
        tokio::task::spawn_blocking(move || bench_state_machine(seed, accounts, batch, transfers, pending_percent))
            .await
            .context("the state-machine benchmark panicked")??
    };
    println!(
        "state machine:  {} transfers ({} ok) in {} ms: {} transfers/s; invariants hold",
        grouped(state_machine.attempted),
        grouped(state_machine.ok),
        state_machine.elapsed.as_millis(),
        grouped(per_second(state_machine.ok, state_machine.elapsed)),
    );

    let figures = bench_store(&store, &args, seed.wrapping_add(1)).await?;
    println!(
        "single:         {} transfers ({} ok) in {} ms: {} transfers/s; latency p50 {} µs, p99 {} µs, p99.9 {} µs, \
         max {} µs",
        grouped(figures.single.attempted),
        grouped(figures.single.ok),
        figures.single.elapsed.as_millis(),
        grouped(per_second(figures.single.ok, figures.single.elapsed)),
        figures.single.latency.value_at_quantile(0.50),
        figures.single.latency.value_at_quantile(0.99),
        figures.single.latency.value_at_quantile(0.999),
        figures.single.latency.max(),
    );
    println!(
        "batched:        {} transfers ({} ok) in {} batches of up to {} from {} writer(s) in {} ms: {} transfers/s; \
         batch latency p50 {} µs, p99 {} µs, max {} µs",
        grouped(figures.batched.attempted),
        grouped(figures.batched.ok),
        figures.batched.latency.len(),
        args.batch,
        args.concurrency,
        figures.batched.elapsed.as_millis(),
        grouped(per_second(figures.batched.ok, figures.batched.elapsed)),
        figures.batched.latency.value_at_quantile(0.50),
        figures.batched.latency.value_at_quantile(0.99),
        figures.batched.latency.max(),
    );

    let report = store.verify_ledger().await.context("cannot verify the stored ledger")?;
    for (asset, totals) in &report.totals {
        println!(
            "{:<16}Σ debits posted {} = Σ credits posted {}; Σ debits pending {} = Σ credits pending {}",
            format!("ledger {asset}:"),
            wide(totals.debits_posted),
            wide(totals.credits_posted),
            wide(totals.debits_pending),
            wide(totals.credits_pending),
        );
    }
    if let Some(violation) = &report.violation {
        bail!("THE STORED LEDGER IS BROKEN after the benchmark: {violation:?}");
    }
    println!(
        "ledger:         balanced: {} accounts, {} live holds, every invariant holds",
        report.accounts, report.pending
    );

    let mut rejections = state_machine.rejections.clone();
    for (code, n) in figures.single.rejections.iter().chain(&figures.batched.rejections) {
        *rejections.entry(code).or_default() += n;
    }
    if !rejections.is_empty() {
        println!(
            "rejections:     {rejections:?} (business results, not errors; only ok transfers count as throughput)"
        );
    }
    let out = LedgerFigures {
        bench: "ledger",
        backend: store.backend().as_str(),
        database,
        seed,
        accounts: args.accounts,
        batch_size: args.batch,
        concurrency: args.concurrency,
        pending_percent: args.pending_percent,
        state_machine_transfers: state_machine.attempted,
        state_machine_ok: state_machine.ok,
        state_machine_ms: millis(state_machine.elapsed),
        state_machine_transfers_per_s: per_second(state_machine.ok, state_machine.elapsed),
        single_transfers: figures.single.attempted,
        single_ok: figures.single.ok,
        single_ms: millis(figures.single.elapsed),
        single_transfers_per_s: per_second(figures.single.ok, figures.single.elapsed),
        p50_us: figures.single.latency.value_at_quantile(0.50),
        p99_us: figures.single.latency.value_at_quantile(0.99),
        p999_us: figures.single.latency.value_at_quantile(0.999),
        max_us: figures.single.latency.max(),
        batched_transfers: figures.batched.attempted,
        batched_ok: figures.batched.ok,
        batched_ms: millis(figures.batched.elapsed),
        batched_transfers_per_s: per_second(figures.batched.ok, figures.batched.elapsed),
        batch_p50_us: figures.batched.latency.value_at_quantile(0.50),
        batch_p99_us: figures.batched.latency.value_at_quantile(0.99),
        batch_max_us: figures.batched.latency.max(),
        rejections,
        ledger_balanced: true,
        ledger_accounts: report.accounts,
        ledger_pending: report.pending,
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// What one timed phase did.
struct Phase {
    /// Transfers submitted.
    attempted: u64,
    /// Transfers that answered `ok`.
    ok: u64,
    /// Every other answer, by code.
    rejections: BTreeMap<&'static str, u64>,
    /// The time measured: only the ledger calls for the state machine, the wall clock for the store.
    elapsed: Duration,
    /// Latency of each command, in microseconds.
    latency: Histogram<u64>,
}

impl Phase {
    fn new() -> Phase {
        Phase {
            attempted: 0,
            ok: 0,
            rejections: BTreeMap::new(),
            elapsed: Duration::ZERO,
            latency: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("the histogram bounds are valid"),
        }
    }

    fn tally(&mut self, results: &[CreateTransferResult]) {
        self.attempted += results.len() as u64;
        for r in results {
            if *r == CreateTransferResult::Ok {
                self.ok += 1;
            } else {
                *self.rejections.entry(r.as_str()).or_default() += 1;
            }
        }
    }

    fn record(&mut self, latency: Duration) {
        self.latency.saturating_record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1));
    }

    fn merge(&mut self, other: Phase) {
        self.attempted += other.attempted;
        self.ok += other.ok;
        for (code, n) in other.rejections {
            *self.rejections.entry(code).or_default() += n;
        }
        self.latency.add(&other.latency).expect("histograms with the same bounds add");
    }
}

/// Ids no earlier run used: a random 64-bit prefix, so that re-runs against the same PostgreSQL database never
/// collide, and counters below it.
struct IdSpace {
    accounts_base: u128,
    transfers_base: u128,
}

impl IdSpace {
    fn fresh() -> IdSpace {
        // The prefix is nonzero, so every id is; its top bit is clear, so no id is 2^128 - 1.
        let prefix = u128::from((rand::random::<u64>() >> 1) | 1) << 64;
        IdSpace { accounts_base: prefix, transfers_base: prefix | (1 << 63) }
    }
}

/// The accounts of a run and the deposits that fund them.
struct Setup {
    accounts: Vec<NewAccount>,
    deposits: Vec<NewTransfer>,
    customers: Vec<AccountId>,
}

impl Setup {
    fn new(ids: &IdSpace, customers: usize) -> Setup {
        let custody = AccountId(ids.accounts_base + 1);
        let customer_ids: Vec<AccountId> =
            (0..customers as u128).map(|i| AccountId(ids.accounts_base + 2 + i)).collect();
        let mut accounts = vec![NewAccount {
            id: custody,
            asset: ASSET,
            code: CUSTODY_CODE,
            flags: AccountFlags::default(),
            user_data: 0,
        }];
        accounts.extend(customer_ids.iter().map(|&id| NewAccount {
            id,
            asset: ASSET,
            code: CUSTOMER_CODE,
            flags: AccountFlags { debits_must_not_exceed_credits: true, credits_must_not_exceed_debits: false },
            user_data: id.get(),
        }));
        let deposits = customer_ids
            .iter()
            .enumerate()
            .map(|(i, &customer)| NewTransfer {
                id: TransferId(ids.transfers_base + 1 + i as u128),
                debit_account_id: custody,
                credit_account_id: customer,
                amount: Amount::new(FUNDING_UNITS),
                pending_id: None,
                asset: ASSET,
                code: DEPOSIT_CODE,
                flags: TransferFlags::default(),
                timeout_s: 0,
                user_data: 0,
            })
            .collect();
        Setup { accounts, deposits, customers: customer_ids }
    }
}

/// Generates payments between random customers, with holds that later transfers of the same batch post or void.
struct Workload {
    rng: StdRng,
    customers: Vec<AccountId>,
    next_transfer_id: u128,
    pending_percent: u32,
}

impl Workload {
    /// `first_transfer_id` must leave room for every transfer the workload generates below the next id range.
    fn new(seed: u64, customers: Vec<AccountId>, first_transfer_id: u128, pending_percent: u32) -> Workload {
        Workload { rng: StdRng::seed_from_u64(seed), customers, next_transfer_id: first_transfer_id, pending_percent }
    }

    /// `total` transfers in batches of `batch_len` (the last one possibly shorter).
    fn batches(&mut self, total: usize, batch_len: usize) -> Vec<Vec<NewTransfer>> {
        let mut batches = Vec::with_capacity(total.div_ceil(batch_len));
        let mut left = total;
        while left > 0 {
            let len = left.min(batch_len);
            batches.push(self.batch(len));
            left -= len;
        }
        batches
    }

    /// A batch of `len` transfers. Holds are resolved only by later transfers of the same batch, so that batches
    /// are independent of each other and concurrent writers cannot reorder a post before its hold. Holds still open
    /// at the end of the batch stay open.
    fn batch(&mut self, len: usize) -> Vec<NewTransfer> {
        let mut batch = Vec::with_capacity(len);
        let mut open: Vec<TransferId> = Vec::new();
        while batch.len() < len {
            let roll = self.rng.random_range(0..100);
            let transfer = if roll < self.pending_percent {
                let hold = self.payment(TransferFlags { pending: true, ..TransferFlags::default() }, HOLD_TIMEOUT_S);
                open.push(hold.id);
                hold
            } else if roll < 2 * self.pending_percent && !open.is_empty() {
                let pending_id = open.swap_remove(self.rng.random_range(0..open.len()));
                self.resolve(pending_id)
            } else {
                self.payment(TransferFlags::default(), 0)
            };
            batch.push(transfer);
        }
        batch
    }

    fn next_id(&mut self) -> TransferId {
        let id = TransferId(self.next_transfer_id);
        self.next_transfer_id += 1;
        id
    }

    fn payment(&mut self, flags: TransferFlags, timeout_s: u32) -> NewTransfer {
        let n = self.customers.len();
        let debit = self.rng.random_range(0..n);
        // A different account, uniformly: pick among the other n - 1 and skip over the debit account.
        let mut credit = self.rng.random_range(0..n - 1);
        if credit >= debit {
            credit += 1;
        }
        NewTransfer {
            id: self.next_id(),
            debit_account_id: self.customers[debit],
            credit_account_id: self.customers[credit],
            amount: Amount::new(self.rng.random_range(1..=PAYMENT_UNITS_MAX)),
            pending_id: None,
            asset: ASSET,
            code: PAYMENT_CODE,
            flags,
            timeout_s,
            user_data: 0,
        }
    }

    /// Posts (three times in four, for the whole hold) or voids a hold. The accounts and code are left zero, meaning
    /// "the pending transfer's", as a client that knows only the hold's id would send them.
    fn resolve(&mut self, pending_id: TransferId) -> NewTransfer {
        let post = self.rng.random_range(0..4) != 0;
        NewTransfer {
            id: self.next_id(),
            debit_account_id: AccountId(0),
            credit_account_id: AccountId(0),
            amount: Amount::ZERO,
            pending_id: Some(pending_id),
            asset: ASSET,
            code: 0,
            flags: TransferFlags {
                post_pending_transfer: post,
                void_pending_transfer: !post,
                ..TransferFlags::default()
            },
            timeout_s: 0,
            user_data: 0,
        }
    }
}

/// The first transfer id after the deposits.
fn first_payment_id(ids: &IdSpace, customers: usize) -> u128 {
    ids.transfers_base + 1 + customers as u128
}

fn bench_state_machine(
    seed: u64,
    customers: usize,
    batch_len: usize,
    total: usize,
    pending_percent: u32,
) -> anyhow::Result<Phase> {
    let clock = SystemClock;
    let ids = IdSpace::fresh();
    let setup = Setup::new(&ids, customers);
    let mut ledger = Ledger::new();
    let results = ledger.create_accounts(&setup.accounts, clock.now_ns());
    ensure!(results.iter().all(|r| *r == CreateAccountResult::Ok), "creating the accounts failed: {results:?}");
    for chunk in setup.deposits.chunks(BATCH_LEN_MAX) {
        let results = ledger.create_transfers(chunk, clock.now_ns());
        ensure!(results.iter().all(|r| *r == CreateTransferResult::Ok), "funding the accounts failed");
    }

    let mut workload = Workload::new(seed, setup.customers, first_payment_id(&ids, customers), pending_percent);
    let batches = workload.batches(total, batch_len);
    let mut phase = Phase::new();
    for batch in &batches {
        let now_ns = clock.now_ns();
        let start = Instant::now();
        let results = ledger.create_transfers(batch, now_ns);
        let elapsed = start.elapsed();
        phase.elapsed += elapsed;
        phase.record(elapsed);
        phase.tally(&results);
    }
    if let Err(violation) = ledger.check_invariants() {
        bail!("THE IN-MEMORY LEDGER IS BROKEN after {} transfers (seed {seed}): {violation:?}", phase.attempted);
    }
    Ok(phase)
}

/// The store's two phases.
struct StoreFigures {
    single: Phase,
    batched: Phase,
}

async fn bench_store(store: &Store, args: &LedgerArgs, seed: u64) -> anyhow::Result<StoreFigures> {
    let clock = SystemClock;
    let ids = IdSpace::fresh();
    let setup = Setup::new(&ids, args.accounts);
    for chunk in setup.accounts.chunks(BATCH_LEN_MAX) {
        let results = store.create_accounts(chunk, clock.now_ns()).await?;
        ensure!(results.iter().all(|r| *r == CreateAccountResult::Ok), "creating the accounts failed");
    }
    for chunk in setup.deposits.chunks(BATCH_LEN_MAX) {
        let results = store.create_transfers(chunk, clock.now_ns()).await?;
        ensure!(results.iter().all(|r| *r == CreateTransferResult::Ok), "funding the accounts failed");
    }

    let mut workload =
        Workload::new(seed, setup.customers, first_payment_id(&ids, args.accounts), args.pending_percent);
    // One long sequence sent one transfer at a time, so holds are posted by later, separate commands.
    let singles = workload.batch(args.single);
    let batches = workload.batches(args.transfers, args.batch);

    let mut single = Phase::new();
    let start = Instant::now();
    for transfer in &singles {
        let now_ns = clock.now_ns();
        let sent = Instant::now();
        let results = store.create_transfers(std::slice::from_ref(transfer), now_ns).await?;
        single.record(sent.elapsed());
        single.tally(&results);
    }
    single.elapsed = start.elapsed();

    // Batches are dealt to the writers round-robin; each writer sends its own one after another.
    let mut lanes: Vec<Vec<Vec<NewTransfer>>> = (0..args.concurrency).map(|_| Vec::new()).collect();
    for (i, batch) in batches.into_iter().enumerate() {
        lanes[i % args.concurrency].push(batch);
    }
    let mut writers = tokio::task::JoinSet::new();
    let start = Instant::now();
    for lane in lanes {
        let store = store.clone();
        writers.spawn(async move {
            let clock = SystemClock;
            let mut phase = Phase::new();
            for batch in &lane {
                let now_ns = clock.now_ns();
                let sent = Instant::now();
                let results = store.create_transfers(batch, now_ns).await?;
                phase.record(sent.elapsed());
                phase.tally(&results);
            }
            anyhow::Ok(phase)
        });
    }
    let mut batched = Phase::new();
    while let Some(joined) = writers.join_next().await {
        batched.merge(joined.context("a batch writer panicked")??);
    }
    batched.elapsed = start.elapsed();
    Ok(StoreFigures { single, batched })
}

/// A directory of its own under the system's temporary directory, removed with everything in it when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn create() -> anyhow::Result<TempDir> {
        let name = format!("rampart-bench-{}-{:016x}", std::process::id(), rand::random::<u64>());
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("warning: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// Events per second, in integers (floats are kept away from this workspace's arithmetic).
pub(crate) fn per_second(count: u64, elapsed: Duration) -> u64 {
    let rate = u128::from(count) * 1_000_000_000 / elapsed.as_nanos().max(1);
    u64::try_from(rate).unwrap_or(u64::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A wide sum in decimal, when it fits in 128 bits (it always does for a benchmark's balances).
fn wide(sum: WideSum) -> String {
    if sum.high == 0 { sum.low.to_string() } else { format!("{}·2^128 + {}", sum.high, sum.low) }
}

/// `1234567` as `1,234,567`, for people reading the summary.
pub(crate) fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }

    #[test]
    fn rates_are_per_second() {
        assert_eq!(per_second(500, Duration::from_millis(250)), 2000);
        assert_eq!(per_second(1, Duration::ZERO), 1_000_000_000);
    }

    #[test]
    fn a_small_workload_keeps_the_ledger_sound_and_mostly_succeeds() {
        let phase = bench_state_machine(7, 50, 100, 2_000, 20).unwrap();
        assert_eq!(phase.attempted, 2_000);
        assert_eq!(phase.ok, 2_000, "{:?}", phase.rejections);
    }
}
