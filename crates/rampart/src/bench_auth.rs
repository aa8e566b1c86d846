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
}

fn per_second(n: u64, elapsed: Duration) -> u64 {
    let ns = elapsed.as_nanos().max(1);
    u64::try_from(u128::from(n) * 1_000_000_000 / ns).unwrap_or(u64::MAX)
}

/// Runs the benchmark and prints its figures, then one JSON line.
pub fn run(args: AuthArgs) -> anyhow::Result<()> {
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
    println!("{json}");
    Ok(())
}
