//! The signer and Bitcoin Core agree: on thousands of random wallets and transactions, a quorum signs, then the
//! transaction is left alone or changed after signing in one random way, and what the signer believes (valid exactly
//! when nothing changed since it signed) must be what Bitcoin Core's interpreter says, in both directions.
//!
//! Wallets are made by a trusted dealer and tweaked by hand into the form the DKG produces (the BIP-341 key-path
//! tweak applied to every share and to the public package), which is much cheaper than a DKG. A pool of
//! [`WALLETS`] of them is made once and each case picks one, so that the time goes into signing and checking.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use bitcoin::absolute::LockTime;
use bitcoin::hashes::Hash;
use bitcoin::transaction::Version;
use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use rampart_custody::frost::Identifier;
use rampart_custody::frost::keys::{self, IdentifierList, KeyPackage, PublicKeyPackage, Tweak};
use rampart_custody::{
    SigningRound, attach_key_spend_signatures, custodian_commit, custodian_sign, key_spend_sighashes, output_script,
    verify_spend,
};
use rand_core::OsRng;

/// Cases run by each of the two tests (each case a fresh transaction): 2 000 in all, in two halves so that they run
/// on two threads.
const CASES: u32 = 1_000;
/// Dealer-made wallets the cases choose from.
const WALLETS: usize = 250;

#[derive(Debug, Clone)]
enum Mutation {
    None,
    OutputAmount { output: usize, bit: u32 },
    PrevoutAmount { input: usize, bit: u32 },
    OutputScript { output: usize, seed: [u8; 32] },
    PrevoutScript { input: usize, seed: [u8; 32] },
    WitnessByte { input: usize, byte: usize, bit: u8 },
    LockTime(u32),
    Sequence { input: usize, value: u32 },
    Version,
    Outpoint { input: usize, vout: u32 },
    AddInput,
    AddOutput { seed: [u8; 32] },
    RemoveOutput,
}

impl Mutation {
    fn name(&self) -> &'static str {
        match self {
            Mutation::None => "none",
            Mutation::OutputAmount { .. } => "output amount",
            Mutation::PrevoutAmount { .. } => "spent amount",
            Mutation::OutputScript { .. } => "output script",
            Mutation::PrevoutScript { .. } => "spent script",
            Mutation::WitnessByte { .. } => "witness byte",
            Mutation::LockTime(_) => "locktime",
            Mutation::Sequence { .. } => "sequence",
            Mutation::Version => "version",
            Mutation::Outpoint { .. } => "outpoint",
            Mutation::AddInput => "added input",
            Mutation::AddOutput { .. } => "added output",
            Mutation::RemoveOutput => "removed output",
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let index = 0usize..3;
    prop_oneof![
        6 => Just(Mutation::None),
        1 => (index.clone(), 0u32..40).prop_map(|(output, bit)| Mutation::OutputAmount { output, bit }),
        1 => (index.clone(), 0u32..40).prop_map(|(input, bit)| Mutation::PrevoutAmount { input, bit }),
        1 => (index.clone(), any::<[u8; 32]>()).prop_map(|(output, seed)| Mutation::OutputScript { output, seed }),
        1 => (index.clone(), any::<[u8; 32]>()).prop_map(|(input, seed)| Mutation::PrevoutScript { input, seed }),
        1 => (index.clone(), 0usize..64, 0u8..8).prop_map(|(input, byte, bit)| Mutation::WitnessByte { input, byte, bit }),
        1 => any::<u32>().prop_map(Mutation::LockTime),
        1 => (index.clone(), any::<u32>()).prop_map(|(input, value)| Mutation::Sequence { input, value }),
        1 => Just(Mutation::Version),
        1 => (index, any::<u32>()).prop_map(|(input, vout)| Mutation::Outpoint { input, vout }),
        1 => Just(Mutation::AddInput),
        1 => any::<[u8; 32]>().prop_map(|seed| Mutation::AddOutput { seed }),
        1 => Just(Mutation::RemoveOutput),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    /// Spent amounts, one per input (1 to 3).
    inputs: Vec<u64>,
    /// Per output: kind of script (0 the wallet's own, 1 P2WPKH, 2 P2WSH, 3 OP_RETURN), its seed, and a share of
    /// what the inputs hold, in basis points of an even split.
    outputs: Vec<(u8, [u8; 32], u16)>,
    txid_seed: [u8; 32],
    lock_time: u32,
    version_two: bool,
    sequence: u32,
    /// Which of the ten 3-subsets of five custodians signs.
    quorum: usize,
    /// Which wallet of the pool.
    wallet: usize,
    mutation: Mutation,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(330u64..2_100_000_000_000, 1..=3),
        prop::collection::vec((0u8..4, any::<[u8; 32]>(), 0u16..=10_000), 1..=3),
        any::<[u8; 32]>(),
        any::<u32>(),
        any::<bool>(),
        any::<u32>(),
        (0usize..10, 0..WALLETS),
        mutation(),
    )
        .prop_map(|(inputs, outputs, txid_seed, lock_time, version_two, sequence, (quorum, wallet), mutation)| {
            Case { inputs, outputs, txid_seed, lock_time, version_two, sequence, quorum, wallet, mutation }
        })
}

/// A 3-of-5 key in the DKG's form, made by a dealer.
fn wallet() -> (BTreeMap<Identifier, KeyPackage>, PublicKeyPackage) {
    let (secret_shares, public) = keys::generate_with_dealer(5, 3, IdentifierList::Default, OsRng).unwrap();
    let shares = secret_shares
        .into_iter()
        .map(|(id, share)| (id, KeyPackage::try_from(share).unwrap().tweak::<&[u8]>(None)))
        .collect();
    (shares, public.tweak::<&[u8]>(None))
}

fn script(kind: u8, seed: &[u8; 32], wallet: &ScriptBuf) -> ScriptBuf {
    match kind {
        0 => wallet.clone(),
        1 => ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array(seed[..20].try_into().unwrap())),
        2 => ScriptBuf::new_p2wsh(&bitcoin::WScriptHash::from_byte_array(*seed)),
        _ => ScriptBuf::new_op_return(<&bitcoin::script::PushBytes>::try_from(&seed[..]).unwrap()),
    }
}

