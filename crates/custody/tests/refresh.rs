//! Share refresh as a ceremony among custodians, each holding only its own state, with the confirmation round: the
//! key (and so the address) stays, new shares sign Taproot spends that Bitcoin Core's interpreter accepts, old shares
//! are refused one by one, a custodian is removed by a refresh among the others, and a relay that shows one
//! participant a different round-1 package ends the refresh for everyone.

use std::collections::{BTreeMap, BTreeSet};

use bitcoin::absolute::LockTime;
use bitcoin::hashes::Hash;
use bitcoin::transaction::Version;
use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rampart_custody::frost::Identifier;
use rampart_custody::frost::keys::dkg::{round1, round2};
use rampart_custody::frost::keys::{KeyPackage, PublicKeyPackage};
use rampart_custody::{
    CeremonyKind, Confirmation, CustodyError, Participant, RefreshParticipant, SigningRound,
    attach_key_spend_signatures, custodian_commit, custodian_sign, key_spend_sighashes, output_script, verify_spend,
};
use rand_core::{OsRng, RngCore};

type Shares = BTreeMap<Identifier, KeyPackage>;

fn id(i: u16) -> Identifier {
    Identifier::try_from(i).unwrap()
}

fn identity_key() -> SigningKey {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    SigningKey::from_bytes(&seed)
}

/// Five custodians' identity keys, by identifier.
struct Custodians {
    keys: BTreeMap<Identifier, SigningKey>,
}

impl Custodians {
    fn new(n: u16) -> Custodians {
        Custodians { keys: (1..=n).map(|i| (id(i), identity_key())).collect() }
    }

    fn public(&self, members: &[Identifier]) -> BTreeMap<Identifier, VerifyingKey> {
        members.iter().map(|m| (*m, self.keys[m].verifying_key())).collect()
    }
}

/// Routes round-2 packages to their recipients.
fn deliver<P>(
    outgoing: BTreeMap<Identifier, BTreeMap<Identifier, P>>,
) -> BTreeMap<Identifier, BTreeMap<Identifier, P>> {
    let mut inbox: BTreeMap<Identifier, BTreeMap<Identifier, P>> = BTreeMap::new();
    for (from, packages) in outgoing {
        for (to, package) in packages {
            inbox.entry(to).or_default().insert(from, package);
        }
    }
    inbox
}

/// The key generation with every custodian's `dkg::Participant`, confirmation round included.
fn dkg(custodians: &Custodians, n: u16, t: u16) -> (Shares, PublicKeyPackage) {
    let members: Vec<Identifier> = (1..=n).map(id).collect();
    let mut participants = BTreeMap::new();
    let mut broadcast = BTreeMap::new();
    for &m in &members {
        let (p, package) = Participant::start(m, n, t).unwrap();
        participants.insert(m, p);
        broadcast.insert(m, package);
    }
    let outgoing = participants.iter_mut().map(|(m, p)| (*m, p.round2(others(&broadcast, *m)).unwrap())).collect();
    let inbox = deliver(outgoing);
    let confirmations: Vec<Confirmation> =
        participants.iter_mut().map(|(m, p)| p.round3(&inbox[m], &custodians.keys[m]).unwrap()).collect();
    let identities = custodians.public(&members);
    let mut shares = Shares::new();
    let mut public = None;
    for (m, p) in participants {
        let (key, group) = p.finish(&confirmations, &identities).unwrap();
        shares.insert(m, key);
        public = Some(group);
    }
    (shares, public.unwrap())
}

fn others<P: Clone>(all: &BTreeMap<Identifier, P>, me: Identifier) -> BTreeMap<Identifier, P> {
    all.iter().filter(|(k, _)| **k != me).map(|(k, v)| (*k, v.clone())).collect()
}

/// A refresh among `members`, up to the confirmations. `shown` lets the relay change what one participant receives
/// in round 1.
struct Refresh {
    participants: BTreeMap<Identifier, RefreshParticipant>,
    confirmations: BTreeMap<Identifier, Result<Confirmation, CustodyError>>,
}

