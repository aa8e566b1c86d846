//! A 3-of-5 threshold key made by a distributed key generation among five custodians (simulated in one process),
//! Taproot spends signed by every quorum and accepted by Bitcoin Core's interpreter, and the failures that must be
//! caught: too few signers, a cheating custodian (named), a share from before a refresh, a wrong spent amount.

use std::collections::{BTreeMap, BTreeSet};

use bitcoin::absolute::LockTime;
use bitcoin::hashes::Hash;
use bitcoin::transaction::Version;
use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness};
use rampart_custody::frost::keys::{KeyPackage, PublicKeyPackage, dkg, refresh};
use rampart_custody::frost::{self, Identifier};
use rampart_custody::{
    CustodyError, SigningRound, attach_key_spend_signatures, custodian_commit, custodian_sign, key_spend_sighashes,
    output_script, verify_spend,
};
use rand_core::OsRng;

type Shares = BTreeMap<Identifier, KeyPackage>;

fn ids(n: u16) -> Vec<Identifier> {
    (1..=n).map(|i| Identifier::try_from(i).unwrap()).collect()
}

/// The three rounds of the DKG, each participant computing only from what it received; every participant must end
/// with the same public key package (what the confirmation round will sign).
fn dkg(n: u16, t: u16) -> (Shares, PublicKeyPackage) {
    let ids = ids(n);
    let mut secrets1 = BTreeMap::new();
    let mut broadcast = BTreeMap::new();
    for &id in &ids {
        let (secret, package) = dkg::part1(id, n, t, OsRng).unwrap();
        secrets1.insert(id, secret);
        broadcast.insert(id, package);
    }
    let others = |me: Identifier| -> BTreeMap<_, _> {
        broadcast.iter().filter(|(k, _)| **k != me).map(|(k, v)| (*k, v.clone())).collect()
    };
    let mut secrets2 = BTreeMap::new();
    let mut inbox: BTreeMap<Identifier, BTreeMap<Identifier, dkg::round2::Package>> = BTreeMap::new();
    for &id in &ids {
        let (secret, sent) = dkg::part2(secrets1.remove(&id).unwrap(), &others(id)).unwrap();
        secrets2.insert(id, secret);
        for (to, package) in sent {
            inbox.entry(to).or_default().insert(id, package);
        }
    }
    let mut shares = BTreeMap::new();
    let mut public: Option<PublicKeyPackage> = None;
    for &id in &ids {
        let (key, group) = dkg::part3(&secrets2[&id], &others(id), &inbox[&id]).unwrap();
        if let Some(seen) = &public {
            assert_eq!(seen, &group, "every participant derives the same group key and verifying shares");
        }
        public = Some(group);
        shares.insert(id, key);
    }
    (shares, public.unwrap())
}

/// A refresh among `members`: new shares of the same key.
fn refresh(shares: &Shares, public: &PublicKeyPackage, members: &[Identifier], t: u16) -> (Shares, PublicKeyPackage) {
    let n = u16::try_from(members.len()).unwrap();
    let mut secrets1 = BTreeMap::new();
    let mut broadcast = BTreeMap::new();
    for &id in members {
        let (secret, package) = refresh::refresh_dkg_part1(id, n, t, OsRng).unwrap();
        secrets1.insert(id, secret);
        broadcast.insert(id, package);
    }
    let others = |me: Identifier| -> BTreeMap<_, _> {
        broadcast.iter().filter(|(k, _)| **k != me).map(|(k, v)| (*k, v.clone())).collect()
    };
    let mut secrets2 = BTreeMap::new();
    let mut inbox: BTreeMap<Identifier, BTreeMap<Identifier, dkg::round2::Package>> = BTreeMap::new();
    for &id in members {
        let (secret, sent) = refresh::refresh_dkg_part2(secrets1.remove(&id).unwrap(), &others(id)).unwrap();
        secrets2.insert(id, secret);
        for (to, package) in sent {
            inbox.entry(to).or_default().insert(id, package);
        }
    }
    let mut new_shares = BTreeMap::new();
    let mut new_public = None;
    for &id in members {
        let (key, group) =
            refresh::refresh_dkg_shares(&secrets2[&id], &others(id), &inbox[&id], public.clone(), shares[&id].clone())
                .unwrap();
        new_shares.insert(id, key);
        new_public = Some(group);
    }
    (new_shares, new_public.unwrap())
}

