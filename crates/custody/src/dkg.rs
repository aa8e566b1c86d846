//! One custodian's side of the distributed key generation of a threshold key (FROST DKG, three rounds), with the
//! confirmation round the upstream crate leaves to its caller: when a custodian has computed its share, it signs, with
//! its long-term identity key, the group key and a hash of everything it saw (the transcript). The key exists only if
//! all participants' confirmations agree; otherwise the ceremony fails for everyone, and nobody keeps a share of a key
//! some other participant computed differently.
//!
//! The server only relays: round-1 packages are broadcast, round-2 packages go to one recipient each (encrypted end to
//! end by the transport, which is not this module's business), confirmations are broadcast.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::CustodyError;
use crate::frost::Identifier;
use crate::frost::keys::dkg::{round1, round2};
use crate::frost::keys::{KeyPackage, PublicKeyPackage, dkg};

/// The ceremony a confirmation is about; part of what is signed, so that a confirmation of one kind of ceremony never
/// counts for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeremonyKind {
    /// A distributed key generation.
    Dkg,
    /// A refresh of the shares of an existing key (`crate::refresh`).
    Refresh,
}

impl CeremonyKind {
    fn confirm_domain(self) -> &'static [u8] {
        match self {
            CeremonyKind::Dkg => b"rampart.custody.dkg.confirm.v1",
            CeremonyKind::Refresh => b"rampart.custody.refresh.confirm.v1",
        }
    }
}

/// A participant's signed statement of the outcome it computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    /// The ceremony confirmed.
    pub kind: CeremonyKind,
    /// Who.
    pub id: Identifier,
    /// SHA-256 of the ceremony as this participant saw it (parameters, every round-1 package, the public package).
    pub transcript: [u8; 32],
    /// The group key (compressed SEC1).
    pub group_key: Vec<u8>,
    /// Ed25519 signature by the participant's identity key over the transcript and the group key.
    pub signature: [u8; 64],
}

impl Confirmation {
    fn message(kind: CeremonyKind, transcript: &[u8; 32], group_key: &[u8]) -> Vec<u8> {
        let mut m = kind.confirm_domain().to_vec();
        m.extend_from_slice(transcript);
        m.extend_from_slice(group_key);
        m
    }

    /// A confirmation of `transcript` and `group_key`, signed with the participant's identity key.
    pub(crate) fn signed(
        kind: CeremonyKind,
        id: Identifier,
        transcript: [u8; 32],
        group_key: Vec<u8>,
        identity: &SigningKey,
    ) -> Confirmation {
        let signature = identity.sign(&Self::message(kind, &transcript, &group_key)).to_bytes();
        Confirmation { kind, id, transcript, group_key, signature }
    }

    /// Whether the signature is the participant's.
    pub fn verify(&self, identity: &VerifyingKey) -> bool {
        identity
            .verify(
                &Self::message(self.kind, &self.transcript, &self.group_key),
                &Signature::from_bytes(&self.signature),
            )
            .is_ok()
    }
}

/// Checks that every participant (`identities`, by identifier; exactly `total` of them) confirmed, with a valid
/// signature, the same kind of ceremony, transcript and group key as `mine`.
pub(crate) fn check_confirmations(
    mine: &Confirmation,
    total: u16,
    confirmations: &[Confirmation],
    identities: &BTreeMap<Identifier, VerifyingKey>,
) -> Result<(), CustodyError> {
    let fail = |what: String| match mine.kind {
        CeremonyKind::Dkg => fail(what),
        CeremonyKind::Refresh => CustodyError::Frost(format!("refresh: {what}")),
    };
    if identities.len() != usize::from(total) {
        return Err(fail("the identity list does not name every participant".into()));
    }
    for (id, identity) in identities {
        let Some(theirs) = confirmations.iter().find(|c| c.id == *id) else {
            return Err(fail("a participant did not confirm".into()));
        };
        if !theirs.verify(identity) {
            return Err(CustodyError::BadShare(format!("confirmation of {}", crate::signing::name(id))));
        }
        if theirs.kind != mine.kind || theirs.transcript != mine.transcript || theirs.group_key != mine.group_key {
            return Err(fail(format!("participant {} saw a different ceremony", crate::signing::name(id))));
        }
    }
    Ok(())
}

enum State {
    Round1(round1::SecretPackage),
    Round2 { secret: round2::SecretPackage, broadcast: BTreeMap<Identifier, round1::Package> },
    Computed(Box<Computed>),
    Spent,
}

