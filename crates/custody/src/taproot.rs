//! Taproot key-path spends of a threshold key: the output script, the BIP-341 signature hashes a quorum signs, the
//! witness, and the final check by Bitcoin Core's interpreter.
//!
//! The key that `frost-secp256k1-tr`'s DKG outputs is already the BIP-341 *output* key (the internal key tweaked with
//! an empty script tree), so the output script is built from it as is (`new_p2tr_tweaked`): tweaking it again, as
//! `ScriptBuf::new_p2tr` would, makes coins that the quorum's signatures can never spend.

use bitcoin::hashes::Hash;
use bitcoin::key::{TweakedPublicKey, XOnlyPublicKey};
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::{ScriptBuf, Transaction, TxOut, Witness};

use crate::CustodyError;
use crate::frost::keys::PublicKeyPackage;

/// The x-only Taproot output key of a threshold key.
pub fn output_key(public: &PublicKeyPackage) -> Result<XOnlyPublicKey, CustodyError> {
    let sec1 = public.verifying_key().serialize()?;
    // A compressed SEC1 point: a parity byte and the 32-byte x coordinate, which is all BIP-340 keeps.
    let x = sec1.get(1..33).ok_or_else(|| CustodyError::Frost("the group key is not a compressed point".into()))?;
    XOnlyPublicKey::from_slice(x).map_err(|e| CustodyError::Frost(e.to_string()))
}

/// The P2TR output script that pays to a threshold key (key path only).
pub fn output_script(public: &PublicKeyPackage) -> Result<ScriptBuf, CustodyError> {
    Ok(ScriptBuf::new_p2tr_tweaked(TweakedPublicKey::dangerous_assume_tweaked(output_key(public)?)))
}

/// The BIP-341 signature hash of every input (key-path spend, `SIGHASH_DEFAULT`), given the outputs they spend in
/// order. These 32-byte messages are what the custodians sign.
pub fn key_spend_sighashes(tx: &Transaction, spent: &[TxOut]) -> Result<Vec<[u8; 32]>, CustodyError> {
    if spent.len() != tx.input.len() {
        return Err(CustodyError::Sighash(format!("{} inputs but {} spent outputs", tx.input.len(), spent.len())));
    }
    let mut cache = SighashCache::new(tx);
    (0..tx.input.len())
        .map(|i| {
            cache
                .taproot_key_spend_signature_hash(i, &Prevouts::All(spent), TapSighashType::Default)
                .map(|h| h.to_byte_array())
                .map_err(|e| CustodyError::Sighash(e.to_string()))
        })
        .collect()
}

/// Puts one 64-byte BIP-340 signature in each input's witness (with `SIGHASH_DEFAULT` no sighash byte follows).
pub fn attach_key_spend_signatures(tx: &mut Transaction, signatures: &[[u8; 64]]) -> Result<(), CustodyError> {
    if signatures.len() != tx.input.len() {
        return Err(CustodyError::Sighash(format!("{} inputs but {} signatures", tx.input.len(), signatures.len())));
    }
    for (input, signature) in tx.input.iter_mut().zip(signatures) {
        input.witness = Witness::from_slice(&[signature.as_slice()]);
    }
    Ok(())
}

/// Checks every input of `tx` with Bitcoin Core's script interpreter (all consensus rules up to and including
/// Taproot), given the outputs it spends, in order: the last word before a transaction may be broadcast.
pub fn verify_spend(tx: &Transaction, spent: &[TxOut]) -> Result<(), CustodyError> {
    if spent.len() != tx.input.len() {
        return Err(CustodyError::Sighash(format!("{} inputs but {} spent outputs", tx.input.len(), spent.len())));
    }
    let raw = bitcoin::consensus::encode::serialize(tx);
    let mut utxos = Vec::with_capacity(spent.len());
    for output in spent {
        let value = i64::try_from(output.value.to_sat())
            .map_err(|_| CustodyError::Sighash("an amount beyond 2^63 satoshis".into()))?;
        let len = u32::try_from(output.script_pubkey.len())
            .map_err(|_| CustodyError::Sighash("a script longer than 4 GiB".into()))?;
        // The interpreter reads the scripts through these pointers during the calls below, while `spent` lives.
        utxos.push(bitcoinconsensus::Utxo {
            script_pubkey: output.script_pubkey.as_bytes().as_ptr(),
            script_pubkey_len: len,
            value,
        });
    }
    let flags = bitcoinconsensus::VERIFY_ALL_PRE_TAPROOT | bitcoinconsensus::VERIFY_TAPROOT;
    for (input, output) in spent.iter().enumerate() {
        bitcoinconsensus::verify_with_flags(
            output.script_pubkey.as_bytes(),
            output.value.to_sat(),
            &raw,
            Some(&utxos),
            input,
            flags,
        )
        .map_err(|e| CustodyError::Consensus { input, reason: format!("{e:?}") })?;
    }
    Ok(())
}
