//! The hash chain, its signed checkpoints and head, and verification.

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// The encoding version written first in every hashed entry; a new encoding gets a new version.
const ENCODING_V1: &[u8] = b"rampart-audit-entry-v1\0";

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It happened.
    Success,
    /// Authorisation refused it.
    Denied,
    /// It was attempted and failed (a wrong password, a bad second factor).
    Failure,
}

impl Outcome {
    /// A stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failure => "failure",
        }
    }

    /// The outcome named `s`.
    pub fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "success" => Outcome::Success,
            "denied" => Outcome::Denied,
            "failure" => Outcome::Failure,
            _ => return None,
        })
    }
}

/// What happened, as the caller records it. Sensitive detail values must already be keyed hashes (see
/// `Keyring::blind_index`); the log itself is not encrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When, in nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// Who: `staff:<id>`, `operator`, `system`, `anonymous`.
    pub actor: String,
    /// What, as `area.object.verb`: `ledger.transfer.create`, `staff.role.grant`, `auth.sign_in`.
    pub action: String,
    /// On what: `transfer:<id>`, `staff:<id>`, `-`.
    pub target: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Further facts, sorted by key.
    pub details: BTreeMap<String, String>,
}

/// An entry of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 1, 2, 3, … without gaps.
    pub seq: u64,
    /// What happened.
    #[serde(flatten)]
    pub record: AuditRecord,
    /// The previous entry's hash ([`GENESIS_HASH`] for the first).
    #[serde(with = "hex_bytes")]
    pub prev_hash: [u8; 32],
    /// SHA-256 of this entry's canonical encoding, which includes `prev_hash`.
    #[serde(with = "hex_bytes")]
    pub hash: [u8; 32],
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(&s)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| serde::de::Error::custom("expected 32 bytes of hex"))
    }
}

fn put(buf: &mut Vec<u8>, field: &[u8]) {
    // Length-prefixed, so that no two different field lists encode to the same bytes.
    buf.extend_from_slice(&(field.len() as u32).to_be_bytes());
    buf.extend_from_slice(field);
}

/// The hash of entry `seq` holding `record` after an entry whose hash is `prev_hash`: SHA-256 over the canonical,
/// versioned encoding (sequence number, time, actor, action, target, outcome, details in key order, previous hash).
pub fn entry_hash(seq: u64, record: &AuditRecord, prev_hash: &[u8; 32]) -> [u8; 32] {
    let mut buf = Vec::with_capacity(160 + record.details.len() * 48);
    buf.extend_from_slice(ENCODING_V1);
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&record.time_ns.to_be_bytes());
    put(&mut buf, record.actor.as_bytes());
    put(&mut buf, record.action.as_bytes());
    put(&mut buf, record.target.as_bytes());
    put(&mut buf, record.outcome.as_str().as_bytes());
    buf.extend_from_slice(&(record.details.len() as u32).to_be_bytes());
    for (key, value) in &record.details {
        put(&mut buf, key.as_bytes());
        put(&mut buf, value.as_bytes());
    }
    buf.extend_from_slice(prev_hash);
    Sha256::digest(&buf).into()
}

impl AuditEntry {
    /// The entry that follows an entry `(prev_seq, prev_hash)` (or `(0, GENESIS_HASH)` for the first).
    pub fn next(prev_seq: u64, prev_hash: [u8; 32], record: AuditRecord) -> AuditEntry {
        let seq = prev_seq + 1;
        let hash = entry_hash(seq, &record, &prev_hash);
        AuditEntry { seq, record, prev_hash, hash }
    }
}

/// A signed statement that the chain up to `seq` has hash `hash`: rewriting anything before it would need the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The entry it covers.
    pub seq: u64,
    /// That entry's hash.
    #[serde(with = "hex_bytes")]
    pub hash: [u8; 32],
    /// When it was signed.
    pub time_ns: u64,
    /// Ed25519 over [`checkpoint_message`].
    #[serde(with = "hex_signature")]
    pub signature: [u8; 64],
}

mod hex_signature {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(&s)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| serde::de::Error::custom("expected 64 bytes of hex"))
    }
}

/// The message a checkpoint signs.
pub fn checkpoint_message(seq: u64, hash: &[u8; 32], time_ns: u64) -> Vec<u8> {
    [b"rampart-audit-checkpoint-v1\0".as_slice(), &seq.to_be_bytes(), hash, &time_ns.to_be_bytes()].concat()
}

/// The signed head: where the log ends, rewritten with every append. Deleting entries after the last checkpoint
/// leaves the head pointing past the end of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHead {
    /// The last entry.
    pub seq: u64,
    /// Its hash.
    pub hash: [u8; 32],
    /// Ed25519 over [`head_message`].
    pub signature: [u8; 64],
}

/// The message a head signs (a different domain from checkpoints, so neither can stand in for the other).
pub fn head_message(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    [b"rampart-audit-head-v1\0".as_slice(), &seq.to_be_bytes(), hash].concat()
}

/// What kind of tampering a finding indicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// An entry's content no longer matches its hash.
    Edited,
    /// An entry is missing.
    Deleted,
    /// An entry appears that the chain does not lead to (inserted, duplicated or moved).
    Inserted,
    /// Entries are out of order.
    Reordered,
    /// A checkpoint's signature is bad or it no longer matches the entry it covers.
    Checkpoint,
    /// The log ends before its signed head or last checkpoint.
    Truncated,
}

