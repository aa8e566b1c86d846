//! `rampart bench screening`: name queries against the whole SDN list (latency and rate on one thread), digital-
//! currency address lookups, and re-screening a million customers on every core, as a list update requires.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, ensure};
use clap::Args;
use rampart_compliance::{AddressBook, DEFAULT_THRESHOLD, Query, Screener, sdn_addresses};
use serde_json::json;

use crate::bench::{grouped, per_second};
use crate::bench_risk::micros;
use crate::sanctions_cmd::{DEFAULT_ADDRESSES, DEFAULT_LIST, read_address_lists, read_list};

/// Flags of `rampart bench screening`.
#[derive(Args, Debug)]
pub struct ScreeningArgs {
    /// The directory of the OFAC SDN files.
    #[arg(long, default_value = DEFAULT_LIST)]
    list: PathBuf,
    /// The directory of per-asset sanctioned-address lists.
    #[arg(long, default_value = DEFAULT_ADDRESSES)]
    addresses: PathBuf,
    /// The directory of ordinary names (`last-names.txt`, `male-first-names.txt`, `female-first-names.txt`) from
    /// which customers are made.
    #[arg(long, default_value = "crates/compliance/testdata/census")]
    names: PathBuf,
    /// Customers to re-screen.
    #[arg(long, default_value_t = 1_000_000)]
    customers: usize,
    /// Threads that re-screen (the machine's cores by default).
    #[arg(long)]
    threads: Option<usize>,
    /// Address lookups to time.
    #[arg(long, default_value_t = 1_000_000)]
    lookups: usize,
}

fn lines(path: PathBuf) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect())
}

/// Customer `i` of the population: a given name, a middle initial, a surname, a year of birth and a country.
fn customer(i: usize, first: &[String], last: &[String]) -> (String, u16, &'static str) {
    const COUNTRIES: [&str; 8] = ["US", "DE", "FR", "GB", "JP", "BR", "NG", "IN"];
    let given = &first[i % first.len()];
    let surname = &last[(i / first.len()) % last.len()];
    let initial = char::from(b'A' + ((i / (first.len() * last.len())) % 26) as u8);
    (format!("{given} {initial}. {surname}"), 1940 + (i % 60) as u16, COUNTRIES[i % COUNTRIES.len()])
}

/// Runs the benchmark and prints its figures, then one JSON line.
pub async fn run(args: ScreeningArgs) -> anyhow::Result<()> {
    let json = tokio::task::spawn_blocking(move || measure(args)).await.context("the benchmark panicked")??;
    println!("{json}");
    Ok(())
}

