//! `rampart bench custody`: a 5-custodian distributed key generation with the confirmation round, a 3-of-5 signing
//! ceremony for a Taproot spend (commitments, signature shares each checked against its custodian's verifying share,
//! aggregation), Bitcoin Core's interpreter on the result, and the hot/cold rebalancing simulation. Compute only: no
//! human waits and no network.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use anyhow::{Context, anyhow, ensure};
use bitcoin::absolute::LockTime;
use bitcoin::hashes::Hash;
use bitcoin::transaction::Version;
use bitcoin::{Amount, OutPoint, Sequence, Transaction, TxIn, TxOut, Txid, Witness};
use clap::Args;
use rampart_custody::dkg::Participant;
use rampart_custody::frost::Identifier;
use rampart_custody::frost::keys::{KeyPackage, PublicKeyPackage};
use rampart_custody::{
    SigningRound, attach_key_spend_signatures, custodian_commit, custodian_sign, key_spend_sighashes, output_script,
    verify_spend,
};

/// Flags of `rampart bench custody`.
#[derive(Args, Debug)]
pub struct CustodyArgs {
    /// Key generations to time.
    #[arg(long, default_value_t = 20)]
    dkgs: usize,
    /// Signing ceremonies to time (each a one-input spend).
    #[arg(long, default_value_t = 200)]
    signs: usize,
    /// Events of the rebalancing simulation.
    #[arg(long, default_value_t = 100_000)]
    simulated_events: usize,
}

fn dkg() -> anyhow::Result<(BTreeMap<Identifier, KeyPackage>, PublicKeyPackage)> {
    let ids: Vec<Identifier> =
        (1..=5u16).map(|i| Identifier::try_from(i).map_err(|e| anyhow!("{e}"))).collect::<Result<_, _>>()?;
    let identities: BTreeMap<Identifier, ed25519_dalek::SigningKey> = ids
        .iter()
        .map(|id| {
            let mut seed = [0u8; 32];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
            (*id, ed25519_dalek::SigningKey::from_bytes(&seed))
        })
        .collect();
    let mut people = BTreeMap::new();
    let mut round1 = BTreeMap::new();
    for id in &ids {
        let (p, package) = Participant::start(*id, 5, 3).map_err(|e| anyhow!("{e}"))?;
        people.insert(*id, p);
        round1.insert(*id, package);
    }
    let mut inbox: BTreeMap<Identifier, BTreeMap<Identifier, _>> = BTreeMap::new();
    for (id, p) in people.iter_mut() {
        let others = round1.iter().filter(|(k, _)| *k != id).map(|(k, v)| (*k, v.clone())).collect();
        for (to, package) in p.round2(others).map_err(|e| anyhow!("{e}"))? {
            inbox.entry(to).or_default().insert(*id, package);
        }
    }
    let mut confirmations = Vec::new();
    for (id, p) in people.iter_mut() {
        confirmations.push(p.round3(&inbox[id], &identities[id]).map_err(|e| anyhow!("{e}"))?);
    }
    let public_identities = identities.iter().map(|(k, v)| (*k, v.verifying_key())).collect();
    let mut shares = BTreeMap::new();
    let mut public = None;
    for (id, p) in people {
        let (key, pkp) = p.finish(&confirmations, &public_identities).map_err(|e| anyhow!("{e}"))?;
        shares.insert(id, key);
        public = Some(pkp);
    }
    Ok((shares, public.context("a key")?))
}

