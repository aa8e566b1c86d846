//! `rampart bench auth`: what proving identity costs. Argon2id hashes per second at the configured cost (the ceiling
//! of sign-ins per second), TOTP verifications per second, and signed API requests verified per second with their
//! latency percentiles (header parsing, the HMAC and the window check; the replay check is one database insert on
//! top, measured by the HTTP tests, not here).

use std::time::{Duration, Instant};

use anyhow::ensure;
use clap::Args;
use hdrhistogram::Histogram;
use rampart_auth::{ApiKeyId, ApiKeySecret, TotpSecret};
use secrecy::SecretString;

/// Flags of `rampart bench auth`.
#[derive(Args, Debug)]
pub struct AuthArgs {
    /// Argon2id hashes per thread.
    #[arg(long, default_value_t = 20)]
    hashes: u32,
    /// TOTP verifications.
    #[arg(long, default_value_t = 200_000)]
    totp: u32,
    /// Signed requests verified.
    #[arg(long, default_value_t = 500_000)]
    requests: u32,
    /// Signed requests sent through the HTTP service (key lookup, secret decryption, verification and the
    /// replay-protection insert), on a fresh SQLite database; 0 to skip.
    #[arg(long, default_value_t = 20_000)]
    http_requests: u32,
    /// Clients sending them at once.
    #[arg(long, default_value_t = 16)]
    http_clients: u32,
}

fn per_second(n: u64, elapsed: Duration) -> u64 {
    let ns = elapsed.as_nanos().max(1);
    u64::try_from(u128::from(n) * 1_000_000_000 / ns).unwrap_or(u64::MAX)
}

/// Runs the benchmark and prints its figures, then one JSON line.
pub async fn run(args: AuthArgs) -> anyhow::Result<()> {
    let (http_requests, http_clients) = (args.http_requests, args.http_clients);
    let mut json = tokio::task::spawn_blocking(move || in_process(args)).await??;
    if http_requests > 0 {
        let (rate, p50, p99) = over_http(http_requests, http_clients.max(1)).await?;
        println!(
            "signed requests through the service (SQLite, {http_clients} clients): {rate}/s; latency p50 {p50} µs, \
             p99 {p99} µs"
        );
        json["http_signed_requests_per_s"] = rate.into();
        json["http_signed_request_p50_us"] = p50.into();
        json["http_signed_request_p99_us"] = p99.into();
    }
    println!("{json}");
    Ok(())
}

/// Signed GET requests through the real service on a fresh SQLite database: answers requests per second and the
/// p50 and p99 latency in microseconds.
async fn over_http(requests: u32, clients: u32) -> anyhow::Result<(u64, u64, u64)> {
    use std::sync::Arc;

    use rampart_core::{AssetRegistry, Clock, SystemClock};
    use rampart_server::{AppState, IdentityConfig, VaultState};
    use rampart_store::{ApiKeyRecord, Auditor, ConnectOptions, Effects, NewCustomer, Store};

    let dir = crate::bench::TempDir::create()?;
    let store = Store::connect(&Store::sqlite_url_in(&dir.0), &ConnectOptions::default()).await?;
    store.migrate().await?;
    let (seal, root, _) = rampart_crypto::initialise(5, 3, &mut rand_core::OsRng)?;
    let (keyring, _) = rampart_crypto::Keyring::create(root, seal.init_id);
    let auditor = Auditor { signer: &keyring, checkpoint_every: crate::init::CHECKPOINT_EVERY };
    let now = SystemClock.now_ns();
    let index = keyring.blind_index("customer.email", b"bench@example.com");
    let new = NewCustomer {
        handle: [7; 16],
        email_index: &index,
        email: b"unused",
        password_hash: "unused",
        totp_pending: b"unused",
    };
    let (customer, _) = store
        .create_customer(&new, &[1; 32], "bench", "127.0.0.1", now, &auditor, |_| Effects::default())
        .await?
        .ok_or_else(|| anyhow::anyhow!("a fresh database has no customer"))?;
    let key_id = ApiKeyId::generate().to_string();
    let secret = ApiKeySecret::generate();
    let key = ApiKeyRecord {
        id: key_id.clone(),
        customer_id: customer,
        label: "bench".into(),
        secret: keyring.encrypt(secret.expose_bytes(), format!("api_key:{key_id}:secret").as_bytes()),
        scopes: "read".into(),
        allow_list: "127.0.0.1".into(),
        created_at_ns: now,
        expires_at_ns: now + 86_400_000_000_000,
        revoked_at_ns: None,
        last_used_ns: None,
    };
    store.create_api_key(&key, &auditor, Effects::default()).await?;
    let identity =
        IdentityConfig { rate_limit_per_s: 1_000_000, rate_limit_burst: 1_000_000, ..IdentityConfig::default() };
    let state = AppState::new(
        store,
        AssetRegistry::defaults(),
        Arc::new(SystemClock),
        VaultState::Unsealed(Arc::new(keyring)),
        None,
    )
    .with_identity(identity)
    .map_err(|e| anyhow::anyhow!(e))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(rampart_server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let secret = Arc::new(secret);
    let started = Instant::now();
    let per_client = requests.div_ceil(clients);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, base, secret, key_id) = (http.clone(), base.clone(), Arc::clone(&secret), key_id.clone());
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            for i in 0..per_client {
                // A distinct query makes every signature distinct: the same one twice would be refused as a replay.
                let path = format!("/v1/me/balances?n={}-{i}", rand::random::<u64>());
                let ts = SystemClock.now_ns() / 1_000_000;
                let nonce_ts = ts.to_string();
                let sign = rampart_auth::sign_hex(&secret, "GET", &path, b"", ts);
                let t0 = Instant::now();
                let answer = http
                    .get(format!("{base}{path}"))
                    .header("x-rampart-key", &key_id)
                    .header("x-rampart-timestamp", &nonce_ts)
                    .header("x-rampart-sign", &sign)
                    .send()
                    .await?;
                let status = answer.status();
                let _ = answer.bytes().await?;
                histogram.record(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX).max(1))?;
                anyhow::ensure!(status.is_success(), "a signed request was refused: {status}");
            }
            anyhow::Ok(histogram)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for task in tasks {
        all.add(task.await??)?;
    }
    let elapsed = started.elapsed();
    let _ = stop.send(());
    let _ = server.await;
    Ok((per_second(all.len(), elapsed), all.value_at_quantile(0.50), all.value_at_quantile(0.99)))
}

