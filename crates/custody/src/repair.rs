//! Repairing a lost share (Repairable Threshold Schemes, as `frost-core` implements them): a quorum of other
//! custodians helps the one who lost theirs rebuild it, without anyone, the server included, learning it. The
//! upstream last step does not check its result; here the rebuilt share must match the verifying share the group
//! knows for that custodian, or the repair is refused.

use std::collections::BTreeMap;

use crate::CustodyError;
use crate::frost::Identifier;
use crate::frost::keys::repairable::{self, Delta, Sigma};
use crate::frost::keys::{KeyPackage, PublicKeyPackage};

/// A helper's first step: one value for each helper (itself included), sent privately.
pub fn helper_deltas(
    helpers: &[Identifier],
    helper: &KeyPackage,
    lost: Identifier,
) -> Result<BTreeMap<Identifier, Delta>, CustodyError> {
    Ok(repairable::repair_share_part1::<crate::frost::Secp256K1Sha256TR, _>(
        helpers,
        helper,
        &mut rand_core::OsRng,
        lost,
    )?)
}

/// A helper's second step: from the values the helpers sent it, the one value it sends the custodian being repaired.
pub fn helper_sigma(received: &[Delta]) -> Sigma {
    repairable::repair_share_part2(received)
}

/// The repaired custodian's step: its share again, checked against the group's verifying share for it.
pub fn rebuild(sigmas: &[Sigma], lost: Identifier, public: &PublicKeyPackage) -> Result<KeyPackage, CustodyError> {
    let key = repairable::repair_share_part3(sigmas, lost, public)?;
    match public.verifying_shares().get(&lost) {
        Some(expected) if expected == key.verifying_share() => Ok(key),
        _ => Err(CustodyError::BadShare(format!("repaired share of {}", crate::signing::name(&lost)))),
    }
}
