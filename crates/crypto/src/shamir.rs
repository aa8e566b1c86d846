//! Initialisation and unsealing: the root key split into Shamir shares.

use std::collections::BTreeMap;
use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{CryptoRng, OsRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::CryptoError;
use crate::keyring::RootKey;

const SHARE_PREFIX: &str = "rampart-share-v1";
const ROOT_CHECK_PLAINTEXT: &[u8] = b"rampart root key check v1";

/// The public facts of an initialisation, stored in the database: enough to recognise its shares and to check that
/// a reconstructed root key is the right one, and nothing that helps reconstruct it.
#[derive(Clone, PartialEq, Eq)]
pub struct SealConfig {
    /// A random identifier of this initialisation; every share carries it.
    pub init_id: [u8; 16],
    /// How many shares were made.
    pub shares: u8,
    /// How many shares unseal.
    pub threshold: u8,
    /// A known plaintext encrypted under the root key: it decrypts only with the right root key.
    pub root_check: Vec<u8>,
}

impl fmt::Debug for SealConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealConfig")
            .field("init_id", &hex::encode(self.init_id))
            .field("shares", &self.shares)
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

/// One custodian's unseal share. Secret: it never appears in `Debug` output and is zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct UnsealShare {
    init_id: [u8; 16],
    threshold: u8,
    /// The share as `vsss-rs` makes it: the share's x-coordinate, then one y byte per secret byte.
    bytes: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for UnsealShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnsealShare({} of init {}, <redacted>)", self.index(), hex::encode(self.init_id))
    }
}

impl UnsealShare {
    /// The share's number, 1 to the share count.
    pub fn index(&self) -> u8 {
        self.bytes.first().copied().unwrap_or(0)
    }

    /// The share as text for a custodian to keep: `rampart-share-v1:<init>:<index>:<threshold>:<data>:<checksum>`.
    /// The checksum catches a mistyped or damaged share before it is combined.
    pub fn to_text(&self) -> Zeroizing<String> {
        let body = Zeroizing::new(format!(
            "{SHARE_PREFIX}:{}:{}:{}:{}",
            hex::encode(self.init_id),
            self.index(),
            self.threshold,
            hex::encode(&self.bytes[1..])
        ));
        let checksum = &Sha256::digest(body.as_bytes())[..4];
        Zeroizing::new(format!("{}:{}", body.as_str(), hex::encode(checksum)))
    }

    /// Parses a share written by [`UnsealShare::to_text`]; surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<UnsealShare, CryptoError> {
        let text = text.trim();
        let (body, checksum) = text.rsplit_once(':').ok_or(CryptoError::MalformedShare("no checksum"))?;
        let parts: Vec<&str> = body.split(':').collect();
        let [prefix, init, index, threshold, data] = parts[..] else {
            return Err(CryptoError::MalformedShare(
                "expected rampart-share-v1:<init>:<index>:<threshold>:<data>:<sum>",
            ));
        };
        if prefix != SHARE_PREFIX {
            return Err(CryptoError::MalformedShare("not a rampart-share-v1 share"));
        }
        let index: u8 = index.parse().map_err(|_| CryptoError::MalformedShare("the index is not a number"))?;
        let expected = Sha256::digest(body.as_bytes());
        let given = hex::decode(checksum).map_err(|_| CryptoError::MalformedShare("the checksum is not hex"))?;
        if given.len() != 4 || given[..] != expected[..4] {
            return Err(CryptoError::ShareChecksum { index });
        }
        let threshold: u8 =
            threshold.parse().map_err(|_| CryptoError::MalformedShare("the threshold is not a number"))?;
        let init_id: [u8; 16] = hex::decode(init)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(CryptoError::MalformedShare("the initialisation id is not 16 hex bytes"))?;
        let mut data = hex::decode(data).map_err(|_| CryptoError::MalformedShare("the share data is not hex"))?;
        if data.len() != 32 || index == 0 {
            data.zeroize();
            return Err(CryptoError::MalformedShare("wrong share length or index"));
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(33));
        bytes.push(index);
        bytes.extend_from_slice(&data);
        data.zeroize();
        Ok(UnsealShare { init_id, threshold, bytes })
    }
}