fn in_process(args: AuthArgs) -> anyhow::Result<serde_json::Value> {
    ensure!(args.hashes > 0 && args.totp > 0 && args.requests > 0, "every count must be positive");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    // Argon2id at the production cost: one thread, then every core (sign-ins run on the blocking pool).
    let password = SecretString::from("an example password of decent length");
    rampart_auth::warm_up();
    let started = Instant::now();
    for _ in 0..args.hashes {
        let hash = rampart_auth::hash_password(&password)?;
        std::hint::black_box(hash);
    }
    let argon_one = per_second(u64::from(args.hashes), started.elapsed());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..args.hashes {
                    std::hint::black_box(rampart_auth::hash_password(&password).expect("valid password"));
                }
            });
        }
    });
    let argon_all = per_second(u64::from(args.hashes) * threads as u64, started.elapsed());
    println!(
        "argon2id m={} KiB t={} p={}: {argon_one} hashes/s on one core, {argon_all}/s on {threads}",
        rampart_auth::ARGON2_MEMORY_KIB,
        rampart_auth::ARGON2_ITERATIONS,
        rampart_auth::ARGON2_LANES
    );

    // TOTP: the code of the current step, checked against the three candidate steps in constant time.
    let secret = TotpSecret::generate();
    let now_s = 1_800_000_000u64;
    let codes: Vec<String> = (0..64).map(|i| secret.code_at(now_s + i * 30)).collect();
    let started = Instant::now();
    let mut accepted = 0u64;
    for i in 0..u64::from(args.totp) {
        let k = (i % 64) as usize;
        if secret.verify(&codes[k], now_s + (k as u64) * 30).is_some() {
            accepted += 1;
        }
    }
    let totp_rate = per_second(u64::from(args.totp), started.elapsed());
    ensure!(accepted == u64::from(args.totp), "every benchmark code must verify");
    println!("totp: {totp_rate} verifications/s on one core");

    // Signed requests: the three headers parsed and the signature verified, timed one by one.
    let key = ApiKeyId::generate();
    let key_text = key.to_string();
    let secret = ApiKeySecret::generate();
    let body = br#"{"asset":"BTC","amount":"0.125","destination":"bc1qexampleexampleexampleexample0000","idempotency_key":"0f6b"}"#;
    let path = "/v1/me/withdrawals?client=bench";
    let base_ms = 1_800_000_000_000u64;
    let signed: Vec<(String, String)> = (0..1024u64)
        .map(|i| {
            let ts = base_ms + i;
            (ts.to_string(), rampart_auth::sign_hex(&secret, "POST", path, body, ts))
        })
        .collect();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
    let started = Instant::now();
    for i in 0..args.requests as usize {
        let (ts, sig) = &signed[i % signed.len()];
        let t0 = Instant::now();
        let headers =
            rampart_auth::parse_signed_headers(Some(key_text.as_bytes()), Some(ts.as_bytes()), Some(sig.as_bytes()))?;
        rampart_auth::verify(&secret, "POST", path, body, &headers, base_ms + 1000, 5_000)?;
        let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1);
        histogram.record(ns)?;
    }
    let sig_rate = per_second(u64::from(args.requests), started.elapsed());
    let p50 = histogram.value_at_quantile(0.50);
    let p99 = histogram.value_at_quantile(0.99);
    let p999 = histogram.value_at_quantile(0.999);
    println!(
        "signed requests: {sig_rate} verifications/s on one core; latency p50 {} ns, p99 {} ns, p99.9 {} ns",
        p50, p99, p999
    );
    let json = serde_json::json!({
        "bench": "auth",
        "argon2_hashes_per_s": argon_one,
        "argon2_hashes_per_s_all_cores": argon_all,
        "argon2_m_kib": rampart_auth::ARGON2_MEMORY_KIB,
        "argon2_t": rampart_auth::ARGON2_ITERATIONS,
        "argon2_p": rampart_auth::ARGON2_LANES,
        "cores": threads,
        "totp_verifications_per_s": totp_rate,
        "signed_request_verifications_per_s": sig_rate,
        "signed_request_p50_us": format!("{}.{:03}", p50 / 1000, p50 % 1000).parse::<serde_json::Number>().ok(),
        "signed_request_p99_us": format!("{}.{:03}", p99 / 1000, p99 % 1000).parse::<serde_json::Number>().ok(),
    });
    Ok(json)
}
