//! The distributed key generation among five custodians, each holding only its own state, with the server a mere
//! relay: it ends with every custodian holding a share of one key that three of them can sign with, or, when anyone
//! saw a different ceremony, it ends for nobody.

use std::collections::BTreeMap;

use ed25519_dalek::{SigningKey, VerifyingKey};
use rampart_custody::frost::Identifier;
use rampart_custody::frost::keys::dkg::{round1, round2};
use rampart_custody::frost::keys::{KeyPackage, PublicKeyPackage};
use rampart_custody::{Confirmation, CustodyError, Participant, SigningRound, custodian_commit, custodian_sign};
use rand_core::OsRng;

fn identity_key() -> SigningKey {
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut OsRng, &mut seed);
    SigningKey::from_bytes(&seed)
}

struct Ceremony {
    participants: BTreeMap<Identifier, Participant>,
    identity: BTreeMap<Identifier, SigningKey>,
    public_identities: BTreeMap<Identifier, VerifyingKey>,
    broadcast: BTreeMap<Identifier, round1::Package>,
}

fn start(n: u16, t: u16) -> Ceremony {
    let mut participants = BTreeMap::new();
    let mut broadcast = BTreeMap::new();
    let mut identity = BTreeMap::new();
    for i in 1..=n {
        let id = Identifier::try_from(i).unwrap();
        let (participant, package) = Participant::start(id, n, t).unwrap();
        participants.insert(id, participant);
        broadcast.insert(id, package);
        identity.insert(id, identity_key());
    }
    let public_identities = identity.iter().map(|(id, k)| (*id, k.verifying_key())).collect();
    Ceremony { participants, identity, public_identities, broadcast }
}

impl Ceremony {
    /// Rounds 2 and 3 as relayed by the server; `round1_for` lets a test change what one participant receives.
    fn run(
        &mut self,
        round1_for: impl Fn(Identifier, BTreeMap<Identifier, round1::Package>) -> BTreeMap<Identifier, round1::Package>,
    ) -> BTreeMap<Identifier, Result<Confirmation, CustodyError>> {
        let mut inbox: BTreeMap<Identifier, BTreeMap<Identifier, round2::Package>> = BTreeMap::new();
        for (id, participant) in &mut self.participants {
            let others = self.broadcast.iter().filter(|(k, _)| *k != id).map(|(k, v)| (*k, v.clone())).collect();
            for (to, package) in participant.round2(round1_for(*id, others)).unwrap() {
                inbox.entry(to).or_default().insert(*id, package);
            }
        }
        self.participants.iter_mut().map(|(id, p)| (*id, p.round3(&inbox[id], &self.identity[id]))).collect()
    }

    fn finish(
        self,
        confirmations: &[Confirmation],
    ) -> BTreeMap<Identifier, Result<(KeyPackage, PublicKeyPackage), CustodyError>> {
        let identities = self.public_identities;
        self.participants.into_iter().map(|(id, p)| (id, p.finish(confirmations, &identities))).collect()
    }
}

fn sign_with(shares: &[&KeyPackage], public: &PublicKeyPackage, message: &[u8]) -> Result<[u8; 64], CustodyError> {
    let mut round = SigningRound::new(public.clone(), message, shares.iter().map(|k| *k.identifier()).collect())?;
    let mut nonces = Vec::new();
    for key in shares {
        let (secret, commitments) = custodian_commit(key);
        round.commit(*key.identifier(), commitments)?;
        nonces.push(secret);
    }
    let package = round.package()?.clone();
    for (key, secret) in shares.iter().zip(nonces) {
        round.share(*key.identifier(), custodian_sign(&package, secret, key)?)?;
    }
    round.aggregate()
}

#[test]
fn five_custodians_make_one_key_that_any_three_sign_with() {
    let mut ceremony = start(5, 3);
    let confirmations: Vec<Confirmation> = ceremony.run(|_, r| r).into_values().map(Result::unwrap).collect();
    assert!(confirmations.windows(2).all(|w| w[0].transcript == w[1].transcript && w[0].group_key == w[1].group_key));
    let results = ceremony.finish(&confirmations);
    let outcomes: Vec<(KeyPackage, PublicKeyPackage)> = results.into_values().map(Result::unwrap).collect();
    let public = outcomes[0].1.clone();
    assert!(outcomes.iter().all(|(_, p)| *p == public), "one key for everyone");
    let keys: Vec<&KeyPackage> = outcomes.iter().map(|(k, _)| k).collect();
    sign_with(&[keys[0], keys[2], keys[4]], &public, b"a spend").unwrap();
    sign_with(&[keys[1], keys[3], keys[4]], &public, b"another spend").unwrap();
    assert!(sign_with(&[keys[0], keys[1]], &public, b"two are not enough").is_err());
}

#[test]
fn a_participant_who_equivocates_ends_the_ceremony_for_everyone() {
    let mut ceremony = start(5, 3);
    // Participant 5 shows participant 1 a different commitment from everyone else's.
    let five = Identifier::try_from(5u16).unwrap();
    let one = Identifier::try_from(1u16).unwrap();
    let (_, other) = Participant::start(five, 5, 3).unwrap();
    let results = ceremony.run(|me, mut received| {
        if me == one {
            received.insert(five, other.clone());
        }
        received
    });
    // Participant 1 cannot finish round 3 (its share from 5 does not match what it was shown), so it never confirms.
    assert!(results[&one].is_err(), "the inconsistent share is detected");
    let confirmations: Vec<Confirmation> = results.into_values().filter_map(Result::ok).collect();
    assert_eq!(confirmations.len(), 4);
    // Nobody keeps a share: a confirmation is missing.
    for (id, outcome) in ceremony.finish(&confirmations) {
        assert!(outcome.is_err(), "participant {id:?} must not keep a share");
    }
}

#[test]
fn a_forged_or_disagreeing_confirmation_ends_the_ceremony_for_everyone() {
    let mut ceremony = start(5, 3);
    let mut confirmations: Vec<Confirmation> = ceremony.run(|_, r| r).into_values().map(Result::unwrap).collect();
    // Someone relays a confirmation for participant 2 that participant 2 never signed.
    let forged = identity_key();
    let mut fake = confirmations[1].clone();
    fake.signature = ed25519_dalek::Signer::sign(&forged, b"not the confirmation").to_bytes();
    let mut with_forgery = confirmations.clone();
    with_forgery[1] = fake;
    let identities = ceremony.public_identities.clone();
    let (a, b) = {
        let mut it = ceremony.participants.into_iter();
        (it.next().unwrap(), it.next().unwrap())
    };
    assert!(matches!(a.1.finish(&with_forgery, &identities), Err(CustodyError::BadShare(_))));
    // A properly signed confirmation of a different transcript: participant 3 says it saw another ceremony.
    confirmations[2].transcript[0] ^= 1;
    confirmations[2].signature = {
        let mut m = b"rampart.custody.dkg.confirm.v1".to_vec();
        m.extend_from_slice(&confirmations[2].transcript);
        m.extend_from_slice(&confirmations[2].group_key);
        ed25519_dalek::Signer::sign(&ceremony.identity[&confirmations[2].id], &m).to_bytes()
    };
    assert!(matches!(b.1.finish(&confirmations, &identities), Err(CustodyError::Frost(m)) if m.contains("different")));
}
