//! One FROST signing round for one message, as the server runs it: it names the quorum, gathers each custodian's
//! nonce commitments, hands out the signing package, checks every signature share on its own against that
//! custodian's verifying share, and only then aggregates.
//!
//! Checking each share before aggregating matters for two reasons the aggregate check alone misses: after a refresh,
//! a quorum of *old* shares is still a valid sharing of the same key, so their aggregate verifies, and two tampered
//! shares can cancel each other out. Each share is therefore checked against the current key version's verifying
//! shares, and a bad one names its custodian.

use std::collections::{BTreeMap, BTreeSet};

use crate::CustodyError;
use crate::frost::keys::{KeyPackage, PublicKeyPackage};
use crate::frost::round1::{SigningCommitments, SigningNonces};
use crate::frost::round2::SignatureShare;
use crate::frost::{Identifier, SigningPackage};

/// The server's side of one signing round.
pub struct SigningRound {
    public: PublicKeyPackage,
    message: Vec<u8>,
    signers: BTreeSet<Identifier>,
    commitments: BTreeMap<Identifier, SigningCommitments>,
    package: Option<SigningPackage>,
    shares: BTreeMap<Identifier, SignatureShare>,
}

/// A custodian's identifier as people read it (`3`).
pub(crate) fn name(id: &Identifier) -> String {
    // Identifiers are scalars; custodians 1..=n serialise with their number in the last bytes.
    let bytes = id.serialize();
    let tail: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    if tail.len() <= 2 {
        tail.iter().fold(0u32, |acc, b| acc * 256 + u32::from(*b)).to_string()
    } else {
        tail.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl SigningRound {
    /// A round in which exactly `signers` (at least the key's threshold, all of them holders of a share) sign
    /// `message` under the key `public` describes.
    pub fn new(
        public: PublicKeyPackage,
        message: &[u8],
        signers: BTreeSet<Identifier>,
    ) -> Result<SigningRound, CustodyError> {
        let threshold = usize::from(*public.min_signers().as_ref().ok_or(CustodyError::NotReady("no threshold"))?);
        if signers.len() < threshold {
            return Err(CustodyError::Frost(format!("{} signers, the threshold is {threshold}", signers.len())));
        }
        if let Some(stranger) = signers.iter().find(|id| !public.verifying_shares().contains_key(id)) {
            return Err(CustodyError::UnexpectedCustodian(name(stranger)));
        }
        Ok(SigningRound {
            public,
            message: message.to_vec(),
            signers,
            commitments: BTreeMap::new(),
            package: None,
            shares: BTreeMap::new(),
        })
    }

    /// Records a signer's commitments (round 1). When every signer has committed, the signing package exists.
    pub fn commit(&mut self, id: Identifier, commitments: SigningCommitments) -> Result<(), CustodyError> {
        if !self.signers.contains(&id) || self.commitments.contains_key(&id) || self.package.is_some() {
            return Err(CustodyError::UnexpectedCustodian(name(&id)));
        }
        self.commitments.insert(id, commitments);
        if self.commitments.len() == self.signers.len() {
            self.package = Some(SigningPackage::new(self.commitments.clone(), &self.message));
        }
        Ok(())
    }

    /// The package every signer signs (round 2), once all have committed.
    pub fn package(&self) -> Result<&SigningPackage, CustodyError> {
        self.package.as_ref().ok_or(CustodyError::NotReady("commitments are missing"))
    }

    /// Checks and records a signer's share; a share that does not verify against the signer's verifying share is
    /// refused, naming the signer.
    pub fn share(&mut self, id: Identifier, share: SignatureShare) -> Result<(), CustodyError> {
        let package = self.package.as_ref().ok_or(CustodyError::NotReady("commitments are missing"))?;
        if !self.signers.contains(&id) || self.shares.contains_key(&id) {
            return Err(CustodyError::UnexpectedCustodian(name(&id)));
        }
        let verifying_share =
            self.public.verifying_shares().get(&id).ok_or_else(|| CustodyError::UnexpectedCustodian(name(&id)))?;
        frost_core::verify_signature_share(id, verifying_share, &share, package, self.public.verifying_key())
            .map_err(|_| CustodyError::BadShare(name(&id)))?;
        self.shares.insert(id, share);
        Ok(())
    }

    /// The signature (64 bytes, BIP-340), once every signer's share is in and checked; it is verified under the
    /// group key before it is returned.
    pub fn aggregate(&self) -> Result<[u8; 64], CustodyError> {
        let package = self.package()?;
        if self.shares.len() != self.signers.len() {
            return Err(CustodyError::NotReady("signature shares are missing"));
        }
        let signature = crate::frost::aggregate(package, &self.shares, &self.public)?;
        self.public.verifying_key().verify(&self.message, &signature)?;
        let bytes = signature.serialize()?;
        bytes.try_into().map_err(|_| CustodyError::Frost("a signature is not 64 bytes".into()))
    }
}

/// A custodian's round 1: fresh nonces (kept secret, used once) and the commitments sent to the server.
pub fn custodian_commit(key: &KeyPackage) -> (SigningNonces, SigningCommitments) {
    crate::frost::round1::commit(key.signing_share(), &mut rand_core::OsRng)
}

/// A custodian's round 2: their signature share of the package, with the nonces of round 1 (consumed).
pub fn custodian_sign(
    package: &SigningPackage,
    nonces: SigningNonces,
    key: &KeyPackage,
) -> Result<SignatureShare, CustodyError> {
    Ok(crate::frost::round2::sign(package, &nonces, key)?)
}