/// A script that is not `old`: P2WSH of the seed, or of its complement if that happens to be `old`.
fn other_script(seed: &[u8; 32], old: &ScriptBuf) -> ScriptBuf {
    let candidate = ScriptBuf::new_p2wsh(&bitcoin::WScriptHash::from_byte_array(*seed));
    if &candidate != old {
        candidate
    } else {
        ScriptBuf::new_p2wsh(&bitcoin::WScriptHash::from_byte_array(seed.map(|b| !b)))
    }
}

fn quorums() -> Vec<[u16; 3]> {
    let mut all = Vec::new();
    for a in 1..=5 {
        for b in a + 1..=5 {
            for c in b + 1..=5 {
                all.push([a, b, c]);
            }
        }
    }
    all
}

/// Signs every input with the quorum through the server's signing round (each share checked, the aggregate verified
/// under the group key): the signer's own view that the signatures are good for this transaction.
fn sign(
    shares: &BTreeMap<Identifier, KeyPackage>,
    public: &PublicKeyPackage,
    signers: &[Identifier],
    tx: &mut Transaction,
    spent: &[TxOut],
) {
    let mut signatures = Vec::new();
    for message in key_spend_sighashes(tx, spent).unwrap() {
        let mut round =
            SigningRound::new(public.clone(), &message, signers.iter().copied().collect::<BTreeSet<_>>()).unwrap();
        let mut nonces = BTreeMap::new();
        for s in signers {
            let (secret, commitments) = custodian_commit(&shares[s]);
            nonces.insert(*s, secret);
            round.commit(*s, commitments).unwrap();
        }
        let package = round.package().unwrap().clone();
        for s in signers {
            round.share(*s, custodian_sign(&package, nonces.remove(s).unwrap(), &shares[s]).unwrap()).unwrap();
        }
        signatures.push(round.aggregate().unwrap());
    }
    attach_key_spend_signatures(tx, &signatures).unwrap();
}

fn flip(value: Amount, bit: u32) -> Amount {
    Amount::from_sat(value.to_sat() ^ (1u64 << bit))
}

/// Applies the mutation; false when it would change nothing (then the case counts as unmutated).
fn mutate(m: &Mutation, tx: &mut Transaction, spent: &mut Vec<TxOut>, wallet: &ScriptBuf) -> bool {
    let inputs = tx.input.len();
    let outputs = tx.output.len();
    match m {
        Mutation::None => return false,
        Mutation::OutputAmount { output, bit } => {
            let o = &mut tx.output[output % outputs];
            o.value = flip(o.value, *bit);
        }
        Mutation::PrevoutAmount { input, bit } => {
            let o = &mut spent[input % inputs];
            o.value = flip(o.value, *bit);
        }
        Mutation::OutputScript { output, seed } => {
            let o = &mut tx.output[output % outputs];
            o.script_pubkey = other_script(seed, &o.script_pubkey);
        }
        Mutation::PrevoutScript { input, seed } => {
            let o = &mut spent[input % inputs];
            o.script_pubkey = other_script(seed, &o.script_pubkey);
        }
        Mutation::WitnessByte { input, byte, bit } => {
            let i = &mut tx.input[input % inputs];
            let mut signature = i.witness.nth(0).unwrap().to_vec();
            signature[*byte] ^= 1 << bit;
            i.witness = Witness::from_slice(&[signature]);
        }
        Mutation::LockTime(value) => {
            if tx.lock_time.to_consensus_u32() == *value {
                return false;
            }
            tx.lock_time = LockTime::from_consensus(*value);
        }
        Mutation::Sequence { input, value } => {
            let i = &mut tx.input[input % inputs];
            if i.sequence.0 == *value {
                return false;
            }
            i.sequence = Sequence(*value);
        }
        Mutation::Version => {
            tx.version = if tx.version == Version::TWO { Version::ONE } else { Version::TWO };
        }
        Mutation::Outpoint { input, vout } => {
            let i = &mut tx.input[input % inputs];
            if i.previous_output.vout == *vout {
                return false;
            }
            i.previous_output.vout = *vout;
        }
        Mutation::AddInput => {
            // Another coin of the same wallet, carrying a copy of the first input's signature.
            let witness = tx.input[0].witness.clone();
            tx.input.push(TxIn {
                previous_output: OutPoint { txid: Txid::from_byte_array([0xEE; 32]), vout: 0 },
                script_sig: ScriptBuf::new(),
                sequence: Sequence::MAX,
                witness,
            });
            spent.push(TxOut { value: Amount::from_sat(10_000), script_pubkey: wallet.clone() });
        }
        Mutation::AddOutput { seed } => {
            tx.output.push(TxOut { value: Amount::ZERO, script_pubkey: script(1, seed, wallet) });
        }
        Mutation::RemoveOutput => {
            tx.output.pop();
        }
    }
    true
}