/// Creates a new root key and splits it into `shares` unseal shares of which `threshold` reconstruct it.
///
/// The shares are returned once and stored nowhere: the caller hands each to a different custodian.
pub fn initialise(
    shares: u8,
    threshold: u8,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(SealConfig, RootKey, Vec<UnsealShare>), CryptoError> {
    if threshold < 2 || threshold > shares {
        return Err(CryptoError::InvalidSharing(format!(
            "the threshold must be at least 2 and at most the share count (asked {threshold} of {shares})"
        )));
    }
    let root = RootKey::generate(rng);
    let mut init_id = [0u8; 16];
    rng.fill_bytes(&mut init_id);
    let split = vsss_rs::Gf256::split_array(usize::from(threshold), usize::from(shares), root.expose(), &mut *rng)
        .map_err(|e| CryptoError::InvalidSharing(format!("{e:?}")))?;
    let unseal_shares =
        split.into_iter().map(|bytes| UnsealShare { init_id, threshold, bytes: Zeroizing::new(bytes) }).collect();
    let root_check = root_check(&root, &init_id);
    Ok((SealConfig { init_id, shares, threshold, root_check }, root, unseal_shares))
}

fn root_check(root: &RootKey, init_id: &[u8; 16]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(root.expose().into());
    let mut nonce = [0u8; 24];
    OsRng.fill_bytes(&mut nonce);
    let sealed = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: ROOT_CHECK_PLAINTEXT, aad: init_id })
        .expect("encrypting a short plaintext cannot fail");
    [nonce.as_slice(), &sealed].concat()
}

fn root_check_passes(root: &RootKey, config: &SealConfig) -> bool {
    if config.root_check.len() < 24 {
        return false;
    }
    let (nonce, sealed) = config.root_check.split_at(24);
    let cipher = XChaCha20Poly1305::new(root.expose().into());
    cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &config.init_id }).is_ok()
}

/// Where unsealing stands.
#[derive(Debug)]
pub enum UnsealProgress {
    /// More shares are needed.
    Progress {
        /// Shares received so far.
        received: u8,
        /// Shares needed.
        threshold: u8,
    },
    /// The root key, reconstructed and checked.
    Unsealed(RootKey),
}

/// Collects unseal shares until enough arrive, then reconstructs and checks the root key.
pub struct Unsealer {
    config: SealConfig,
    received: BTreeMap<u8, UnsealShare>,
}

impl fmt::Debug for Unsealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unsealer").field("config", &self.config).field("received", &self.received.len()).finish()
    }
}

impl Unsealer {
    /// An unsealer for this initialisation, with no share yet.
    pub fn new(config: SealConfig) -> Unsealer {
        Unsealer { config, received: BTreeMap::new() }
    }

    /// The initialisation it unseals.
    pub fn config(&self) -> &SealConfig {
        &self.config
    }

    /// Shares received so far.
    pub fn received(&self) -> u8 {
        self.received.len() as u8
    }

    /// Forgets every share received.
    pub fn reset(&mut self) {
        self.received.clear();
    }

    /// Adds a share. A share of another initialisation, a damaged share or a repeated share is refused and changes
    /// nothing; a full set that does not reconstruct the root key resets the progress.
    pub fn submit(&mut self, share: UnsealShare) -> Result<UnsealProgress, CryptoError> {
        let index = share.index();
        if share.init_id != self.config.init_id {
            return Err(CryptoError::WrongInitialisation { index });
        }
        if share.threshold != self.config.threshold || index > self.config.shares {
            return Err(CryptoError::MalformedShare("the share's threshold or index does not match this seal"));
        }
        if self.received.contains_key(&index) {
            return Err(CryptoError::DuplicateShare { index });
        }
        self.received.insert(index, share);
        let threshold = self.config.threshold;
        if self.received() < threshold {
            return Ok(UnsealProgress::Progress { received: self.received(), threshold });
        }
        let parts: Vec<Vec<u8>> = self.received.values().map(|s| s.bytes.to_vec()).collect();
        let parts = Zeroizing::new(parts);
        let combined = vsss_rs::Gf256::combine_array(&*parts).map(Zeroizing::new);
        self.received.clear();
        let Ok(secret) = combined else { return Err(CryptoError::SharesDoNotReconstruct) };
        let root = RootKey::from_slice(&secret).ok_or(CryptoError::SharesDoNotReconstruct)?;
        if !root_check_passes(&root, &self.config) {
            return Err(CryptoError::SharesDoNotReconstruct);
        }
        Ok(UnsealProgress::Unsealed(root))
    }
}