/// An unsigned transaction spending `inputs` outputs of `script` (fake funding transactions) to one output.
fn spend(script: &ScriptBuf, inputs: usize) -> (Transaction, Vec<TxOut>) {
    let spent: Vec<TxOut> = (0..inputs)
        .map(|i| TxOut { value: Amount::from_sat(100_000 + i as u64), script_pubkey: script.clone() })
        .collect();
    let input = (0..inputs)
        .map(|i| TxIn {
            previous_output: OutPoint { txid: Txid::from_byte_array([7; 32]), vout: u32::try_from(i).unwrap() },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        })
        .collect();
    let tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input,
        output: vec![TxOut { value: Amount::from_sat(90_000), script_pubkey: script.clone() }],
    };
    (tx, spent)
}

/// Runs both rounds for one message with `signers`; `tamper` flips a bit of that signer's share.
fn sign(
    shares: &Shares,
    public: &PublicKeyPackage,
    signers: &[Identifier],
    message: &[u8; 32],
    tamper: Option<Identifier>,
) -> Result<[u8; 64], CustodyError> {
    let mut round = SigningRound::new(public.clone(), message, signers.iter().copied().collect::<BTreeSet<_>>())?;
    let mut nonces = BTreeMap::new();
    for id in signers {
        let (secret, commitments) = custodian_commit(&shares[id]);
        nonces.insert(*id, secret);
        round.commit(*id, commitments)?;
    }
    let package = round.package()?.clone();
    for id in signers {
        let share = custodian_sign(&package, nonces.remove(id).unwrap(), &shares[id])?;
        let share = if tamper == Some(*id) {
            let mut bytes = share.serialize();
            bytes[31] ^= 1;
            frost::round2::SignatureShare::deserialize(&bytes).unwrap()
        } else {
            share
        };
        round.share(*id, share)?;
    }
    round.aggregate()
}

fn sign_spend(
    shares: &Shares,
    public: &PublicKeyPackage,
    signers: &[Identifier],
    tx: &mut Transaction,
    spent: &[TxOut],
) -> Result<(), CustodyError> {
    let signatures = key_spend_sighashes(tx, spent)?
        .iter()
        .map(|m| sign(shares, public, signers, m, None))
        .collect::<Result<Vec<_>, _>>()?;
    attach_key_spend_signatures(tx, &signatures)
}

#[test]
fn every_quorum_of_three_signs_a_taproot_spend_that_bitcoin_core_accepts() {
    let (shares, public) = dkg(5, 3);
    let script = output_script(&public).unwrap();
    assert!(script.is_p2tr());
    let all = ids(5);
    let mut quorums = 0;
    for a in 0..5 {
        for b in a + 1..5 {
            for c in b + 1..5 {
                let (mut tx, spent) = spend(&script, 2);
                sign_spend(&shares, &public, &[all[a], all[b], all[c]], &mut tx, &spent).unwrap();
                verify_spend(&tx, &spent).unwrap();
                quorums += 1;
            }
        }
    }
    assert_eq!(quorums, 10);

    // The interpreter checks what the signatures commit to: a different spent amount, or no signature, fails.
    let (mut tx, mut spent) = spend(&script, 1);
    sign_spend(&shares, &public, &all[..3], &mut tx, &spent).unwrap();
    spent[0].value = Amount::from_sat(100_001);
    assert!(matches!(verify_spend(&tx, &spent), Err(CustodyError::Consensus { input: 0, .. })));
    let (unsigned, spent) = spend(&script, 1);
    assert!(matches!(verify_spend(&unsigned, &spent), Err(CustodyError::Consensus { .. })));
    // A script built by tweaking the output key again (`new_p2tr`) is not the one the quorum can spend.
    let secp = bitcoin::secp256k1::Secp256k1::verification_only();
    let twice = ScriptBuf::new_p2tr(&secp, rampart_custody::taproot::output_key(&public).unwrap(), None);
    let (mut tx, spent) = spend(&twice, 1);
    sign_spend(&shares, &public, &all[..3], &mut tx, &spent).unwrap();
    assert!(verify_spend(&tx, &spent).is_err());
}