#[test]
fn the_signer_and_bitcoin_core_never_disagree_first_half() {
    check(1);
}

#[test]
fn the_signer_and_bitcoin_core_never_disagree_second_half() {
    check(2);
}

/// Runs [`CASES`] cases from the seeded case generator `seed` (the transactions replay; the wallets are fresh).
fn check(seed: u8) {
    let all_quorums = quorums();
    let wallets: Vec<_> = (0..WALLETS).map(|_| wallet()).collect();
    // Per mutation kind: cases, and how many of them Bitcoin Core accepted.
    let tally: RefCell<BTreeMap<&'static str, (u32, u32)>> = RefCell::new(BTreeMap::new());
    let disagreements = RefCell::new(0u32);
    let config = Config { cases: CASES, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]));
    let result = runner.run(&case(), |c| {
        let (shares, public) = &wallets[c.wallet];
        let wallet = output_script(public).unwrap();
        let spent: Vec<TxOut> =
            c.inputs.iter().map(|v| TxOut { value: Amount::from_sat(*v), script_pubkey: wallet.clone() }).collect();
        let held: u64 = c.inputs.iter().sum();
        let even = held / c.outputs.len() as u64;
        let output = c
            .outputs
            .iter()
            .map(|(kind, seed, share)| TxOut {
                value: Amount::from_sat(if *kind == 3 { 0 } else { even / 10_000 * u64::from(*share) }),
                script_pubkey: script(*kind, seed, &wallet),
            })
            .collect();
        let input = (0..c.inputs.len())
            .map(|i| TxIn {
                previous_output: OutPoint { txid: Txid::from_byte_array(c.txid_seed), vout: i as u32 },
                script_sig: ScriptBuf::new(),
                sequence: Sequence(c.sequence),
                witness: Witness::new(),
            })
            .collect();
        let mut tx = Transaction {
            version: if c.version_two { Version::TWO } else { Version::ONE },
            lock_time: LockTime::from_consensus(c.lock_time),
            input,
            output,
        };
        let signers: Vec<Identifier> =
            all_quorums[c.quorum].iter().map(|i| Identifier::try_from(*i).unwrap()).collect();
        sign(shares, public, &signers, &mut tx, &spent);
        let mut spent = spent;
        let changed = mutate(&c.mutation, &mut tx, &mut spent, &wallet);
        let signer_believes_valid = !changed;
        let accepted = verify_spend(&tx, &spent).is_ok();
        let name = if changed { c.mutation.name() } else { "none" };
        let mut tally = tally.borrow_mut();
        let entry = tally.entry(name).or_default();
        entry.0 += 1;
        entry.1 += u32::from(accepted);
        if signer_believes_valid != accepted {
            *disagreements.borrow_mut() += 1;
        }
        prop_assert_eq!(signer_believes_valid, accepted, "mutation {:?} of {:?}", c.mutation, tx);
        Ok(())
    });
    let tally = tally.into_inner();
    let cases: u32 = tally.values().map(|(n, _)| n).sum();
    eprintln!(
        "signer vs Bitcoin Core (seed {seed}): {cases} cases, {} disagreements; per mutation (cases, accepted): \
         {tally:?}",
        disagreements.into_inner()
    );
    result.unwrap();
    assert!(cases >= CASES, "{cases} cases");
    assert!(tally.get("none").is_some_and(|(n, accepted)| *n > 150 && n == accepted));
    assert!(tally.iter().filter(|(k, _)| **k != "none").all(|(_, (_, accepted))| *accepted == 0));
    assert!(tally.len() >= 12, "every kind of mutation was tried: {tally:?}");
}
