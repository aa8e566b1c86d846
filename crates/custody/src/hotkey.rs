//! The hot wallet's key: one BIP-32 master key per asset, kept by the server encrypted under the seal, with every
//! address a BIP-86 key-path-only Taproot output of a child key.
//!
//! Why one key and not a threshold key: both shares of a 2-of-3 key held by the server would sit behind the same
//! seal, so an attacker who can read the unsealed process has both; a single key is as strong and much simpler. The
//! hot wallet's protection is the cap on its share of the funds (`policy`), the withdrawal policy and the seal.
//!
//! Layout (BIP-86 account 0): `m/86'/coin'/0'/branch/index`, coin 0 on Bitcoin's main network and 1 elsewhere,
//! branch [`HOT_BRANCH`] for the hot wallet's own coins and [`DEPOSIT_BRANCH`] for customers' deposit addresses. The
//! account's extended public key is enough to derive every address (watch-only); only signing needs the secret.
//!
//! Known and accepted: a leaked child private key together with the account xpub reveals the account's private key
//! (non-hardened derivation); both live behind the same seal.

use bitcoin::bip32::{ChainCode, ChildNumber, Xpriv, Xpub};
use bitcoin::hashes::Hash;
use bitcoin::key::{Keypair, TapTweak};
use bitcoin::secp256k1::{Message, Secp256k1, Signing, Verification};
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::{Address, Network, NetworkKind, ScriptBuf, Transaction, TxOut};
use rand_core::{OsRng, RngCore};
use zeroize::{Zeroize, Zeroizing};

use crate::CustodyError;

/// The branch of the hot wallet's own addresses (receive and change).
pub const HOT_BRANCH: u32 = 0;
/// The branch of customers' deposit addresses; the index is a per-asset counter, never reused.
pub const DEPOSIT_BRANCH: u32 = 1;
/// BIP-86's purpose field.
const PURPOSE: u32 = 86;
/// The length of a fresh master seed, in bytes.
const SEED_LEN: usize = 32;

/// BIP-44 coin type: 0 on Bitcoin's main network, 1 on every test network.
fn coin_type(kind: NetworkKind) -> u32 {
    match kind {
        NetworkKind::Main => 0,
        NetworkKind::Test => 1,
    }
}

fn hot_err(what: impl std::fmt::Display) -> CustodyError {
    CustodyError::HotKey(what.to_string())
}

fn hardened(index: u32) -> Result<ChildNumber, CustodyError> {
    ChildNumber::from_hardened_idx(index).map_err(hot_err)
}

fn normal(index: u32) -> Result<ChildNumber, CustodyError> {
    ChildNumber::from_normal_idx(index).map_err(hot_err)
}

/// The hot wallet's secret: a BIP-32 master key. Prints as `<redacted>`; erased when dropped.
pub struct HotKey {
    master: Xpriv,
}

impl std::fmt::Debug for HotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HotKey(<redacted>)")
    }
}

impl Drop for HotKey {
    fn drop(&mut self) {
        self.master.private_key.non_secure_erase();
        self.master.chain_code = ChainCode::from([0u8; 32]);
    }
}

impl HotKey {
    /// A new key from 32 fresh bytes of the operating system's randomness.
    pub fn generate(network: Network) -> HotKey {
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        OsRng.fill_bytes(seed.as_mut());
        // A 32-byte seed is within BIP-32's 16..=64 bytes, and HMAC-SHA512 gives an invalid key with probability
        // about 2^-127; should it ever happen, a second seed is drawn.
        loop {
            if let Ok(master) = Xpriv::new_master(network, seed.as_ref()) {
                return HotKey { master };
            }
            OsRng.fill_bytes(seed.as_mut());
        }
    }

    /// The key from its stored form ([`HotKey::to_bytes`]): a 78-byte BIP-32 master private key.
    pub fn from_bytes(bytes: &[u8]) -> Result<HotKey, CustodyError> {
        let master = Xpriv::decode(bytes).map_err(|_| hot_err("not a BIP-32 extended private key"))?;
        if master.depth != 0 || master.child_number != ChildNumber::from(0) {
            return Err(hot_err("not a master key"));
        }
        Ok(HotKey { master })
    }

