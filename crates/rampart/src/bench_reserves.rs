//! `rampart bench reserves`: the liabilities tree of a generated snapshot (users holding one to four of K assets),
//! built on every core; every user's inclusion proof generated and encoded; single proofs timed; proofs decoded and
//! verified; peak memory. Compute only. The run fails if a proof does not verify or the totals are not the snapshot's.
//!
//! With `--private`, the private form (Pedersen commitments, Bulletproofs range proofs): a proof costs about 9.5 ms
//! of a core per range-proven commitment, so every user's proof is not generated; a sample is, on every thread, and
//! the time for all users is extrapolated from it and labelled so (`all_proofs_extrapolated: true`).

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use clap::builder::RangedU64ValueParser;
use rampart_reserves::private::PrivateTree;
use rampart_reserves::{Holding, Reveal, Tree, TreeSecret, height_for};
use rampart_verify::Proof;
use rampart_verify::params::{Asset, Params};
use rampart_verify::private::{PrivateProof, generators};
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
    let mut expected = vec![0u128; args.assets];
    let holdings: Vec<Holding> = (0..args.users)
        .map(|_| {
            let mut id = [0u8; 16];
            rng.fill(&mut id);
            let held = rng.random_range(1..=4usize.min(args.assets));
            let mut balances: Vec<(u16, u128)> = Vec::with_capacity(held);
            while balances.len() < held {
                let a = rng.random_range(0..args.assets) as u16;
                if balances.iter().all(|&(i, _)| i != a) {
                    let amount =
                        u128::from(rng.random_range(1..u64::MAX)) * u128::from(rng.random_range(1..1_000_000u32));
                    expected[usize::from(a)] += amount;
                    balances.push((a, amount));
                }
            }
            Holding { user_id: hex::encode(id).into_bytes(), balances }
        })
        .collect();
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
    let mut expected = vec![0u128; args.assets];
    let holdings: Vec<Holding> = (0..args.users)
        .map(|_| {
            let mut id = [0u8; 16];
            rng.fill(&mut id);
            let held = rng.random_range(1..=4usize.min(args.assets));
            let mut balances: Vec<(u16, u128)> = Vec::with_capacity(held);
            while balances.len() < held {
                let a = rng.random_range(0..args.assets) as u16;
                if balances.iter().all(|&(i, _)| i != a) {
                    let amount = u128::from(rng.random_range(1..=max));
                    expected[usize::from(a)] += amount;
                    balances.push((a, amount));
                }
            }
            Holding { user_id: hex::encode(id).into_bytes(), balances }
        })
        .collect();
    let mut secret = [0u8; 32];
    rng.fill(&mut secret);
    println!(
        "reserves (private form): {} users × {} assets, tree height {height} ({} positions), {threads} threads",
        grouped(args.users as u64),
        args.assets,
        grouped(1u64 << height)
    );

    let started = Instant::now();
    let tree =
        PrivateTree::build(params, holdings, &TreeSecret::new(secret), threads).context("building the private tree")?;
    let build = started.elapsed();
    let totals: Vec<u128> = tree.totals().iter().map(|&t| u128::from(t)).collect();
    ensure!(totals == expected, "the tree's totals are not the snapshot's");
    let root = tree.root();
    println!("  tree built in {:.3} s; root {}", build.as_secs_f64(), hex::encode(root));

    // The Bulletproofs generators for the largest aggregated range proof a sampled user needs, derived once per
    // process (a verifier pays this once, not per proof).
    let largest = usize::from(height) * 4usize.min(args.assets);
    let started = Instant::now();
    generators(1 << largest.ilog2());
    let gens = started.elapsed();
    println!("  range proof generators derived once in {:.3} ms", ms(gens, 1));

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

    // Single proofs, one at a time on one thread, then decoded and verified.
    let started = Instant::now();
    let mut encoded = Vec::with_capacity(sample.len());
    for &i in &sample {
        encoded.push(tree.proof(i, Reveal::Held).context("a private proof")?.encode());
    }
    let gen_elapsed = started.elapsed();
    let proof_bytes = encoded.iter().map(|b| b.len() as u64).sum::<u64>() / encoded.len().max(1) as u64;
    let started = Instant::now();
    for bytes in &encoded {
        let proof = PrivateProof::decode(bytes).context("decoding a private proof")?;
        let verified = proof.verify(&root).map_err(|e| anyhow::anyhow!("a private proof does not verify: {e}"))?;
        verified
            .check_totals(tree.params(), tree.totals(), tree.total_blindings())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let verify_elapsed = started.elapsed();
    // The same on one thread (the range proofs one after another).
    let started = Instant::now();
    for bytes in &encoded {
        let proof = PrivateProof::decode(bytes).context("decoding a private proof")?;
        let verified =
            proof.verify_with_threads(&root, 1).map_err(|e| anyhow::anyhow!("a private proof does not verify: {e}"))?;
        verified
            .check_totals(tree.params(), tree.totals(), tree.total_blindings())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let verify_1thread = started.elapsed();
    let proof_gen_ms = round3(ms(gen_elapsed, sample.len()));
    let verify_parallel_ms = round3(ms(verify_elapsed, sample.len()));
    let verify_ms = round3(ms(verify_1thread, sample.len()));
    println!(
        "  one proof: generated in {proof_gen_ms} ms on one thread; decoded and verified in {verify_ms} ms on one \
         thread, {verify_parallel_ms} ms with its range proofs on up to {threads} threads ({} samples, {} bytes \
         each on average)",
        sample.len(),
        grouped(proof_bytes)
    );
    let peak = peak_rss_bytes();
    println!("  peak resident memory {} MiB", grouped(peak >> 20));

    println!(
        "{}",
        json!({
            "bench": "reserves",
            "users": args.users,
            "assets": args.assets,
            "private": true,
            "threads": threads,
            "height": height,
            "build_s": round3(build.as_secs_f64()),
            "all_proofs_s": all_proofs_s,
            "all_proofs_extrapolated": true,
            "all_proofs_sample": sample.len(),
            "proof_gen_ms": proof_gen_ms,
            "proof_bytes": proof_bytes,
            "verify_ms": verify_ms,
            "verify_parallel_ms": verify_parallel_ms,
            "generators_ms": round3(ms(gens, 1)),
            "peak_rss_bytes": peak,
        })
    );
    Ok(())
}

/// Seconds for `all` proofs at the rate `sample` proofs took `elapsed`.
#[allow(clippy::float_arithmetic)]
fn extrapolate(elapsed: Duration, sample: usize, all: usize) -> f64 {
    round3(elapsed.as_secs_f64() * all as f64 / sample.max(1) as f64)
}
