//! `rampart bench withdrawals`: withdrawal requests accepted per second over HTTP through the whole gate chain (the
//! signed API request and its replay check, the account and whitelist gates, the KYC limits summed under the
//! account's lock, address screening, the risk engine with its event log, the recording transaction with the ledger
//! hold, the notification and the audit entries, the compliance and policy decisions and their move), with latency
//! percentiles, on SQLite or PostgreSQL. The policy allows everything it sees (no staff waits), the destinations are
//! whitelisted, and nothing is signed: the worker does not run, so the figures are the request path alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use clap::builder::RangedU64ValueParser;
use hdrhistogram::Histogram;
use rampart_auth::{ApiKeyId, ApiKeySecret};
use rampart_compliance::kyc::{LevelLimits, Limits, USD};
use rampart_core::{AssetRegistry, Clock, SystemClock};
use rampart_ledger::{AccountFlags, NewAccount, NewTransfer, TransferFlags};
use rampart_server::compliance::{Compliance, ComplianceConfig};
use rampart_server::custody::{Custody, CustodyConfig, custody_ledger_account, ensure_custody_accounts};
use rampart_server::withdrawals::WithdrawalsConfig;
use rampart_server::writer::WriterThread;
use rampart_server::{AppState, IdentityConfig, VaultState, customer_ledger_account};
use rampart_store::{ApiKeyRecord, Auditor, ConnectOptions, Effects, NewCustomer, Store};

use crate::config::redact_url;

/// Flags of `rampart bench withdrawals`.
#[derive(Args, Debug)]
pub struct WithdrawalsArgs {
    /// The database: `postgres://…` (migrated and used as given; the customers are new each run) or `sqlite://path`.
    /// Without it, a fresh SQLite file in a temporary directory, removed afterwards.
    #[arg(long)]
    database_url: Option<String>,
    /// Customers, each with an API key and a whitelisted address; requests go round-robin among them.
    #[arg(long, default_value_t = 200, value_parser = RangedU64ValueParser::<u32>::new().range(1..=100_000))]
    customers: u32,
    /// Withdrawal requests sent.
    #[arg(long, default_value_t = 20_000, value_parser = RangedU64ValueParser::<u32>::new().range(1..))]
    requests: u32,
    /// Clients sending them at once.
    #[arg(long, default_value_t = 64, value_parser = RangedU64ValueParser::<u32>::new().range(1..=4096))]
    clients: u32,
    /// Requests sent first and not measured (connections, caches).
    #[arg(long, default_value_t = 500)]
    warmup: u32,
}

struct Client {
    key_id: String,
    secret: ApiKeySecret,
    address: String,
}