    /// The stored form: the 78-byte BIP-32 serialisation of the master private key (to be encrypted by the caller).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut raw = self.master.encode();
        let out = Zeroizing::new(raw.to_vec());
        raw.zeroize();
        out
    }

    /// The network kind (main or test) the key was made for.
    pub fn network_kind(&self) -> NetworkKind {
        self.master.network
    }

    /// The account path `m/86'/coin'/0'`.
    fn account_path(&self) -> Result<[ChildNumber; 3], CustodyError> {
        Ok([hardened(PURPOSE)?, hardened(coin_type(self.master.network))?, hardened(0)?])
    }

    fn account<C: Signing>(&self, secp: &Secp256k1<C>) -> Result<Xpriv, CustodyError> {
        self.master.derive_priv(secp, &self.account_path()?).map_err(hot_err)
    }

    /// The account-level extended public key (`m/86'/coin'/0'`), from which every address is derived.
    pub fn account_xpub(&self) -> String {
        let secp = Secp256k1::signing_only();
        let mut account = match self.account(&secp) {
            Ok(account) => account,
            // Hardened derivation fails only for an invalid tweak, with probability about 2^-127 per step.
            Err(e) => panic!("BIP-32 derivation of the account key failed: {e}"),
        };
        let xpub = Xpub::from_priv(&secp, &account).to_string();
        account.private_key.non_secure_erase();
        xpub
    }

    /// The key pair of `account/branch/index`, tweaked for a BIP-86 key-path spend.
    fn spend_keypair<C: Signing + Verification>(
        &self,
        secp: &Secp256k1<C>,
        account: &Xpriv,
        branch: u32,
        index: u32,
    ) -> Result<Keypair, CustodyError> {
        let mut child = account.derive_priv(secp, &[normal(branch)?, normal(index)?]).map_err(hot_err)?;
        let untweaked = Keypair::from_secret_key(secp, &child.private_key);
        child.private_key.non_secure_erase();
        Ok(untweaked.tap_tweak(secp, None).to_keypair())
    }

    /// Signs every input `i` of `tx` (a BIP-341 key-path spend, `SIGHASH_DEFAULT`) with the key at
    /// `(branch, index) = paths[i]`, where `spent[i]` is the output the input spends.
    ///
    /// Refuses, before signing anything, an input whose spent output does not pay to that key's script: the hot key
    /// never signs for coins that are not its own. The finished transaction must pass Bitcoin Core's interpreter
    /// (`verify_spend`); `tx` is changed only when it does.
    pub fn sign_key_spends(
        &self,
        tx: &mut Transaction,
        spent: &[TxOut],
        paths: &[(u32, u32)],
    ) -> Result<(), CustodyError> {
        if spent.len() != tx.input.len() || paths.len() != tx.input.len() {
            return Err(CustodyError::Sighash(format!(
                "{} inputs, {} spent outputs and {} key paths",
                tx.input.len(),
                spent.len(),
                paths.len()
            )));
        }
        let secp = Secp256k1::new();
        let mut account = self.account(&secp)?;
        let result = self.sign_with_account(&secp, &account, tx, spent, paths);
        account.private_key.non_secure_erase();
        let signed = result?;
        crate::taproot::verify_spend(&signed, spent)?;
        *tx = signed;
        Ok(())
    }

    /// Signs the 32-byte `message` (BIP-340, under the BIP-86 output key of `account/branch/index`) — a proof that
    /// the exchange controls the coins at `script` (a proof of reserves). Refuses when `script` is not that key's
    /// output script, so the hot key never attests to an address that is not its own.
    pub fn sign_message(
        &self,
        branch: u32,
        index: u32,
        script: &ScriptBuf,
        message: &[u8; 32],
    ) -> Result<[u8; 64], CustodyError> {
        let secp = Secp256k1::new();
        let mut account = self.account(&secp)?;
        let keypair = self.spend_keypair(&secp, &account, branch, index);
        account.private_key.non_secure_erase();
        let mut keypair = keypair?;
        let ours = ScriptBuf::new_p2tr_tweaked(keypair.x_only_public_key().0.dangerous_assume_tweaked());
        if &ours != script {
            keypair.non_secure_erase();
            return Err(CustodyError::HotKey("the address to attest to is not this key's".into()));
        }
        let mut aux = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(aux.as_mut());
        let signature = secp.sign_schnorr_with_aux_rand(&Message::from_digest(*message), &keypair, &aux).serialize();
        keypair.non_secure_erase();
        Ok(signature)
    }

    fn sign_with_account<C: Signing + Verification>(
        &self,
        secp: &Secp256k1<C>,
        account: &Xpriv,
        tx: &Transaction,
        spent: &[TxOut],
        paths: &[(u32, u32)],
    ) -> Result<Transaction, CustodyError> {
        let mut keys = Vec::with_capacity(paths.len());
        for (input, (&(branch, index), output)) in paths.iter().zip(spent).enumerate() {
            let keypair = self.spend_keypair(secp, account, branch, index)?;
            let ours = ScriptBuf::new_p2tr_tweaked(keypair.x_only_public_key().0.dangerous_assume_tweaked());
            if ours != output.script_pubkey {
                for mut k in keys {
                    Keypair::non_secure_erase(&mut k);
                }
                return Err(CustodyError::ForeignInput(input));
            }
            keys.push(keypair);
        }
        let mut cache = SighashCache::new(tx);
        let mut signatures = Vec::with_capacity(keys.len());
        for (input, keypair) in keys.iter().enumerate() {
            let sighash = cache
                .taproot_key_spend_signature_hash(input, &Prevouts::All(spent), TapSighashType::Default)
                .map_err(|e| CustodyError::Sighash(e.to_string()))?;
            let mut aux = Zeroizing::new([0u8; 32]);
            OsRng.fill_bytes(aux.as_mut());
            let message = Message::from_digest(sighash.to_byte_array());
            signatures.push(secp.sign_schnorr_with_aux_rand(&message, keypair, &aux).serialize());
        }
        for mut k in keys {
            k.non_secure_erase();
        }
        let mut signed = tx.clone();
        crate::taproot::attach_key_spend_signatures(&mut signed, &signatures)?;
        Ok(signed)
    }
}