/// What round 3 computed, kept until every confirmation is in.
struct Computed {
    key: KeyPackage,
    public: PublicKeyPackage,
    confirmation: Confirmation,
}

/// One custodian in one key generation.
pub struct Participant {
    id: Identifier,
    total: u16,
    threshold: u16,
    mine: round1::Package,
    state: State,
}

fn fail(what: impl std::fmt::Display) -> CustodyError {
    CustodyError::Frost(format!("key generation: {what}"))
}

impl Participant {
    /// Starts: the participant's secret polynomial, and the round-1 package to broadcast.
    pub fn start(id: Identifier, total: u16, threshold: u16) -> Result<(Participant, round1::Package), CustodyError> {
        let (secret, package) = dkg::part1(id, total, threshold, rand_core::OsRng)?;
        let me = Participant { id, total, threshold, mine: package.clone(), state: State::Round1(secret) };
        Ok((me, package))
    }

    /// Round 2: given every other participant's round-1 package, the secret packages to send, one per recipient.
    pub fn round2(
        &mut self,
        broadcast: BTreeMap<Identifier, round1::Package>,
    ) -> Result<BTreeMap<Identifier, round2::Package>, CustodyError> {
        let State::Round1(secret) = std::mem::replace(&mut self.state, State::Spent) else {
            return Err(fail("round 2 out of order"));
        };
        let (secret, outgoing) = dkg::part2(secret, &broadcast)?;
        self.state = State::Round2 { secret, broadcast };
        Ok(outgoing)
    }

    /// Round 3: given the secret packages addressed to this participant, its share, and its confirmation (signed with
    /// `identity`) to broadcast.
    pub fn round3(
        &mut self,
        received: &BTreeMap<Identifier, round2::Package>,
        identity: &SigningKey,
    ) -> Result<Confirmation, CustodyError> {
        let State::Round2 { secret, broadcast } = std::mem::replace(&mut self.state, State::Spent) else {
            return Err(fail("round 3 out of order"));
        };
        let (key, public) = dkg::part3(&secret, &broadcast, received)?;
        let transcript = self.transcript(&broadcast, &public)?;
        let group_key = public.verifying_key().serialize()?;
        let confirmation = Confirmation::signed(CeremonyKind::Dkg, self.id, transcript, group_key, identity);
        self.state = State::Computed(Box::new(Computed { key, public, confirmation: confirmation.clone() }));
        Ok(confirmation)
    }

    /// The public key package round 3 computed (what the confirmation round agrees on), once computed.
    pub fn public_package(&self) -> Option<&PublicKeyPackage> {
        match &self.state {
            State::Computed(c) => Some(&c.public),
            _ => None,
        }
    }

    fn transcript(
        &self,
        broadcast: &BTreeMap<Identifier, round1::Package>,
        public: &PublicKeyPackage,
    ) -> Result<[u8; 32], CustodyError> {
        let mut all: BTreeMap<Identifier, &round1::Package> = broadcast.iter().map(|(k, v)| (*k, v)).collect();
        all.insert(self.id, &self.mine);
        let mut hash = Sha256::new();
        hash.update(b"rampart.custody.dkg.transcript.v1");
        hash.update(self.total.to_be_bytes());
        hash.update(self.threshold.to_be_bytes());
        for (id, package) in all {
            hash.update(id.serialize());
            let bytes = package.serialize()?;
            hash.update(u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_be_bytes());
            hash.update(bytes);
        }
        let public = public.serialize()?;
        hash.update(u64::try_from(public.len()).unwrap_or(u64::MAX).to_be_bytes());
        hash.update(public);
        Ok(hash.finalize().into())
    }

    /// The end: the share and the public package, only if every participant (`identities`, by identifier) confirmed,
    /// with a valid signature, the same transcript and group key as this one. Otherwise the share is dropped.
    pub fn finish(
        mut self,
        confirmations: &[Confirmation],
        identities: &BTreeMap<Identifier, VerifyingKey>,
    ) -> Result<(KeyPackage, PublicKeyPackage), CustodyError> {
        let State::Computed(computed) = std::mem::replace(&mut self.state, State::Spent) else {
            return Err(fail("finished out of order"));
        };
        let Computed { key, public, confirmation: mine } = *computed;
        check_confirmations(&mine, self.total, confirmations, identities)?;
        Ok((key, public))
    }
}