fn measure(args: ScreeningArgs) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let parsed = read_list(&args.list)?;
    ensure!(parsed.problems.is_empty(), "{} rows of the list cannot be read", parsed.problems.len());
    let screener = Screener::new(&parsed.entries);
    let (entries, names) = screener.size();
    println!(
        "list: {} entries, {} names (primary and aliases) read and indexed in {} ms",
        grouped(entries as u64),
        grouped(names as u64),
        started.elapsed().as_millis()
    );

    // 1. Name queries, one thread: every name of the list as it is written, then ordinary names.
    let first: Vec<String> = lines(args.names.join("male-first-names.txt"))?
        .into_iter()
        .chain(lines(args.names.join("female-first-names.txt"))?)
        .collect();
    let last = lines(args.names.join("last-names.txt"))?;
    ensure!(!first.is_empty() && !last.is_empty(), "no ordinary names in {}", args.names.display());
    let mut queries: Vec<String> = parsed
        .entries
        .iter()
        .flat_map(|e| std::iter::once(e.name.clone()).chain(e.aliases.iter().map(|a| a.name.clone())))
        .collect();
    let listed = queries.len();
    queries.extend((0..10_000).map(|i| customer(i * 7_919, &first, &last).0));
    let mut ns: Vec<u64> = Vec::with_capacity(queries.len());
    let started = Instant::now();
    for q in &queries {
        let t = Instant::now();
        std::hint::black_box(screener.screen(&Query { name: q, ..Query::default() }, 5));
        ns.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    let elapsed = started.elapsed();
    ns.sort_unstable();
    let at = |p: usize| ns[(ns.len() * p / 1000).min(ns.len() - 1)];
    let (p50, p99, p999) = (at(500), at(990), at(999));
    let rate = per_second(queries.len() as u64, elapsed);
    println!(
        "names:     {} queries ({} names of the list, {} ordinary names) in {} ms on one thread: {} queries/s, p50 {} \
         µs, p99 {} µs (goal ≤ 200 µs: {}), p99.9 {} µs, max {} µs",
        grouped(queries.len() as u64),
        grouped(listed as u64),
        grouped((queries.len() - listed) as u64),
        elapsed.as_millis(),
        grouped(rate),
        micros(p50),
        micros(p99),
        if p99 <= 200_000 { "met" } else { "MISSED" },
        micros(p999),
        micros(ns[ns.len() - 1]),
    );

    // 2. Address lookups: every listed address in its own case and in capitals, and as many that are not listed.
    let mut book = AddressBook::default();
    let from_sdn = sdn_addresses(&parsed.entries, &mut book);
    let from_lists = read_address_lists(&args.addresses, &mut book)?;
    let mut probes: Vec<String> = Vec::new();
    for e in &parsed.entries {
        for c in &e.crypto {
            probes.push(c.address.clone());
            probes.push(c.address.to_uppercase());
        }
    }
    let n_listed = probes.len();
    probes.extend((0..n_listed as u64).map(|i| format!("0x{:040x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))));
    let mut found = 0usize;
    let started = Instant::now();
    for i in 0..args.lookups {
        if book.category(&probes[i % probes.len()]).is_some() {
            found += 1;
        }
    }
    let elapsed = started.elapsed();
    let lookup_ns = u64::try_from(elapsed.as_nanos() / args.lookups.max(1) as u128).unwrap_or(u64::MAX);
    println!(
        "addresses: {} listed ({} from SDN remarks, {} from per-asset lists); {} lookups in {} ms: {} ns a lookup \
         (goal ≤ 1,000 ns: {}), {} found",
        grouped(book.len() as u64),
        from_sdn,
        from_lists,
        grouped(args.lookups as u64),
        elapsed.as_millis(),
        lookup_ns,
        if lookup_ns <= 1_000 { "met" } else { "MISSED" },
        grouped(found as u64),
    );

    // 3. Re-screening every customer, as a list update requires, on every core.
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())).max(1);
    let started = Instant::now();
    let hits: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (screener, first, last) = (&screener, &first, &last);
                s.spawn(move || {
                    (t..args.customers)
                        .step_by(threads)
                        .filter(|&i| {
                            let (name, year, country) = customer(i, first, last);
                            let query = Query { name: &name, country: Some(country), birth_year: Some(year) };
                            screener.screen(&query, 1).first().is_some_and(|m| m.score >= DEFAULT_THRESHOLD)
                        })
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let rescreen = started.elapsed();
    let rescreen_1m_ms = u64::try_from(rescreen.as_millis() * 1_000_000 / args.customers.max(1) as u128).unwrap_or(0);
    println!(
        "re-screen: {} customers on {threads} threads in {} ms ({} a second; {} s for 1,000,000, goal < 60 s: {}); \
         {} hits at the threshold",
        grouped(args.customers as u64),
        rescreen.as_millis(),
        grouped(per_second(args.customers as u64, rescreen)),
        micros(rescreen_1m_ms),
        if rescreen_1m_ms < 60_000 { "met" } else { "MISSED" },
        grouped(hits as u64),
    );

    Ok(json!({
        "bench": "screening",
        "entries": entries,
        "names": names,
        "name_queries": queries.len(),
        "name_queries_per_s": rate,
        "name_query_p50_us": micros(p50),
        "name_query_p99_us": micros(p99),
        "name_query_p999_us": micros(p999),
        "listed_addresses": book.len(),
        "address_lookup_ns": lookup_ns,
        "customers": args.customers,
        "threads": threads,
        "rescreen_hits": hits,
        "rescreen_1m_s": micros(rescreen_1m_ms),
    }))
}