/// Runs the benchmark.
pub async fn run(args: WithdrawalsArgs) -> anyhow::Result<()> {
    // Faults the server logs (a refused request's cause) go to stderr.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let temp = crate::bench::TempDir::create()?;
    let url = args.database_url.clone().unwrap_or_else(|| Store::sqlite_url_in(&temp.0));
    let options = ConnectOptions { pool_size_max: 32, ..ConnectOptions::default() };
    let store = Store::connect(&url, &options).await.context("connecting to the database")?;
    store.migrate().await?;
    let backend = store.backend().as_str();
    println!("withdrawals over HTTP on {backend} ({})", redact_url(&url));

    let (seal, root, _) = rampart_crypto::initialise(5, 3, &mut rand_core::OsRng)?;
    let (keyring, _) = rampart_crypto::Keyring::create(root, seal.init_id);
    let keyring = Arc::new(keyring);
    let identity =
        IdentityConfig { rate_limit_per_s: 1_000_000, rate_limit_burst: 1_000_000, ..IdentityConfig::default() };
    let node = rampart_chain::DevChainNode::open(None, 1)?;
    let custody = Custody { config: CustodyConfig::default(), chain: node.clone(), dev: Some(node) };
    let limit = Limits { daily: 1_000_000_000 * USD, monthly: 1_000_000_000 * USD };
    let compliance = ComplianceConfig { kyc_limits: LevelLimits([limit; 3]), ..ComplianceConfig::default() };
    // Large enough that nothing waits for staff: the default policy then allows every request.
    let withdrawals = WithdrawalsConfig { large_usd: 1_000_000_000, ..WithdrawalsConfig::default() };
    let risk = rampart_server::risk::Risk::load(&store, rampart_server::risk::RiskConfig::default())
        .await
        .map_err(|e| anyhow::anyhow!(e))?
        .0;
    let state = AppState::new(
        store.clone(),
        AssetRegistry::defaults(),
        Arc::new(SystemClock),
        VaultState::Unsealed(keyring.clone()),
        None,
    )
    .with_identity(identity)
    .and_then(|s| s.with_custody(Arc::new(custody)))
    .and_then(|s| s.with_risk(Arc::new(risk)))
    .and_then(|s| s.with_compliance(Compliance::new(compliance)))
    .and_then(|s| s.with_withdrawals(withdrawals))
    .map_err(|e| anyhow::anyhow!(e))?;
    let state = match WriterThread::start_for(&store, &url).await? {
        Some(writer) => state.with_writer_thread(writer).map_err(|e| anyhow::anyhow!(e))?,
        None => state,
    };
    ensure_custody_accounts(&state, "BTC").await.map_err(|e| anyhow::anyhow!("{}", e.message()))?;

    let started = Instant::now();
    let clients = customers(&store, &keyring, args.customers).await?;
    println!(
        "  {} customers with API keys, whitelisted addresses and funds in {:.1?}",
        clients.len(),
        started.elapsed()
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(rampart_server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.clients as usize).build()?;
    let clients = Arc::new(clients);

    drive(&http, &base, &clients, args.warmup, args.clients.min(args.warmup.max(1)), 0).await?;
    // The database has just grown from nothing: its statistics brought up to date, as a running exchange's
    // autovacuum keeps them, so that the planner does not scan whole tables it still believes tiny.
    store.analyze().await?;
    let (started, cpu_before) = (Instant::now(), CpuTicks::now());
    let all = drive(&http, &base, &clients, args.requests, args.clients, args.warmup).await?;
    let (elapsed, cpu) = (started.elapsed(), CpuTicks::now().and_then(|now| now.since(cpu_before)));
    let _ = stop.send(());
    let _ = server.await;

    let per_s = per_second(all.len(), elapsed);
    let ms = |q: f64| {
        let us = all.value_at_quantile(q);
        format!("{}.{:03}", us / 1000, us % 1000)
    };
    println!(
        "  {} requests by {} clients in {:.2?}: {per_s} accepted/s, latency p50 {} ms, p99 {} ms, max {} ms",
        all.len(),
        args.clients,
        elapsed,
        ms(0.50),
        ms(0.99),
        ms(1.0)
    );
    // CPU per request: the machine's (the database, this process and the kernel) and this process's own (the
    // server and the clients), from /proc; where the figures cannot be read, none are printed.
    let per_request = |ticks: u64| ticks * 10_000 / all.len().max(1);
    let cpu = cpu.map(|c| (per_request(c.machine), per_request(c.process)));
    if let Some((machine, process)) = cpu {
        println!(
            "  CPU per request: {machine} µs on the machine, of which {process} µs in this process (server and \
             clients) and {} µs elsewhere (the database, the kernel)",
            machine.saturating_sub(process)
        );
    }
    let line = serde_json::json!({
        "bench": "withdrawals",
        "backend": backend,
        "customers": args.customers,
        "clients": args.clients,
        "requests": all.len(),
        "requests_per_s": per_s,
        "p50_ms": ms(0.50).parse::<f64>().unwrap_or(0.0),
        "p99_ms": ms(0.99).parse::<f64>().unwrap_or(0.0),
        "cpu_us_per_request": cpu.map(|c| c.0),
        "process_cpu_us_per_request": cpu.map(|c| c.1),
    });
    println!("{line}");
    Ok(())
}

/// CPU time spent, in Linux's clock ticks (`USER_HZ`, 100 a second): the machine's busy time (every process and the
/// kernel, not idle, I/O wait or time stolen by the hypervisor) and this process's own.
#[derive(Clone, Copy)]
struct CpuTicks {
    machine: u64,
    process: u64,
}

impl CpuTicks {
    fn now() -> Option<CpuTicks> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        // cpu user nice system idle iowait irq softirq steal …
        let all: Vec<u64> =
            stat.lines().next()?.split_whitespace().skip(1).map(|v| v.parse().ok()).collect::<Option<_>>()?;
        let machine = all.first()? + all.get(1)? + all.get(2)? + all.get(5)? + all.get(6)?;
        // pid (comm) state … utime stime: fields 14 and 15, the 12th and 13th after the command's closing bracket.
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        let mut after = own.rsplit_once(')')?.1.split_whitespace().skip(11);
        let process = after.next()?.parse::<u64>().ok()? + after.next()?.parse::<u64>().ok()?;
        Some(CpuTicks { machine, process })
    }

    fn since(self, before: Option<CpuTicks>) -> Option<CpuTicks> {
        let before = before?;
        Some(CpuTicks {
            machine: self.machine.saturating_sub(before.machine),
            process: self.process.saturating_sub(before.process),
        })
    }
}

