//! `rampart bench audit`: what the audit log costs a transaction, how fast it fills, and how fast it verifies.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Args;
use hdrhistogram::Histogram;
use rampart_audit::{AuditEntry, AuditRecord, Outcome, Verifier};
use rampart_core::{AccountId, Amount, AssetCode, Clock, SystemClock, TransferId};
use rampart_crypto::Keyring;
use rampart_ledger::{AccountFlags, CreateTransferResult, NewAccount, NewTransfer, TransferFlags};
use rampart_store::{AuditFilter, AuditedBy, Auditor, Store};

use crate::bench::{TempDir, grouped, per_second};
use crate::config::{Config, redact_url};
use crate::init::CHECKPOINT_EVERY;

/// Flags of `rampart bench audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The database: its audit log must be empty, because the benchmark signs with a throwaway key. Without it, a
    /// fresh SQLite file in a temporary directory.
    #[arg(long)]
    database_url: Option<String>,
    /// Single-transfer transactions measured with and without their audit entry, and single-entry appends.
    #[arg(long, default_value_t = 2_000)]
    transactions: u64,
    /// Entries in the log when it is verified.
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    /// Entries per transaction while filling the log.
    #[arg(long, default_value_t = 10_000)]
    batch: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn record(i: u64, now: u64) -> AuditRecord {
    AuditRecord {
        time_ns: now,
        actor: format!("staff:{}", i % 50),
        action: "ledger.transfers.create".into(),
        target: "ledger".into(),
        outcome: Outcome::Success,
        details: BTreeMap::from([("ids".to_owned(), i.to_string()), ("applied".to_owned(), "1".to_owned())]),
    }
}

/// Seconds with three decimals, as a JSON number, from integer milliseconds.
fn seconds(ms: u64) -> serde_json::Value {
    serde_json::from_str(&format!("{}.{:03}", ms / 1000, ms % 1000)).expect("a decimal is a JSON number")
}