#[test]
fn too_few_signers_strangers_and_cheaters_are_refused_by_name() {
    let (shares, public) = dkg(5, 3);
    let all = ids(5);
    let message = [9u8; 32];
    assert!(matches!(sign(&shares, &public, &all[..2], &message, None), Err(CustodyError::Frost(_))));
    let stranger = Identifier::try_from(9u16).unwrap();
    assert_eq!(
        SigningRound::new(public.clone(), &message, [all[0], all[1], stranger].into()).err(),
        Some(CustodyError::UnexpectedCustodian("9".into()))
    );
    assert_eq!(
        sign(&shares, &public, &[all[0], all[2], all[4]], &message, Some(all[2])),
        Err(CustodyError::BadShare("3".into()))
    );
    // Nothing is aggregated before every share is in.
    let mut round = SigningRound::new(public.clone(), &message, all[..3].iter().copied().collect()).unwrap();
    assert!(matches!(round.package(), Err(CustodyError::NotReady(_))));
    let (_, commitments) = custodian_commit(&shares[&all[0]]);
    round.commit(all[0], commitments).unwrap();
    assert_eq!(round.commit(all[0], commitments), Err(CustodyError::UnexpectedCustodian("1".into())));
    assert!(matches!(round.aggregate(), Err(CustodyError::NotReady(_))));
}

#[test]
fn after_a_refresh_the_key_is_the_same_and_old_shares_are_refused() {
    let (old, public) = dkg(5, 3);
    let all = ids(5);
    let (new, refreshed) = refresh(&old, &public, &all, 3);
    assert_eq!(refreshed.verifying_key(), public.verifying_key(), "the same key, so the same address");
    let script = output_script(&refreshed).unwrap();
    assert_eq!(script, output_script(&public).unwrap());
    let (mut tx, spent) = spend(&script, 1);
    sign_spend(&new, &refreshed, &all[2..], &mut tx, &spent).unwrap();
    verify_spend(&tx, &spent).unwrap();
    // One old share among new ones is named; even a whole quorum of old shares (whose aggregate would still be a
    // valid signature of the same key) is refused share by share against the current verifying shares.
    let mut mixed = new.clone();
    mixed.insert(all[0], old[&all[0]].clone());
    let message = [5u8; 32];
    assert_eq!(sign(&mixed, &refreshed, &all[..3], &message, None), Err(CustodyError::BadShare("1".into())));
    assert!(matches!(sign(&old, &refreshed, &all[..3], &message, None), Err(CustodyError::BadShare(_))));
}

#[test]
fn three_custodians_rebuild_a_lost_share_and_a_wrong_rebuild_is_refused() {
    use rampart_custody::repair::{helper_deltas, helper_sigma, rebuild};
    let (shares, public) = dkg(5, 3);
    let all = ids(5);
    let lost = all[1];
    let helpers = [all[0], all[2], all[4]];
    let mut inbox: BTreeMap<Identifier, Vec<_>> = BTreeMap::new();
    for helper in &helpers {
        for (to, delta) in helper_deltas(&helpers, &shares[helper], lost).unwrap() {
            inbox.entry(to).or_default().push(delta);
        }
    }
    let sigmas: Vec<_> = helpers.iter().map(|h| helper_sigma(&inbox[h])).collect();
    let rebuilt = rebuild(&sigmas, lost, &public).unwrap();
    assert_eq!(rebuilt.signing_share(), shares[&lost].signing_share(), "the same share, rebuilt");
    let mut after = shares.clone();
    after.insert(lost, rebuilt);
    let (mut tx, spent) = spend(&output_script(&public).unwrap(), 1);
    sign_spend(&after, &public, &[lost, all[3], all[4]], &mut tx, &spent).unwrap();
    verify_spend(&tx, &spent).unwrap();
    // With one helper's value missing, what comes out is not the share the group knows: refused.
    assert!(matches!(rebuild(&sigmas[..2], lost, &public), Err(CustodyError::BadShare(_))));
}

#[test]
fn a_custodian_is_removed_by_a_refresh_among_the_others() {
    let (shares, public) = dkg(5, 3);
    let all = ids(5);
    let (remaining, smaller) = refresh(&shares, &public, &all[..4], 3);
    assert_eq!(smaller.verifying_key(), public.verifying_key(), "the same key and address");
    assert!(!smaller.verifying_shares().contains_key(&all[4]));
    let (mut tx, spent) = spend(&output_script(&smaller).unwrap(), 1);
    sign_spend(&remaining, &smaller, &all[1..4], &mut tx, &spent).unwrap();
    verify_spend(&tx, &spent).unwrap();
    // The removed custodian's old share no longer counts, alone or with two others.
    let mut with_removed = remaining.clone();
    with_removed.insert(all[4], shares[&all[4]].clone());
    assert!(sign(&with_removed, &smaller, &[all[0], all[1], all[4]], &[1; 32], None).is_err());
}