fn per_second(n: u64, elapsed: Duration) -> u64 {
    let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1);
    n.saturating_mul(1_000_000) / us
}

/// Sends `requests` withdrawals from `clients` concurrent clients; every one must be accepted.
async fn drive(
    http: &reqwest::Client,
    base: &str,
    customers: &Arc<Vec<Client>>,
    requests: u32,
    clients: u32,
    offset: u32,
) -> anyhow::Result<Histogram<u64>> {
    let mut tasks = Vec::new();
    let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
    for _ in 0..clients {
        let (http, base, customers, next) = (http.clone(), base.to_owned(), customers.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= requests {
                    break;
                }
                let i = n + offset;
                let c = &customers[i as usize % customers.len()];
                let path = "/v1/me/withdrawals";
                let body = serde_json::to_vec(&serde_json::json!({
                    "asset": "BTC", "amount": "0.0001", "address": c.address, "idempotency_key": format!("bench-{i}")
                }))?;
                let ts = SystemClock.now_ns() / 1_000_000;
                let sign = rampart_auth::sign_hex(&c.secret, "POST", path, &body, ts);
                let t0 = Instant::now();
                let answer = http
                    .post(format!("{base}{path}"))
                    .header("content-type", "application/json")
                    .header("x-rampart-key", &c.key_id)
                    .header("x-rampart-timestamp", ts.to_string())
                    .header("x-rampart-sign", &sign)
                    .body(body)
                    .send()
                    .await?;
                let status = answer.status();
                let text = answer.text().await?;
                histogram.record(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX).max(1))?;
                ensure!(status.as_u16() == 201, "a withdrawal was not accepted: {status} {text}");
                ensure!(text.contains("\"state\":\"approved\""), "a withdrawal was not approved at once: {text}");
            }
            anyhow::Ok(histogram)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for task in tasks {
        all.add(task.await??)?;
    }
    Ok(all)
}

