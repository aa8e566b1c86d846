//! One custodian's side of a share refresh: the members of a threshold key (all of them, or all but one being removed)
//! each deal a random sharing of zero and add what they receive to their share. The key, and so every address, stays
//! the same; the shares and verifying shares change, so shares from before the refresh (a thief's, a departed
//! custodian's) no longer combine with the new ones, and the signing round refuses them one by one against the new
//! verifying shares.
//!
//! The rounds mirror the key generation's (`crate::dkg`): round-1 packages are broadcast, round-2 packages go to one
//! recipient each (encrypted by the transport), and a confirmation round ends it: everyone signs the group key and a
//! transcript hash of what they saw, and keeps the new share only if every member's confirmation agrees with theirs.
//!
//! Removing a custodian is a refresh among the others with `total` one less; the threshold cannot change.

use std::collections::BTreeMap;

use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::CustodyError;
use crate::dkg::{CeremonyKind, Confirmation, check_confirmations};
use crate::frost::Identifier;
use crate::frost::keys::dkg::{round1, round2};
use crate::frost::keys::refresh;
use crate::frost::keys::{KeyPackage, PublicKeyPackage};

fn fail(what: impl std::fmt::Display) -> CustodyError {
    CustodyError::Frost(format!("refresh: {what}"))
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

/// One custodian in one refresh.
pub struct RefreshParticipant {
    id: Identifier,
    total: u16,
    threshold: u16,
    epoch: u64,
    old_key: KeyPackage,
    old_public: PublicKeyPackage,
    mine: round1::Package,
    state: State,
}

impl std::fmt::Debug for RefreshParticipant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshParticipant")
            .field("id", &crate::signing::name(&self.id))
            .field("total", &self.total)
            .field("threshold", &self.threshold)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl RefreshParticipant {
    /// Starts a refresh into key version `epoch` among `total` members (this one included) with the key's
    /// `threshold`, from this member's current share and the group's current public package. Returns the round-1
    /// package to broadcast.
    pub fn start(
        id: Identifier,
        total: u16,
        threshold: u16,
        epoch: u64,
        old_key: KeyPackage,
        old_public: PublicKeyPackage,
    ) -> Result<(RefreshParticipant, round1::Package), CustodyError> {
        if *old_key.identifier() != id {
            return Err(fail("the share is not this participant's"));
        }
        if old_key.verifying_key() != old_public.verifying_key() {
            return Err(fail("the share belongs to another key"));
        }
        if old_public.verifying_shares().get(&id) != Some(old_key.verifying_share()) {
            return Err(fail("the share is not the one the group knows (stale or damaged)"));
        }
        if *old_key.min_signers() != threshold || old_public.min_signers().is_some_and(|t| t != threshold) {
            return Err(fail("the threshold of a key cannot change"));
        }
        let (secret, package) = refresh::refresh_dkg_part1(id, total, threshold, rand_core::OsRng)?;
        let me = RefreshParticipant {
            id,
            total,
            threshold,
            epoch,
            old_key,
            old_public,
            mine: package.clone(),
            state: State::Round1(secret),
        };
        Ok((me, package))
    }

    /// Round 2: given every other member's round-1 package, the secret packages to send, one per recipient.
    pub fn round2(
        &mut self,
        broadcast: BTreeMap<Identifier, round1::Package>,
    ) -> Result<BTreeMap<Identifier, round2::Package>, CustodyError> {
        let State::Round1(secret) = std::mem::replace(&mut self.state, State::Spent) else {
            return Err(fail("round 2 out of order"));
        };
        if broadcast.contains_key(&self.id) {
            return Err(fail("a round-1 package in this participant's name came from someone else"));
        }
        if let Some(stranger) = broadcast.keys().find(|id| !self.old_public.verifying_shares().contains_key(id)) {
            return Err(CustodyError::UnexpectedCustodian(crate::signing::name(stranger)));
        }
        let (secret, outgoing) = refresh::refresh_dkg_part2(secret, &broadcast)?;
        self.state = State::Round2 { secret, broadcast };
        Ok(outgoing)
    }

    /// Round 3: given the secret packages addressed to this member, its new share (kept until the end), and its
    /// confirmation (signed with `identity`) to broadcast. The new public package must keep the group key and name
    /// exactly the members of this refresh.
    pub fn round3(
        &mut self,
        received: &BTreeMap<Identifier, round2::Package>,
        identity: &SigningKey,
    ) -> Result<Confirmation, CustodyError> {
        let State::Round2 { secret, broadcast } = std::mem::replace(&mut self.state, State::Spent) else {
            return Err(fail("round 3 out of order"));
        };
        let (key, public) =
            refresh::refresh_dkg_shares(&secret, &broadcast, received, self.old_public.clone(), self.old_key.clone())?;
        if public.verifying_key() != self.old_public.verifying_key() || key.verifying_key() != public.verifying_key() {
            return Err(CustodyError::GroupKeyChanged);
        }
        let members: Vec<&Identifier> = broadcast.keys().chain(std::iter::once(&self.id)).collect();
        if public.verifying_shares().len() != usize::from(self.total)
            || members.iter().any(|id| !public.verifying_shares().contains_key(id))
        {
            return Err(fail("the new public package does not name exactly the members"));
        }
        if public.verifying_shares().get(&self.id) != Some(key.verifying_share()) {
            return Err(fail("the new share does not match its verifying share"));
        }
        let transcript = self.transcript(&broadcast, &public)?;
        let group_key = public.verifying_key().serialize()?;
        let confirmation = Confirmation::signed(CeremonyKind::Refresh, self.id, transcript, group_key, identity);
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
        fn framed(hash: &mut Sha256, bytes: &[u8]) {
            hash.update(u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_be_bytes());
            hash.update(bytes);
        }
        let mut all: BTreeMap<Identifier, &round1::Package> = broadcast.iter().map(|(k, v)| (*k, v)).collect();
        all.insert(self.id, &self.mine);
        let mut hash = Sha256::new();
        hash.update(b"rampart.custody.refresh.transcript.v1");
        hash.update(self.epoch.to_be_bytes());
        hash.update(self.total.to_be_bytes());
        hash.update(self.threshold.to_be_bytes());
        framed(&mut hash, &self.old_public.verifying_key().serialize()?);
        framed(&mut hash, &self.old_public.serialize()?);
        for (id, package) in all {
            hash.update(id.serialize());
            framed(&mut hash, &package.serialize()?);
        }
        framed(&mut hash, &public.serialize()?);
        Ok(hash.finalize().into())
    }

    /// The end: the new share and public package, only if every member (`identities`, by identifier) confirmed,
    /// with a valid signature, the same transcript and group key as this one. Otherwise the new share is dropped
    /// (and the caller keeps the old one: the key did not change).
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