/// Runs the benchmark.
pub async fn run(args: AuditArgs, mut config: Config) -> anyhow::Result<()> {
    ensure!(args.transactions > 0 && args.entries > 0 && args.batch > 0, "counts must be positive");
    let (url, _temp_dir) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let dir = TempDir::create()?;
            (Store::sqlite_url_in(&dir.0), Some(dir))
        }
    };
    config.database_url = Some(url.clone());
    let store = crate::serve::open_store(&config, &url).await?;
    store.migrate().await.context("database migration failed")?;
    if !store.audit_entries(&AuditFilter::default(), 1).await?.is_empty() {
        bail!("bench audit needs a database whose audit log is empty: it signs with a throwaway key");
    }
    println!("rampart bench audit: {} at {}", store.backend().as_str(), redact_url(&url));
    let (seal, root, _) = rampart_crypto::initialise(5, 3, &mut rand_core::OsRng)?;
    let (keyring, _) = Keyring::create(root, seal.init_id);
    let auditor = Auditor { signer: &keyring, checkpoint_every: CHECKPOINT_EVERY };
    let clock = SystemClock;

    // 1. What an audit entry adds to a transaction: single transfers with and without one, interleaved so that both
    //    see the same machine.
    let btc = AssetCode::BTC;
    let base = u128::from(rand::random::<u64>()) << 64;
    let account =
        |id: u128| NewAccount { id: AccountId(id), asset: btc, code: 1, flags: AccountFlags::default(), user_data: 0 };
    store.create_accounts(&[account(base + 1), account(base + 2)], clock.now_ns()).await?;
    let transfer = |id: u128| NewTransfer {
        id: TransferId(id),
        debit_account_id: AccountId(base + 1),
        credit_account_id: AccountId(base + 2),
        amount: Amount::new(1),
        pending_id: None,
        asset: btc,
        code: 1,
        flags: TransferFlags::default(),
        timeout_s: 0,
        user_data: 0,
    };
    let spent = std::sync::atomic::AtomicU64::new(0);
    let by = AuditedBy { auditor, actor: "bench", spent_ns: Some(&spent) };
    let (mut plain, mut audited, mut appends, mut added) = (histogram(), histogram(), histogram(), histogram());
    for i in 0..u128::from(args.transactions) {
        let started = Instant::now();
        let r = store.create_transfers(&[transfer(base + 1000 + 2 * i)], clock.now_ns()).await?;
        plain.record(micros(started.elapsed()))?;
        let started = Instant::now();
        let before = spent.load(std::sync::atomic::Ordering::Relaxed);
        let a = store.create_transfers_audited(&[transfer(base + 1001 + 2 * i)], clock.now_ns(), &by).await?;
        audited.record(micros(started.elapsed()))?;
        let ns = spent.load(std::sync::atomic::Ordering::Relaxed) - before;
        added.record((ns / 1000).max(1))?;
        ensure!(r == [CreateTransferResult::Ok] && a == [CreateTransferResult::Ok], "benchmark transfers applied");
    }
    let single_started = Instant::now();
    for i in 0..args.transactions {
        let started = Instant::now();
        store.append_audit(vec![record(i, clock.now_ns())], &auditor).await?;
        appends.record(micros(started.elapsed()))?;
    }
    let appends_per_s = per_second(args.transactions, single_started.elapsed());
    // What the audit entry adds: the time spent appending it inside the transaction (locking the head, chaining,
    // signing the head, inserting), measured by the store; the commit it shares with the transfer is not counted.
    let added_p50 = added.value_at_quantile(0.5);
    let added_p99 = added.value_at_quantile(0.99);
    println!(
        "transfer, one per transaction: p50 {} µs / p99 {} µs plain; p50 {} µs / p99 {} µs audited; the audit entry adds p50 {added_p50} µs, p99 {added_p99} µs",
        plain.value_at_quantile(0.5),
        plain.value_at_quantile(0.99),
        audited.value_at_quantile(0.5),
        audited.value_at_quantile(0.99),
    );
    println!(
        "audit append, one per transaction: {} appends/s, p50 {} µs, p99 {} µs",
        grouped(appends_per_s),
        appends.value_at_quantile(0.5),
        appends.value_at_quantile(0.99)
    );

    // 2. Filling the log in batches.
    let existing = args.transactions * 2;
    let to_fill = args.entries.saturating_sub(existing);
    let fill_started = Instant::now();
    let mut filled = 0;
    while filled < to_fill {
        let n = args.batch.min(to_fill - filled);
        let now = clock.now_ns();
        let records: Vec<AuditRecord> = (0..n).map(|i| record(filled + i, now)).collect();
        store.append_audit(records, &auditor).await?;
        filled += n;
    }
    let batched_appends_per_s = per_second(filled, fill_started.elapsed());
    println!("audit append, {} per transaction: {} entries/s", args.batch, grouped(batched_appends_per_s));

    // 3. Verification of the whole log, reading included, as `rampart audit verify` does it.
    let started = Instant::now();
    let report = store.verify_audit(&keyring.verifying_key()).await?;
    let verify_total = started.elapsed();
    ensure!(report.finding.is_none(), "the benchmark's own log failed verification: {:?}", report.finding);
    let total_ms = u64::try_from(verify_total.as_millis()).unwrap_or(u64::MAX);
    let per_million_ms =
        u64::try_from(u128::from(total_ms) * 1_000_000 / u128::from(report.entries.max(1))).unwrap_or(u64::MAX);
    println!(
        "verify (reading included): {} entries, {} checkpoints in {total_ms} ms ({} ms per million)",
        grouped(report.entries),
        report.checkpoints,
        per_million_ms
    );

    // 4. The chain check alone, on entries already in memory.
    let mut entries: Vec<AuditEntry> = Vec::with_capacity(usize::try_from(report.entries).unwrap_or(0));
    let mut filter = AuditFilter::default();
    loop {
        let page = store.audit_entries(&filter, 50_000).await?;
        let Some(last) = page.last() else { break };
        filter.after_seq = last.seq;
        entries.extend(page);
    }
    let checkpoints = store.audit_checkpoints().await?;
    let head = store.audit_head().await?;
    let started = Instant::now();
    let mut verifier = Verifier::new(&keyring.verifying_key(), checkpoints).map_err(anyhow::Error::msg)?;
    for entry in &entries {
        ensure!(verifier.push(entry), "entry {} failed verification", entry.seq);
    }
    ensure!(verifier.finish(head.as_ref()).finding.is_none(), "the in-memory verification failed");
    let verify_entries_per_s = per_second(entries.len() as u64, started.elapsed());
    println!("verify (in memory): {} entries/s", grouped(verify_entries_per_s));

    let figures = serde_json::json!({
        "bench": "audit",
        "backend": store.backend().as_str(),
        "transactions": args.transactions,
        "entries": report.entries,
        "checkpoints": report.checkpoints,
        "plain_transfer_p50_us": plain.value_at_quantile(0.5),
        "plain_transfer_p99_us": plain.value_at_quantile(0.99),
        "audited_transfer_p50_us": audited.value_at_quantile(0.5),
        "audited_transfer_p99_us": audited.value_at_quantile(0.99),
        "append_p50_us": added_p50,
        "append_p99_us": added_p99,
        "append_max_us": added.max(),
        "single_append_p99_us": appends.value_at_quantile(0.99),
        "appends_per_s": appends_per_s,
        "batched_appends_per_s": batched_appends_per_s,
        "verify_total_s": seconds(total_ms),
        "verify_1m_total_s": seconds(per_million_ms),
        "verify_entries_per_s": verify_entries_per_s,
    });
    println!("{figures}");
    Ok(())
}