/// Customers with an API key (`read`, `withdraw`; allowed from 127.0.0.1), a whitelisted address usable now and a
/// balance far above what the run withdraws; made by a few tasks at once, in the order of their numbers.
async fn customers(store: &Store, keyring: &Arc<rampart_crypto::Keyring>, n: u32) -> anyhow::Result<Vec<Client>> {
    const TASKS: u32 = 8;
    let run: u64 = rand::random();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let (store, keyring) = (store.clone(), keyring.clone());
        tasks.spawn(async move {
            let numbers: Vec<u32> = (task..n).step_by(TASKS as usize).collect();
            let made = some_customers(&store, &keyring, run, &numbers).await?;
            anyhow::Ok(numbers.into_iter().zip(made).collect::<Vec<_>>())
        });
    }
    let mut all = Vec::with_capacity(n as usize);
    while let Some(made) = tasks.join_next().await {
        all.extend(made??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, c)| c).collect())
}

/// The customers numbered `numbers` of a run's.
async fn some_customers(
    store: &Store,
    keyring: &rampart_crypto::Keyring,
    run: u64,
    numbers: &[u32],
) -> anyhow::Result<Vec<Client>> {
    let auditor = Auditor { signer: keyring, checkpoint_every: crate::init::CHECKPOINT_EVERY };
    let now = SystemClock.now_ns();
    let mut out = Vec::with_capacity(numbers.len());
    for &i in numbers {
        let email = format!("bench-{run:x}-{i}@example.com");
        let index = keyring.blind_index("customer.email", email.as_bytes());
        let mut handle = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut handle);
        let new = NewCustomer {
            handle,
            email_index: &index,
            email: b"unused",
            password_hash: "unused",
            totp_pending: b"unused",
        };
        let device: [u8; 32] = rand::random();
        let (customer, _) = store
            .create_customer(&new, &device, "bench", "127.0.0.1", now, &auditor, |_| Effects::default())
            .await?
            .context("a new customer")?;
        let key_id = ApiKeyId::generate().to_string();
        let secret = ApiKeySecret::generate();
        let key = ApiKeyRecord {
            id: key_id.clone(),
            customer_id: customer,
            label: "bench".into(),
            secret: keyring.encrypt(secret.expose_bytes(), format!("api_key:{key_id}:secret").as_bytes()),
            scopes: "read,withdraw".into(),
            allow_list: "127.0.0.1/32".into(),
            created_at_ns: now,
            expires_at_ns: now + 86_400_000_000_000,
            revoked_at_ns: None,
            last_used_ns: None,
        };
        store.create_api_key(&key, &auditor, Effects::default()).await?;
        let script = bitcoin::ScriptBuf::from_bytes([0x51].iter().chain(&i.to_be_bytes()).copied().collect());
        let address = bitcoin::Address::p2wsh(&script, bitcoin::Network::Regtest).to_string();
        let entry = store
            .add_whitelist_address(customer, "BTC", &address, "bench", now, &auditor, |_| Effects::default())
            .await?
            .context("a new whitelist entry")?;
        store.confirm_whitelist_address(entry.id, customer, now, now, &auditor, Effects::default()).await?;
        let account = customer_ledger_account(customer, "BTC");
        let code = rampart_core::AssetCode::BTC;
        store
            .create_accounts(
                &[NewAccount {
                    id: account,
                    asset: code,
                    code: rampart_server::CUSTOMER_ACCOUNT_CODE,
                    flags: AccountFlags { debits_must_not_exceed_credits: true, ..AccountFlags::default() },
                    user_data: u128::try_from(customer).unwrap_or(0),
                }],
                now,
            )
            .await?;
        let funding = NewTransfer {
            id: rampart_core::TransferId(rand::random::<u128>() | 1),
            debit_account_id: custody_ledger_account("BTC", "deposit"),
            credit_account_id: account,
            amount: rampart_core::Amount::new(1_000 * 100_000_000),
            pending_id: None,
            asset: code,
            code: 10,
            flags: TransferFlags::default(),
            timeout_s: 0,
            user_data: 0,
        };
        let results = store.create_transfers(&[funding], now).await?;
        ensure!(results[0].is_recorded(), "funding refused: {:?}", results[0]);
        out.push(Client { key_id, secret, address });
    }
    Ok(out)
}