fn refresh_rounds(
    custodians: &Custodians,
    shares: &Shares,
    public: &PublicKeyPackage,
    members: &[Identifier],
    epoch: u64,
    shown: impl Fn(Identifier, BTreeMap<Identifier, round1::Package>) -> BTreeMap<Identifier, round1::Package>,
) -> Refresh {
    let n = u16::try_from(members.len()).unwrap();
    let mut participants = BTreeMap::new();
    let mut broadcast = BTreeMap::new();
    for &m in members {
        let (p, package) = RefreshParticipant::start(m, n, 3, epoch, shares[&m].clone(), public.clone()).unwrap();
        participants.insert(m, p);
        broadcast.insert(m, package);
    }
    let outgoing: BTreeMap<Identifier, BTreeMap<Identifier, round2::Package>> =
        participants.iter_mut().map(|(m, p)| (*m, p.round2(shown(*m, others(&broadcast, *m))).unwrap())).collect();
    let inbox = deliver(outgoing);
    let confirmations = participants.iter_mut().map(|(m, p)| (*m, p.round3(&inbox[m], &custodians.keys[m]))).collect();
    Refresh { participants, confirmations }
}

impl Refresh {
    fn finish(
        self,
        custodians: &Custodians,
    ) -> BTreeMap<Identifier, Result<(KeyPackage, PublicKeyPackage), CustodyError>> {
        let members: Vec<Identifier> = self.participants.keys().copied().collect();
        let identities = custodians.public(&members);
        let confirmations: Vec<Confirmation> = self.confirmations.into_values().filter_map(Result::ok).collect();
        self.participants.into_iter().map(|(m, p)| (m, p.finish(&confirmations, &identities))).collect()
    }
}

fn refresh(
    custodians: &Custodians,
    shares: &Shares,
    public: &PublicKeyPackage,
    members: &[Identifier],
    epoch: u64,
) -> (Shares, PublicKeyPackage) {
    let outcomes = refresh_rounds(custodians, shares, public, members, epoch, |_, r| r).finish(custodians);
    let mut new = Shares::new();
    let mut new_public: Option<PublicKeyPackage> = None;
    for (m, outcome) in outcomes {
        let (key, group) = outcome.unwrap();
        if let Some(seen) = &new_public {
            assert_eq!(seen, &group, "every member ends with the same public package");
        }
        new_public = Some(group);
        new.insert(m, key);
    }
    (new, new_public.unwrap())
}

/// Both signing rounds for one message with the shares of `signers`.
fn sign(
    shares: &Shares,
    public: &PublicKeyPackage,
    signers: &[Identifier],
    message: &[u8],
) -> Result<[u8; 64], CustodyError> {
    let mut round = SigningRound::new(public.clone(), message, signers.iter().copied().collect::<BTreeSet<_>>())?;
    let mut nonces = BTreeMap::new();
    for s in signers {
        let (secret, commitments) = custodian_commit(&shares[s]);
        nonces.insert(*s, secret);
        round.commit(*s, commitments)?;
    }
    let package = round.package()?.clone();
    for s in signers {
        round.share(*s, custodian_sign(&package, nonces.remove(s).unwrap(), &shares[s])?)?;
    }
    round.aggregate()
}

/// A two-input Taproot spend of the key's output, signed by `signers` and checked by Bitcoin Core's interpreter.
fn spend_and_verify(shares: &Shares, public: &PublicKeyPackage, signers: &[Identifier]) -> Result<(), CustodyError> {
    let script = output_script(public)?;
    let spent: Vec<TxOut> =
        (0..2).map(|i| TxOut { value: Amount::from_sat(60_000 + i), script_pubkey: script.clone() }).collect();
    let input = (0..2)
        .map(|i| TxIn {
            previous_output: OutPoint { txid: Txid::from_byte_array([9; 32]), vout: i },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        })
        .collect();
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input,
        output: vec![TxOut { value: Amount::from_sat(110_000), script_pubkey: script }],
    };
    let signatures = key_spend_sighashes(&tx, &spent)?
        .iter()
        .map(|m| sign(shares, public, signers, m))
        .collect::<Result<Vec<_>, _>>()?;
    attach_key_spend_signatures(&mut tx, &signatures)?;
    verify_spend(&tx, &spent)
}