/// The first sign of tampering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The first bad sequence number.
    pub seq: u64,
    /// What it looks like.
    pub kind: FindingKind,
    /// A sentence for the auditor.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "entry {}: {}", self.seq, self.message)
    }
}

/// The result of verifying a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Entries read.
    pub entries: u64,
    /// Checkpoints whose signature and hash were checked.
    pub checkpoints: u64,
    /// The first problem, or `None` if the log is intact.
    pub finding: Option<Finding>,
}

/// Checks a log entry by entry, in `seq` order, against its checkpoints and signed head.
///
/// Streaming: entries are fed one at a time, so a log of any length verifies in constant memory.
pub struct Verifier {
    key: VerifyingKey,
    checkpoints: BTreeMap<u64, Checkpoint>,
    expected_seq: u64,
    prev_hash: [u8; 32],
    entries: u64,
    checkpoints_checked: u64,
    finding: Option<Finding>,
}

impl Verifier {
    /// A verifier trusting `public_key` (32 bytes, Ed25519) for these checkpoints.
    pub fn new(public_key: &[u8; 32], checkpoints: Vec<Checkpoint>) -> Result<Verifier, String> {
        let key = VerifyingKey::from_bytes(public_key).map_err(|_| "not an Ed25519 public key".to_owned())?;
        let mut by_seq = BTreeMap::new();
        let mut finding = None;
        for cp in checkpoints {
            let message = checkpoint_message(cp.seq, &cp.hash, cp.time_ns);
            if key.verify_strict(&message, &Signature::from_bytes(&cp.signature)).is_err() && finding.is_none() {
                finding = Some(Finding {
                    seq: cp.seq,
                    kind: FindingKind::Checkpoint,
                    message: "the checkpoint's signature is not valid".into(),
                });
            }
            by_seq.insert(cp.seq, cp);
        }
        Ok(Verifier {
            key,
            checkpoints: by_seq,
            expected_seq: 1,
            prev_hash: GENESIS_HASH,
            entries: 0,
            checkpoints_checked: 0,
            finding,
        })
    }

    fn flag(&mut self, seq: u64, kind: FindingKind, message: String) {
        if self.finding.as_ref().is_none_or(|f| seq < f.seq) {
            self.finding = Some(Finding { seq, kind, message });
        }
    }

    /// Feeds the next entry. Returns `false` once a problem is found (later entries add nothing).
    pub fn push(&mut self, entry: &AuditEntry) -> bool {
        // A finding made up front (a bad checkpoint signature) still lets the entries before it be checked.
        if self.finding.as_ref().is_some_and(|f| f.seq <= self.expected_seq) {
            return false;
        }
        self.entries += 1;
        let expected = self.expected_seq;
        if entry.seq > expected {
            self.flag(expected, FindingKind::Deleted, format!("missing: the next entry found is {}", entry.seq));
            return false;
        }
        if entry.seq < expected {
            let kind = if entry.seq + 1 == expected { FindingKind::Inserted } else { FindingKind::Reordered };
            self.flag(entry.seq, kind, format!("appears after entry {}", expected - 1));
            return false;
        }
        if entry.prev_hash != self.prev_hash {
            self.flag(entry.seq, FindingKind::Inserted, "does not follow the entry before it (chain broken)".into());
            return false;
        }
        let hash = entry_hash(entry.seq, &entry.record, &entry.prev_hash);
        if hash != entry.hash {
            self.flag(entry.seq, FindingKind::Edited, "its content does not match its hash (edited)".into());
            return false;
        }
        if let Some(cp) = self.checkpoints.get(&entry.seq) {
            if cp.hash != hash {
                self.flag(entry.seq, FindingKind::Checkpoint, "the signed checkpoint names another hash".into());
                return false;
            }
            self.checkpoints_checked += 1;
        }
        self.prev_hash = hash;
        self.expected_seq += 1;
        true
    }

    /// Ends verification: the log must reach its last checkpoint and its signed head.
    pub fn finish(mut self, head: Option<&SignedHead>) -> VerifyReport {
        let last = self.expected_seq - 1;
        if self.finding.is_none()
            && let Some((&cp_seq, _)) = self.checkpoints.last_key_value()
            && cp_seq > last
        {
            self.flag(last + 1, FindingKind::Truncated, format!("the log ends at {last}, before checkpoint {cp_seq}"));
        }
        if self.finding.is_none() {
            match head {
                Some(h) => {
                    let signed =
                        self.key.verify_strict(&head_message(h.seq, &h.hash), &Signature::from_bytes(&h.signature));
                    if signed.is_err() {
                        self.flag(h.seq, FindingKind::Checkpoint, "the signed head's signature is not valid".into());
                    } else if h.seq > last {
                        self.flag(
                            last + 1,
                            FindingKind::Truncated,
                            format!("the log ends at {last}, the head at {}", h.seq),
                        );
                    } else if h.seq < last {
                        self.flag(h.seq + 1, FindingKind::Inserted, format!("entries after the signed head {}", h.seq));
                    } else if h.hash != self.prev_hash {
                        self.flag(h.seq, FindingKind::Checkpoint, "the signed head names another hash".into());
                    }
                }
                None if last > 0 => self.flag(last, FindingKind::Truncated, "the signed head is missing".into()),
                None => {}
            }
        }
        VerifyReport { entries: self.entries, checkpoints: self.checkpoints_checked, finding: self.finding }
    }
}