fn percentile(sorted: &[f64], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

#[allow(clippy::float_arithmetic)]
pub async fn run(args: CustodyArgs) -> anyhow::Result<()> {
    ensure!(args.dkgs > 0 && args.signs > 0, "time at least one key generation and one signature");
    println!("custody benchmark: FROST 3-of-5 over secp256k1 (Taproot), compute only, this machine's cores");
    let mut dkg_ms = Vec::new();
    let mut wallet = None;
    for _ in 0..args.dkgs {
        let started = Instant::now();
        wallet = Some(dkg()?);
        dkg_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let (shares, public) = wallet.context("a wallet")?;
    let script = output_script(&public).map_err(|e| anyhow!("{e}"))?;
    let spent = vec![TxOut { value: Amount::from_sat(100_000_000), script_pubkey: script.clone() }];
    let signers: BTreeSet<Identifier> = shares.keys().copied().take(3).collect();
    let (mut sign_ms, mut verify_ms, mut both_ms) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..args.signs {
        let mut tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint {
                    txid: Txid::from_byte_array([u8::try_from(n % 251).unwrap_or(1); 32]),
                    vout: 0,
                },
                script_sig: bitcoin::ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            }],
            output: vec![TxOut { value: Amount::from_sat(99_990_000), script_pubkey: script.clone() }],
        };
        let started = Instant::now();
        let sighash = key_spend_sighashes(&tx, &spent).map_err(|e| anyhow!("{e}"))?[0];
        let mut round = SigningRound::new(public.clone(), &sighash, signers.clone()).map_err(|e| anyhow!("{e}"))?;
        let mut nonces = BTreeMap::new();
        for id in &signers {
            let (nonce, commitments) = custodian_commit(&shares[id]);
            round.commit(*id, commitments).map_err(|e| anyhow!("{e}"))?;
            nonces.insert(*id, nonce);
        }
        let package = round.package().map_err(|e| anyhow!("{e}"))?.clone();
        for (id, nonce) in nonces {
            let share = custodian_sign(&package, nonce, &shares[&id]).map_err(|e| anyhow!("{e}"))?;
            round.share(id, share).map_err(|e| anyhow!("{e}"))?;
        }
        let signature = round.aggregate().map_err(|e| anyhow!("{e}"))?;
        attach_key_spend_signatures(&mut tx, &[signature]).map_err(|e| anyhow!("{e}"))?;
        let signed = started.elapsed();
        let check = Instant::now();
        verify_spend(&tx, &spent).map_err(|e| anyhow!("{e}"))?;
        let verified = check.elapsed();
        sign_ms.push(signed.as_secs_f64() * 1e3);
        verify_ms.push(verified.as_secs_f64() * 1e3);
        both_ms.push((signed + verified).as_secs_f64() * 1e3);
    }
    for v in [&mut dkg_ms, &mut sign_ms, &mut verify_ms, &mut both_ms] {
        v.sort_by(f64::total_cmp);
    }
    let simulation = rampart_custody::policy::simulate(
        args.simulated_events,
        42,
        &rampart_custody::policy::RebalancePolicy::default(),
    );
    println!(
        "  DKG (5 custodians, 3 rounds + confirmations):  median {:.2} ms, p99 {:.2} ms ({} runs)",
        percentile(&dkg_ms, 50),
        percentile(&dkg_ms, 99),
        dkg_ms.len()
    );
    println!(
        "  signing ceremony (3 signers, shares checked):   median {:.3} ms, p99 {:.3} ms ({} runs)",
        percentile(&sign_ms, 50),
        percentile(&sign_ms, 99),
        sign_ms.len()
    );
    println!(
        "  Bitcoin Core's interpreter on the spend:        median {:.3} ms, p99 {:.3} ms",
        percentile(&verify_ms, 50),
        percentile(&verify_ms, 99)
    );
    println!(
        "  signature + verification:                       median {:.3} ms, p99 {:.3} ms",
        percentile(&both_ms, 50),
        percentile(&both_ms, 99)
    );
    println!(
        "  rebalancing simulation: {} events, {} sweeps, {} refills, lowest cold share {} bps, {} withdrawals not payable at once ({:.2} %)",
        simulation.events,
        simulation.sweeps,
        simulation.refills,
        simulation.min_cold_share_bps,
        simulation.unpaid_at_once,
        simulation.unpaid_at_once as f64 * 100.0 / simulation.withdrawals.max(1) as f64
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "custody",
            "dkg_ms": (percentile(&dkg_ms, 50) * 100.0).round() / 100.0,
            "dkg_p99_ms": (percentile(&dkg_ms, 99) * 100.0).round() / 100.0,
            "sign_ms": (percentile(&sign_ms, 50) * 1000.0).round() / 1000.0,
            "verify_ms": (percentile(&verify_ms, 50) * 1000.0).round() / 1000.0,
            "sign_and_verify_ms": (percentile(&both_ms, 50) * 1000.0).round() / 1000.0,
            "sign_and_verify_p99_ms": (percentile(&both_ms, 99) * 1000.0).round() / 1000.0,
            "simulated_events": simulation.events,
            "min_cold_share_bps": simulation.min_cold_share_bps,
            "unpaid_at_once": simulation.unpaid_at_once,
        })
    );
    Ok(())
}