#[test]
fn a_refresh_among_all_five_keeps_the_key_and_refuses_every_old_share() {
    let custodians = Custodians::new(5);
    let (old, public) = dkg(&custodians, 5, 3);
    let all: Vec<Identifier> = (1..=5).map(id).collect();
    let (new, refreshed) = refresh(&custodians, &old, &public, &all, 1);
    assert_eq!(refreshed.verifying_key(), public.verifying_key(), "the same key");
    assert_eq!(output_script(&refreshed).unwrap(), output_script(&public).unwrap(), "so the same address");
    assert_ne!(refreshed.verifying_shares(), public.verifying_shares(), "but new verifying shares");
    assert!(all.iter().all(|m| new[m].signing_share() != old[m].signing_share()));
    spend_and_verify(&new, &refreshed, &[id(1), id(3), id(5)]).unwrap();
    spend_and_verify(&new, &refreshed, &[id(2), id(3), id(4)]).unwrap();

    // One old share among new ones is named.
    let mut mixed = new.clone();
    mixed.insert(id(2), old[&id(2)].clone());
    assert_eq!(sign(&mixed, &refreshed, &[id(1), id(2), id(4)], b"m"), Err(CustodyError::BadShare("2".into())));
    // Three old shares (still a valid sharing of the same key, whose aggregate would verify) are each refused.
    let quorum = [id(1), id(3), id(5)];
    let mut round = SigningRound::new(refreshed.clone(), b"m", quorum.iter().copied().collect()).unwrap();
    let mut nonces = BTreeMap::new();
    for m in &quorum {
        let (secret, commitments) = custodian_commit(&old[m]);
        nonces.insert(*m, secret);
        round.commit(*m, commitments).unwrap();
    }
    let package = round.package().unwrap().clone();
    for m in &quorum {
        let share = custodian_sign(&package, nonces.remove(m).unwrap(), &old[m]).unwrap();
        let name = format!("{}", u16::from_be_bytes(m.serialize()[30..32].try_into().unwrap()));
        assert_eq!(round.share(*m, share), Err(CustodyError::BadShare(name)));
    }
    assert!(matches!(round.aggregate(), Err(CustodyError::NotReady(_))));
    // Against the old public package, the old shares still sign: it is the epoch that refuses them.
    sign(&old, &public, &quorum, b"m").unwrap();

    // A second refresh: the first epoch's shares are refused as well, and the key still has not moved.
    let (newer, again) = refresh(&custodians, &new, &refreshed, &all, 2);
    assert_eq!(again.verifying_key(), public.verifying_key());
    assert!(matches!(sign(&new, &again, &quorum, b"m"), Err(CustodyError::BadShare(_))));
    spend_and_verify(&newer, &again, &quorum).unwrap();
}

#[test]
fn a_custodian_is_removed_by_a_refresh_among_the_other_four() {
    let custodians = Custodians::new(5);
    let (old, public) = dkg(&custodians, 5, 3);
    let four: Vec<Identifier> = (1..=4).map(id).collect();
    let (remaining, smaller) = refresh(&custodians, &old, &public, &four, 1);
    assert_eq!(smaller.verifying_key(), public.verifying_key(), "the same key and address");
    assert_eq!(smaller.verifying_shares().len(), 4);
    assert_eq!(smaller.min_signers(), Some(3), "3-of-4");
    assert!(!smaller.verifying_shares().contains_key(&id(5)));
    // The removed custodian is a stranger to the new package.
    assert_eq!(
        SigningRound::new(smaller.clone(), b"m", [id(1), id(2), id(5)].into()).err(),
        Some(CustodyError::UnexpectedCustodian("5".into()))
    );
    // Every quorum of the remaining four signs.
    for skip in 0..4 {
        let quorum: Vec<Identifier> =
            four.iter().copied().enumerate().filter(|(i, _)| *i != skip).map(|(_, m)| m).collect();
        spend_and_verify(&remaining, &smaller, &quorum).unwrap();
    }
    // Nor can the removed custodian take part in a later refresh: its old share is not the group's.
    assert!(RefreshParticipant::start(id(5), 5, 3, 2, old[&id(5)].clone(), smaller.clone()).is_err());
}

#[test]
fn a_participant_shown_a_different_round1_package_ends_the_refresh_for_everyone() {
    let custodians = Custodians::new(5);
    let (shares, public) = dkg(&custodians, 5, 3);
    let all: Vec<Identifier> = (1..=5).map(id).collect();

    // The relay swaps the proof in participant 5's package as shown to participant 1. Refresh does not check those
    // proofs, so every participant computes a share; only the transcripts tell them apart.
    let (_, stranger) = RefreshParticipant::start(id(4), 5, 3, 1, shares[&id(4)].clone(), public.clone()).unwrap();
    let run = refresh_rounds(&custodians, &shares, &public, &all, 1, |me, mut shown| {
        if me == id(1) {
            let genuine = shown[&id(5)].clone();
            let forged = round1::Package::new(genuine.commitment().clone(), *stranger.proof_of_knowledge());
            shown.insert(id(5), forged);
        }
        shown
    });
    assert!(run.confirmations.values().all(Result::is_ok), "every participant computed something");
    let transcripts: BTreeSet<[u8; 32]> = run.confirmations.values().map(|c| c.as_ref().unwrap().transcript).collect();
    assert_eq!(transcripts.len(), 2, "participant 1 saw another ceremony");
    for (m, outcome) in run.finish(&custodians) {
        assert!(
            matches!(&outcome, Err(CustodyError::Frost(e)) if e.contains("different")),
            "participant {m:?} must not keep a new share: {outcome:?}"
        );
    }

    // Showing a different commitment makes the share from 5 inconsistent: participant 1 never confirms, and nobody
    // finishes without its confirmation.
    let (_, other) = RefreshParticipant::start(id(5), 5, 3, 1, shares[&id(5)].clone(), public.clone()).unwrap();
    let run = refresh_rounds(&custodians, &shares, &public, &all, 1, |me, mut shown| {
        if me == id(1) {
            shown.insert(id(5), other.clone());
        }
        shown
    });
    assert!(run.confirmations[&id(1)].is_err());
    assert!(run.finish(&custodians).values().all(Result::is_err));
}

