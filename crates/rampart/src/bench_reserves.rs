//! `rampart bench reserves`: the liabilities tree of a generated snapshot (users holding one to four of K assets),
//! built on every core; every user's inclusion proof generated and encoded; single proofs timed; proofs decoded and
//! verified; peak memory. Compute only. The run fails if a proof does not verify or the totals are not the snapshot's.
//!
//! With `--private`, the private form (Pedersen commitments, Bulletproofs range proofs): the build includes the
//! publication's range proofs of the nodes at the proven levels and above; a proof costs about 6–7 ms of a core per
//! range-proven commitment (proven levels × held assets), so every user's proof is not generated; a sample is, on
//! every thread, and the time for all users is extrapolated from it and labelled so (`all_proofs_extrapolated:
//! true`). Single proofs are timed with their range proofs made and checked on every thread, and on one; the
//! publication is decoded and verified once, and every proof is verified against it.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use clap::builder::RangedU64ValueParser;
use rampart_reserves::private::PrivateTree;
use rampart_reserves::{Holding, Reveal, Tree, TreeSecret, height_for};
use rampart_verify::Proof;
use rampart_verify::params::{Asset, Params};
use rampart_verify::private::{
    BulletproofGens, PrivateProof, PrivatePublication, RANGE_BITS, TOP_GROUP_VALUES, proof_groups,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::bench::grouped;

/// Flags of `rampart bench reserves`.
#[derive(Args, Debug)]
pub struct ReservesArgs {
    /// Users in the snapshot.
    #[arg(long, default_value_t = 1_000_000, value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000_000))]
    users: usize,
    /// Assets in the tree (each user holds one to four of them).
    #[arg(long, default_value_t = 16, value_parser = RangedU64ValueParser::<usize>::new().range(1..=500))]
    assets: usize,
    /// Threads that build the tree and generate the proofs (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Proofs timed one at a time, and verified (default 1,000; 64 with `--private`).
    #[arg(long)]
    samples: Option<usize>,
    /// Seed of the generated snapshot.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// The private form: Pedersen commitments and Bulletproofs range proofs instead of revealed sums.
    #[arg(long)]
    private: bool,
}

/// The peak resident set of this process (`VmHWM`), in bytes.
pub(crate) fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The CPU time this process has used so far, user and system (`/proc/self/stat`, in clock ticks of 10 ms): on a
/// machine shared with other work, what a phase cost apart from the time it waited for a core.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces) start at the state, field 3; utime and stime are 14
    // and 15.
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().skip(11).take(2).filter_map(|t| t.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// The one-minute load average (`/proc/loadavg`), to tell a quiet machine from a shared one.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().next().unwrap_or("?").to_string()
}

#[allow(clippy::float_arithmetic)]
fn ms(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1000.0 / n.max(1) as f64
}

#[allow(clippy::float_arithmetic)]
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub async fn run(args: ReservesArgs) -> anyhow::Result<()> {
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    if args.private {
        return run_private(&args, threads);
    }
    let samples = args.samples.unwrap_or(1_000);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let height = height_for(args.users, 1);
    let params = Params {
        exchange: "Rampart Bench Exchange".into(),
        snapshot: format!("bench-{}", args.seed),
        height,
        assets: (0..args.assets).map(|i| Asset { code: format!("ASSET{i}"), max: 1u128 << 96 }).collect(),
    };
    let (holdings, expected) = random_holdings(&args, &mut rng, |rng| {
        u128::from(rng.random_range(1..u64::MAX)) * u128::from(rng.random_range(1..1_000_000u32))
    });
    let mut secret = [0u8; 32];
    rng.fill(&mut secret);
    println!(
        "reserves: {} users × {} assets, tree height {height} ({} positions), {threads} threads",
        grouped(args.users as u64),
        args.assets,
        grouped(1u64 << height)
    );

    let started = Instant::now();
    let tree = Tree::build(params, holdings, &TreeSecret::new(secret), threads).context("building the tree")?;
    let build = started.elapsed();
    ensure!(tree.totals() == expected.as_slice(), "the tree's totals are not the snapshot's");
    let root = tree.root();
    println!("  tree built in {:.3} s; root {}", build.as_secs_f64(), hex::encode(root));

    // Every user's proof, generated and encoded, on every thread.
    let started = Instant::now();
    let users = tree.users();
    let per = users.div_ceil(threads);
    let (bytes, count) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let tree = &tree;
                s.spawn(move || {
                    let (mut bytes, mut count) = (0u64, 0u64);
                    for index in t * per..((t + 1) * per).min(users) {
                        bytes += tree.proof(index, Reveal::Held).encode().len() as u64;
                        count += 1;
                    }
                    (bytes, count)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a proof thread")).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    let all_proofs = started.elapsed();
    ensure!(count == users as u64, "every user has a proof");
    let proof_bytes = bytes / count.max(1);
    println!(
        "  all {} proofs in {:.3} s ({} bytes each on average, sums of held chunks revealed)",
        grouped(count),
        all_proofs.as_secs_f64(),
        grouped(proof_bytes)
    );

    // Single proofs, one at a time, then decoded and verified.
    let sample: Vec<usize> = (0..samples.min(users)).map(|_| rng.random_range(0..users)).collect();
    let started = Instant::now();
    let encoded: Vec<Vec<u8>> = sample.iter().map(|&i| tree.proof(i, Reveal::Held).encode()).collect();
    let gen_elapsed = started.elapsed();
    let started = Instant::now();
    for bytes in &encoded {
        let proof = Proof::decode(bytes).context("decoding a proof")?;
        let verified = proof.verify(&root).map_err(|e| anyhow::anyhow!("a proof does not verify: {e}"))?;
        verified.check_totals(tree.params(), tree.totals()).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let verify_elapsed = started.elapsed();
    let proof_gen_ms = round3(ms(gen_elapsed, sample.len()));
    let verify_ms = round3(ms(verify_elapsed, sample.len()));
    println!(
        "  one proof: generated in {proof_gen_ms} ms, decoded and verified in {verify_ms} ms ({} samples)",
        sample.len()
    );
    let peak = peak_rss_bytes();
    println!("  peak resident memory {} MiB", grouped(peak >> 20));

    println!(
        "{}",
        json!({
            "bench": "reserves",
            "users": args.users,
            "assets": args.assets,
            "private": false,
            "threads": threads,
            "height": height,
            "build_s": round3(build.as_secs_f64()),
            "all_proofs_s": round3(all_proofs.as_secs_f64()),
            "tree_and_proofs_s": round3((build + all_proofs).as_secs_f64()),
            "proof_gen_ms": proof_gen_ms,
            "proof_bytes": proof_bytes,
            "verify_ms": verify_ms,
            "peak_rss_bytes": peak,
        })
    );
    Ok(())
}

/// `args.users` customers with random 16-byte ids, each holding 1 to 4 distinct assets in amounts drawn by
/// `amount`; and the totals per asset.
fn random_holdings(
    args: &ReservesArgs,
    rng: &mut StdRng,
    mut amount: impl FnMut(&mut StdRng) -> u128,
) -> (Vec<Holding>, Vec<u128>) {
    let mut expected = vec![0u128; args.assets];
    let holdings = (0..args.users)
        .map(|_| {
            let mut id = [0u8; 16];
            rng.fill(&mut id);
            let held = rng.random_range(1..=4usize.min(args.assets));
            let mut balances: Vec<(u16, u128)> = Vec::with_capacity(held);
            while balances.len() < held {
                let a = rng.random_range(0..args.assets) as u16;
                if balances.iter().all(|&(i, _)| i != a) {
                    let value = amount(rng);
                    expected[usize::from(a)] += value;
                    balances.push((a, value));
                }
            }
            Holding { user_id: hex::encode(id).into_bytes(), balances }
        })
        .collect();
    (holdings, expected)
}

/// `--private`: the same snapshot shape with balances below the private form's maxima (`(2^64 − 1) >> height`).
fn run_private(args: &ReservesArgs, threads: usize) -> anyhow::Result<()> {
    let samples = args.samples.unwrap_or(64).max(1);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let height = height_for(args.users, 1);
    let max = u64::MAX >> height;
    let params = Params {
        exchange: "Rampart Bench Exchange".into(),
        snapshot: format!("bench-{}", args.seed),
        height,
        assets: (0..args.assets).map(|i| Asset { code: format!("ASSET{i}"), max: u128::from(max) }).collect(),
    };
    let (holdings, expected) = random_holdings(args, &mut rng, |rng| u128::from(rng.random_range(1..=max)));
    let mut secret = [0u8; 32];
    rng.fill(&mut secret);
    println!(
        "reserves (private form): {} users × {} assets, tree height {height} ({} positions), {threads} threads",
        grouped(args.users as u64),
        args.assets,
        grouped(1u64 << height)
    );

    let load_start = load_average();
    let (started, cpu) = (Instant::now(), cpu_time());
    let tree =
        PrivateTree::build(params, holdings, &TreeSecret::new(secret), threads).context("building the private tree")?;
    let (build, build_cpu) = (started.elapsed(), cpu_time() - cpu);
    let totals: Vec<u128> = tree.totals().iter().map(|&t| u128::from(t)).collect();
    ensure!(totals == expected, "the tree's totals are not the snapshot's");
    let root = tree.root();
    let proven_levels = tree.proven_levels();
    println!(
        "  tree and publication built in {:.3} s ({:.2} s of CPU; proven levels {proven_levels}: {} published \
         commitments range-proved); root {}",
        build.as_secs_f64(),
        build_cpu.as_secs_f64(),
        grouped(tree.publication().top_commitments.len() as u64),
        hex::encode(root)
    );

    // What a verifier derives once per process: the Bulletproofs generators of the largest aggregated range proof
    // (a publication's groups), measured apart from the cache the build filled.
    let started = Instant::now();
    let gens = BulletproofGens::new(RANGE_BITS, TOP_GROUP_VALUES);
    let gens_elapsed = started.elapsed();
    drop(gens);
    println!("  range proof generators (for {TOP_GROUP_VALUES} values) derived once in {:.3} ms", ms(gens_elapsed, 1));

    // The publication, downloaded and verified once per snapshot.
    let publication_bytes = tree.publication().encode();
    let started = Instant::now();
    let publication = PrivatePublication::decode(&publication_bytes)
        .context("decoding the publication")?
        .verify_with_threads(&root, threads)
        .map_err(|e| anyhow::anyhow!("the publication does not verify: {e}"))?;
    let publication_verify = started.elapsed();
    println!(
        "  publication: {} bytes, decoded and verified once in {:.3} s on {threads} threads",
        grouped(publication_bytes.len() as u64),
        publication_verify.as_secs_f64()
    );

    // A sample of proofs on every thread: the time for all users is extrapolated from it, not measured.
    let users = tree.users();
    let sample: Vec<usize> = (0..samples.min(users)).map(|_| rng.random_range(0..users)).collect();
    let per = sample.len().div_ceil(threads);
    let started = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = sample
            .chunks(per)
            .map(|part| {
                let tree = &tree;
                s.spawn(move || -> anyhow::Result<()> {
                    for &index in part {
                        tree.proof(index, Reveal::Held).context("a private proof")?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("a proof thread panicked"))??;
        }
        Ok(())
    })?;
    let sample_parallel = started.elapsed();
    let all_proofs_s = extrapolate(sample_parallel, sample.len(), users);
    println!(
        "  all {} proofs: EXTRAPOLATED to {all_proofs_s} s from {} proofs in {:.3} s on {threads} threads \
         (not measured)",
        grouped(users as u64),
        sample.len(),
        sample_parallel.as_secs_f64()
    );

    // Single proofs, one at a time, each made with its range proofs on every thread and then on one, so that both
    // figures see the same machine (which may be shared); the CPU time of the one-thread proofs is summed apart.
    let (mut gen_times, mut gen_1thread_times) = (Vec::with_capacity(sample.len()), Vec::with_capacity(sample.len()));
    let mut gen_cpu = Duration::ZERO;
    let mut encoded = Vec::with_capacity(sample.len());
    for &i in &sample {
        let started = Instant::now();
        encoded.push(tree.proof_with_threads(i, Reveal::Held, threads).context("a private proof")?.encode());
        gen_times.push(started.elapsed());
        let (started, cpu) = (Instant::now(), cpu_time());
        tree.proof_with_threads(i, Reveal::Held, 1).context("a private proof")?;
        gen_1thread_times.push(started.elapsed());
        gen_cpu += cpu_time() - cpu;
    }
    let proof_bytes = encoded.iter().map(|b| b.len() as u64).sum::<u64>() / encoded.len().max(1) as u64;
    let range_values =
        encoded.iter().map(|b| PrivateProof::decode(b).map(|p| p.range_values())).sum::<Result<usize, _>>()?;

    // Each decoded and verified against the verified publication, on every thread and then on one, likewise.
    let (mut verify_times, mut verify_1thread_times) =
        (Vec::with_capacity(sample.len()), Vec::with_capacity(sample.len()));
    let mut verify_cpu = Duration::ZERO;
    for bytes in &encoded {
        for (threads, times) in [(threads, &mut verify_times), (1, &mut verify_1thread_times)] {
            let (started, cpu) = (Instant::now(), cpu_time());
            let proof = PrivateProof::decode(bytes).context("decoding a private proof")?;
            proof
                .verify_with_threads(&publication, threads)
                .map_err(|e| anyhow::anyhow!("a private proof does not verify: {e}"))?;
            times.push(started.elapsed());
            if threads == 1 {
                verify_cpu += cpu_time() - cpu;
            }
        }
    }
    let total = |times: &[Duration]| times.iter().sum::<Duration>();
    let (gen_elapsed, gen_1thread) = (total(&gen_times), total(&gen_1thread_times));
    let (verify_elapsed, verify_1thread) = (total(&verify_times), total(&verify_1thread_times));
    let (gen_p50, gen_1thread_p50) = (median(&mut gen_times), median(&mut gen_1thread_times));
    let (verify_p50, verify_1thread_p50) = (median(&mut verify_times), median(&mut verify_1thread_times));
    let proof_gen_ms = round3(ms(gen_elapsed, sample.len()));
    let proof_gen_ms_1thread = round3(ms(gen_1thread, sample.len()));
    let verify_ms = round3(ms(verify_elapsed, sample.len()));
    let verify_ms_1thread = round3(ms(verify_1thread, sample.len()));
    println!(
        "  one proof ({range_values} range-proven values in {} proofs; groups {:?} for one held asset): generated in \
         {proof_gen_ms} ms on {threads} threads, {proof_gen_ms_1thread} ms on one; decoded and verified against the \
         publication in {verify_ms} ms on {threads} threads, {verify_ms_1thread} ms on one ({} samples, {} bytes \
         each on average)",
        sample.len(),
        proof_groups(usize::from(proven_levels)),
        sample.len(),
        grouped(proof_bytes)
    );
    let proof_gen_cpu_ms_1thread = round3(ms(gen_cpu, sample.len()));
    let verify_cpu_ms_1thread = round3(ms(verify_cpu, sample.len()));
    println!(
        "  medians: generated in {gen_p50} ms on {threads} threads, {gen_1thread_p50} ms on one; verified in \
         {verify_p50} ms on {threads} threads, {verify_1thread_p50} ms on one",
    );
    println!(
        "  CPU time on one thread: {proof_gen_cpu_ms_1thread} ms per proof generated, {verify_cpu_ms_1thread} ms per \
         proof verified (10 ms ticks over {} proofs)",
        sample.len()
    );
    let peak = peak_rss_bytes();
    println!("  peak resident memory {} MiB", grouped(peak >> 20));
    let load_end = load_average();
    println!("  load average (1 min) {load_start} at the start, {load_end} at the end");

    println!(
        "{}",
        json!({
            "bench": "reserves",
            "users": args.users,
            "assets": args.assets,
            "private": true,
            "threads": threads,
            "height": height,
            "proven_levels": proven_levels,
            "build_s": round3(build.as_secs_f64()),
            "all_proofs_s": all_proofs_s,
            "all_proofs_extrapolated": true,
            "all_proofs_sample": sample.len(),
            "proof_gen_ms": proof_gen_ms,
            "proof_gen_ms_1thread": proof_gen_ms_1thread,
            "proof_bytes": proof_bytes,
            "verify_ms": verify_ms,
            "verify_ms_1thread": verify_ms_1thread,
            "verify_parallel_ms": verify_ms,
            "publication_verify_s": round3(publication_verify.as_secs_f64()),
            "publication_bytes": publication_bytes.len(),
            "generators_ms": round3(ms(gens_elapsed, 1)),
            "proof_gen_ms_p50": gen_p50,
            "proof_gen_ms_1thread_p50": gen_1thread_p50,
            "verify_ms_p50": verify_p50,
            "verify_ms_1thread_p50": verify_1thread_p50,
            "build_cpu_s": round3(build_cpu.as_secs_f64()),
            "proof_gen_cpu_ms_1thread": proof_gen_cpu_ms_1thread,
            "verify_cpu_ms_1thread": verify_cpu_ms_1thread,
            "load_average_start": load_start,
            "load_average_end": load_end,
            "peak_rss_bytes": peak,
        })
    );
    Ok(())
}

/// The median of `times`, in milliseconds.
fn median(times: &mut [Duration]) -> f64 {
    times.sort_unstable();
    times.get(times.len() / 2).map_or(0.0, |&d| round3(ms(d, 1)))
}

/// Seconds for `all` proofs at the rate `sample` proofs took `elapsed`.
#[allow(clippy::float_arithmetic)]
fn extrapolate(elapsed: Duration, sample: usize, all: usize) -> f64 {
    round3(elapsed.as_secs_f64() * all as f64 / sample.max(1) as f64)
}