#[test]
fn the_development_chain_validates_confirms_and_reorganises() {
    use rampart_custody::devchain::{ChainRejection, DevChain};
    let (shares, public) = dkg(5, 3);
    let all = ids(5);
    let script = output_script(&public).unwrap();
    let mut chain = DevChain::new(1);
    let time = 1_700_000_000;
    let coin = chain.faucet(script.clone(), Amount::from_sat(100_000)).unwrap();
    // The faucet's coin is spendable once a block confirms it.
    assert!(chain.utxo(&coin).is_none() && chain.in_mempool(&coin.txid));
    chain.mine(time);
    assert_eq!(chain.confirmations(&coin.txid), 1);
    let spent = vec![chain.utxo(&coin).unwrap().clone()];
    let unsigned = |fee: u64| Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: coin,
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        }],
        output: vec![TxOut { value: Amount::from_sat(100_000 - fee), script_pubkey: script.clone() }],
    };
    // Unsigned, underpaying (below 1 sat/vB) and overspending transactions are refused; a signed one is accepted once.
    assert!(matches!(chain.submit(unsigned(1_000)), Err(ChainRejection::Script(_))));
    let mut cheap = unsigned(100);
    sign_spend(&shares, &public, &all[..3], &mut cheap, &spent).unwrap();
    let vsize = cheap.vsize() as u64;
    assert!(vsize > 100);
    assert_eq!(chain.submit(cheap), Err(ChainRejection::FeeTooLow { fee: 100, min: vsize }));
    let mut tx = unsigned(1_000);
    sign_spend(&shares, &public, &all[1..4], &mut tx, &spent).unwrap();
    let txid = chain.submit(tx.clone()).unwrap();
    assert_eq!(chain.submit(tx.clone()), Err(ChainRejection::Duplicate));
    // A second spend of the same coin conflicts in the mempool, and is missing once the first is mined.
    // (It pays a little more, but not enough to replace the first: BIP-125 asks for the first's fee plus its own relay.)
    let mut double = unsigned(1_050);
    sign_spend(&shares, &public, &all[2..], &mut double, &spent).unwrap();
    assert!(matches!(chain.submit(double.clone()), Err(ChainRejection::ReplacementFeeTooLow { fee: 1_050, .. })));
    assert!(chain.in_mempool(&txid) && chain.confirmations(&txid) == 0);
    chain.mine(time + 1);
    chain.mine(time + 2);
    assert_eq!(chain.confirmations(&txid), 2);
    assert_eq!(chain.submit(double), Err(ChainRejection::MissingInput(0)));
    // A reorganisation of both blocks returns the transaction to the mempool (the longer branch is empty); mined
    // again, it confirms again.
    let (height, tip) = chain.tip();
    assert!(chain.reorg(2, &[], time + 3).unwrap().is_empty(), "nothing dropped");
    assert_eq!(chain.height(), height + 1);
    assert_eq!(chain.height_of(&tip), None, "the old tip is no longer in the chain");
    assert_eq!(chain.confirmations(&txid), 0);
    assert!(chain.in_mempool(&txid));
    chain.mine(time + 4);
    assert_eq!(chain.confirmations(&txid), 1);
}

#[test]
fn a_custodian_sees_destinations_change_and_fee_computed_from_the_transaction() {
    use rampart_custody::summary::describe;
    let (_, public) = dkg(5, 3);
    let wallet = output_script(&public).unwrap();
    let (mut tx, spent) = spend(&wallet, 2);
    // Pay 150,000 sat to someone else, 40,000 back to the wallet; the inputs hold 200,001.
    let elsewhere = ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([3; 20]));
    tx.output = vec![
        TxOut { value: Amount::from_sat(150_000), script_pubkey: elsewhere },
        TxOut { value: Amount::from_sat(40_000), script_pubkey: wallet.clone() },
    ];
    let summary = describe(&tx, &spent, &wallet, bitcoin::Network::Regtest).unwrap();
    assert_eq!(summary.inputs_sat, 200_001);
    assert_eq!(summary.fee_sat, 10_001);
    assert_eq!(summary.destinations.len(), 2);
    assert!(summary.destinations[0].address.starts_with("bcrt1q") && !summary.destinations[0].change);
    assert!(summary.destinations[1].address.starts_with("bcrt1p") && summary.destinations[1].change);
    // Two key-path inputs and two outputs weigh about 180 vbytes once signed.
    assert!((50..=60).contains(&summary.fee_rate_sat_vb), "{}", summary.fee_rate_sat_vb);
    // An overspend is not described as a spend.
    tx.output[0].value = Amount::from_sat(250_000);
    assert!(describe(&tx, &spent, &wallet, bitcoin::Network::Regtest).is_err());
}