#[test]
fn confirmations_of_another_ceremony_or_epoch_do_not_count() {
    let custodians = Custodians::new(5);
    let (shares, public) = dkg(&custodians, 5, 3);
    let all: Vec<Identifier> = (1..=5).map(id).collect();
    let run = refresh_rounds(&custodians, &shares, &public, &all, 1, |_, r| r);
    let mut confirmations: Vec<Confirmation> = run.confirmations.values().map(|c| c.clone().unwrap()).collect();
    assert!(confirmations.iter().all(|c| c.kind == CeremonyKind::Refresh));
    // A confirmation relabelled as a key generation's no longer verifies (the kind is signed).
    confirmations[2].kind = CeremonyKind::Dkg;
    let identities = custodians.public(&all);
    let mut participants = run.participants.into_values();
    let first = participants.next().unwrap();
    assert!(matches!(first.finish(&confirmations, &identities), Err(CustodyError::BadShare(_))));
    // Every member's identity key is needed, and a confirmation signed by someone else is named.
    confirmations[2].kind = CeremonyKind::Refresh;
    let second = participants.next().unwrap();
    assert!(second.finish(&confirmations, &custodians.public(&all[..4])).is_err());
    let mut wrong = custodians.public(&all);
    wrong.insert(id(3), identity_key().verifying_key());
    let third = participants.next().unwrap();
    assert_eq!(third.finish(&confirmations, &wrong).err(), Some(CustodyError::BadShare("confirmation of 3".into())));
    // With the right identities the same confirmations finish.
    let fourth = participants.next().unwrap();
    fourth.finish(&confirmations, &identities).unwrap();

    // Two refreshes of the same key into different epochs have different transcripts.
    let a = refresh_rounds(&custodians, &shares, &public, &all, 7, |_, r| r);
    let b = refresh_rounds(&custodians, &shares, &public, &all, 8, |_, r| r);
    assert_ne!(
        a.confirmations[&id(1)].as_ref().unwrap().transcript,
        b.confirmations[&id(1)].as_ref().unwrap().transcript
    );
}

#[test]
fn a_refresh_starts_only_from_the_groups_current_share() {
    let custodians = Custodians::new(5);
    let (shares, public) = dkg(&custodians, 5, 3);
    let (other_shares, other_public) = dkg(&custodians, 5, 3);
    let start = |m: u16, total: u16, t: u16, key: &KeyPackage, public: &PublicKeyPackage| {
        RefreshParticipant::start(id(m), total, t, 1, key.clone(), public.clone())
    };
    start(1, 5, 3, &shares[&id(1)], &public).unwrap();
    assert!(start(2, 5, 3, &shares[&id(1)], &public).is_err(), "someone else's share");
    assert!(start(1, 5, 3, &other_shares[&id(1)], &public).is_err(), "a share of another key");
    assert!(start(1, 5, 3, &shares[&id(1)], &other_public).is_err(), "another key's public package");
    assert!(start(1, 5, 2, &shares[&id(1)], &public).is_err(), "the threshold cannot change");
    assert!(start(1, 2, 3, &shares[&id(1)], &public).is_err(), "fewer members than the threshold");
    // A round-1 package from someone outside the key is refused by name.
    let (mut p, _) = start(1, 5, 3, &shares[&id(1)], &public).unwrap();
    let mut broadcast = BTreeMap::new();
    for m in [2u16, 3, 4, 9] {
        let (_, package) =
            RefreshParticipant::start(id(m.min(5)), 5, 3, 1, shares[&id(m.min(5))].clone(), public.clone()).unwrap();
        broadcast.insert(id(m), package);
    }
    assert_eq!(p.round2(broadcast).err(), Some(CustodyError::UnexpectedCustodian("9".into())));
    assert!(format!("{p:?}").starts_with("RefreshParticipant"));
}