/// The hot wallet seen from its account xpub: every address, no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOnly {
    account: Xpub,
    network: Network,
}

impl WatchOnly {
    /// Parses an account xpub ([`HotKey::account_xpub`]) for `network`; a key of the other network kind (main or
    /// test) is refused.
    pub fn parse(xpub: &str, network: Network) -> Result<WatchOnly, CustodyError> {
        let account: Xpub = xpub.trim().parse().map_err(|_| hot_err("not an extended public key"))?;
        if account.network != NetworkKind::from(network) {
            return Err(hot_err("the xpub is for another network"));
        }
        if account.depth != 3 {
            return Err(hot_err("not an account-level (depth 3) xpub"));
        }
        Ok(WatchOnly { account, network })
    }

    /// The network addresses are shown for.
    pub fn network(&self) -> Network {
        self.network
    }

    fn address_at<C: Verification>(
        &self,
        secp: &Secp256k1<C>,
        branch: u32,
        index: u32,
    ) -> Result<Address, CustodyError> {
        let child = self.account.derive_pub(secp, &[normal(branch)?, normal(index)?]).map_err(hot_err)?;
        Ok(Address::p2tr(secp, child.to_x_only_pub(), None, self.network))
    }

    /// The BIP-86 address of `account/branch/index` (the child key tweaked with an empty script tree).
    pub fn address(&self, branch: u32, index: u32) -> Result<Address, CustodyError> {
        self.address_at(&Secp256k1::verification_only(), branch, index)
    }

    /// The output script of [`WatchOnly::address`].
    pub fn script(&self, branch: u32, index: u32) -> Result<ScriptBuf, CustodyError> {
        Ok(self.address(branch, index)?.script_pubkey())
    }
}
