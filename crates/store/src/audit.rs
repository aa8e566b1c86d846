//! Appending to the audit log inside the transaction of the change it records, and reading it back.

use rampart_audit::{
    AuditEntry, AuditRecord, Checkpoint, GENESIS_HASH, Outcome, SignedHead, checkpoint_message, head_message,
};

use crate::StoreError;

/// Something that signs audit checkpoints and heads: the keyring, once the seal is open.
pub trait AuditSigner: Send + Sync {
    /// An Ed25519 signature of `message`.
    fn sign(&self, message: &[u8]) -> [u8; 64];
}

impl AuditSigner for rampart_crypto::Keyring {
    fn sign(&self, message: &[u8]) -> [u8; 64] {
        rampart_crypto::Keyring::sign(self, message)
    }
}

/// How audited commands sign and checkpoint.
#[derive(Clone, Copy)]
pub struct Auditor<'a> {
    /// Signs the head after every append and a checkpoint every `checkpoint_every` entries.
    pub signer: &'a dyn AuditSigner,
    /// Entries between signed checkpoints.
    pub checkpoint_every: u64,
}

/// Who did an audited command, and when.
#[derive(Clone, Copy)]
pub struct AuditedBy<'a> {
    /// The signer and checkpoint policy.
    pub auditor: Auditor<'a>,
    /// The actor (`staff:3`, `operator`, `system`).
    pub actor: &'a str,
    /// If set, the nanoseconds spent appending the audit entry inside the command's transaction are added here
    /// (for `rampart bench audit`: what the audit adds to a transaction, without the commit they share).
    pub spent_ns: Option<&'a std::sync::atomic::AtomicU64>,
}

impl<'a> AuditedBy<'a> {
    /// A command by `actor`, signed by `auditor`.
    pub fn new(auditor: Auditor<'a>, actor: &'a str) -> AuditedBy<'a> {
        AuditedBy { auditor, actor, spent_ns: None }
    }

    pub(crate) fn add_spent(&self, started: std::time::Instant) {
        if let Some(total) = self.spent_ns {
            let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            total.fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Filters for reading the log back.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Entries after this sequence number.
    pub after_seq: u64,
    /// Entries up to and including this sequence number.
    pub through_seq: Option<u64>,
    /// Entries at or after this time.
    pub from_ns: Option<u64>,
    /// Entries before this time.
    pub until_ns: Option<u64>,
    /// Entries of this actor.
    pub actor: Option<String>,
    /// Entries of this action.
    pub action: Option<String>,
}

/// The operations of an open write transaction that appends to the log.
pub(crate) trait AuditTx {
    /// Locks the head (ordering every append after the previous one) and returns the last `(seq, hash)`.
    async fn lock_audit_head(&mut self) -> Result<(u64, [u8; 32]), StoreError>;
    /// Inserts a checkpoint.
    async fn insert_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), StoreError>;
    /// The sequence number of the latest checkpoint (0 if none).
    async fn last_checkpoint_seq(&mut self) -> Result<u64, StoreError>;
    /// Inserts entries and writes the signed head after them.
    async fn append_entries(&mut self, entries: &[AuditEntry], head: &SignedHead) -> Result<(), StoreError>;
}

/// Signs a checkpoint at the current head if entries were appended since the last one: the time-based half of the
/// checkpoint policy ("every N entries or T seconds"), so that a quiet log is still covered by a signature.
pub(crate) async fn checkpoint_head<T: AuditTx>(
    tx: &mut T,
    auditor: &Auditor<'_>,
    now_ns: u64,
) -> Result<Option<u64>, StoreError> {
    let (seq, hash) = tx.lock_audit_head().await?;
    if seq == 0 || tx.last_checkpoint_seq().await? >= seq {
        return Ok(None);
    }
    let signature = auditor.signer.sign(&checkpoint_message(seq, &hash, now_ns));
    tx.insert_checkpoint(&Checkpoint { seq, hash, time_ns: now_ns, signature }).await?;
    Ok(Some(seq))
}

/// Appends `records` in order inside `tx`: chains them, signs a checkpoint at every multiple of the interval, and
/// signs the new head. If anything fails, the caller's transaction (and so the change being recorded) fails.
pub(crate) async fn append<T: AuditTx>(
    tx: &mut T,
    records: Vec<AuditRecord>,
    auditor: &Auditor<'_>,
) -> Result<Vec<AuditEntry>, StoreError> {
    let head = tx.lock_audit_head().await?;
    append_after(tx, head, records, auditor).await
}

/// [`append`] after `head`, the `(seq, hash)` the caller read under the head's lock earlier in `tx` (with a statement
/// that had more to do: a round trip saved).
pub(crate) async fn append_after<T: AuditTx>(
    tx: &mut T,
    head: (u64, [u8; 32]),
    records: Vec<AuditRecord>,
    auditor: &Auditor<'_>,
) -> Result<Vec<AuditEntry>, StoreError> {
    let (mut seq, mut prev) = head;
    let mut entries = Vec::with_capacity(records.len());
    let mut checkpoints = Vec::new();
    for record in records {
        let entry = AuditEntry::next(seq, prev, record);
        (seq, prev) = (entry.seq, entry.hash);
        if auditor.checkpoint_every > 0 && seq.is_multiple_of(auditor.checkpoint_every) {
            let time_ns = entry.record.time_ns;
            let signature = auditor.signer.sign(&checkpoint_message(seq, &prev, time_ns));
            checkpoints.push(Checkpoint { seq, hash: prev, time_ns, signature });
        }
        entries.push(entry);
    }
    let signature = auditor.signer.sign(&head_message(seq, &prev));
    tx.append_entries(&entries, &SignedHead { seq, hash: prev, signature }).await?;
    for checkpoint in &checkpoints {
        tx.insert_checkpoint(checkpoint).await?;
    }
    Ok(entries)
}

/// Appends the record of an audited command inside its transaction, adding the time it took to `by.spent_ns`.
pub(crate) async fn append_for<T: AuditTx>(
    tx: &mut T,
    record: AuditRecord,
    by: &AuditedBy<'_>,
) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    append(tx, vec![record], &by.auditor).await?;
    by.add_spent(started);
    Ok(())
}

/// The head of an empty log.
pub(crate) fn genesis() -> (u64, [u8; 32]) {
    (0, GENESIS_HASH)
}

/// The record of a batch of transfers: one entry per batch, naming every transfer it applied.
pub(crate) fn transfers_record(
    actor: &str,
    now_ns: u64,
    batch: &[rampart_ledger::NewTransfer],
    results: &[rampart_ledger::CreateTransferResult],
) -> AuditRecord {
    let applied: Vec<String> = batch
        .iter()
        .zip(results)
        .filter(|(_, r)| **r == rampart_ledger::CreateTransferResult::Ok)
        .map(|(t, _)| t.id.to_string())
        .collect();
    let details = [
        ("applied".to_owned(), applied.len().to_string()),
        ("refused".to_owned(), (batch.len() - applied.len()).to_string()),
        ("ids".to_owned(), applied.join(",")),
    ];
    AuditRecord {
        time_ns: now_ns,
        actor: actor.to_owned(),
        action: "ledger.transfers.create".to_owned(),
        target: "ledger".to_owned(),
        outcome: if applied.is_empty() { Outcome::Failure } else { Outcome::Success },
        details: details.into_iter().collect(),
    }
}

/// The record of a batch of account creations.
pub(crate) fn accounts_record(
    actor: &str,
    now_ns: u64,
    batch: &[rampart_ledger::NewAccount],
    results: &[rampart_ledger::CreateAccountResult],
) -> AuditRecord {
    let created: Vec<String> = batch
        .iter()
        .zip(results)
        .filter(|(_, r)| **r == rampart_ledger::CreateAccountResult::Ok)
        .map(|(a, _)| a.id.to_string())
        .collect();
    let details = [
        ("created".to_owned(), created.len().to_string()),
        ("refused".to_owned(), (batch.len() - created.len()).to_string()),
        ("ids".to_owned(), created.join(",")),
    ];
    AuditRecord {
        time_ns: now_ns,
        actor: actor.to_owned(),
        action: "ledger.accounts.create".to_owned(),
        target: "ledger".to_owned(),
        outcome: if created.is_empty() { Outcome::Failure } else { Outcome::Success },
        details: details.into_iter().collect(),
    }
}

/// Decodes a stored entry.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_entry(
    seq: i64,
    time_ns: i64,
    actor: String,
    action: String,
    target: String,
    outcome: &str,
    details: &str,
    prev_hash: &[u8],
    hash: &[u8],
) -> Result<AuditEntry, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("audit entry {seq}: {what}"));
    Ok(AuditEntry {
        seq: u64::try_from(seq).map_err(|_| corrupt("sequence"))?,
        record: AuditRecord {
            time_ns: u64::try_from(time_ns).map_err(|_| corrupt("time"))?,
            actor,
            action,
            target,
            outcome: Outcome::parse(outcome).ok_or_else(|| corrupt("outcome"))?,
            details: serde_json::from_str(details).map_err(|_| corrupt("details"))?,
        },
        prev_hash: prev_hash.try_into().map_err(|_| corrupt("previous hash"))?,
        hash: hash.try_into().map_err(|_| corrupt("hash"))?,
    })
}

/// Encodes details for storage (JSON: the hash covers the map itself, not this text).
pub(crate) fn encode_details(entry: &AuditEntry) -> String {
    serde_json::to_string(&entry.record.details).expect("a string map serialises")
}

fn bytes<const N: usize>(what: &str, b: &[u8]) -> Result<[u8; N], StoreError> {
    b.try_into().map_err(|_| StoreError::Corrupt(format!("{what}: {} bytes", b.len())))
}

fn unsigned(what: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what}: {v}")))
}

pub(crate) fn decode_head_position(seq: i64, hash: &[u8]) -> Result<(u64, [u8; 32]), StoreError> {
    Ok((unsigned("audit head", seq)?, bytes("audit head hash", hash)?))
}

pub(crate) fn decode_head(seq: i64, hash: &[u8], signature: &[u8]) -> Result<SignedHead, StoreError> {
    let (seq, hash) = decode_head_position(seq, hash)?;
    Ok(SignedHead { seq, hash, signature: bytes("audit head signature", signature)? })
}

pub(crate) fn decode_checkpoint(
    seq: i64,
    hash: &[u8],
    time_ns: i64,
    signature: &[u8],
) -> Result<Checkpoint, StoreError> {
    Ok(Checkpoint {
        seq: unsigned("checkpoint", seq)?,
        hash: bytes("checkpoint hash", hash)?,
        time_ns: unsigned("checkpoint time", time_ns)?,
        signature: bytes("checkpoint signature", signature)?,
    })
}

pub(crate) fn decode_seal(
    init_id: &[u8],
    shares: i64,
    threshold: i64,
    root_check: Vec<u8>,
) -> Result<rampart_crypto::SealConfig, StoreError> {
    let small = |what: &str, v: i64| u8::try_from(v).map_err(|_| StoreError::Corrupt(format!("seal {what}: {v}")));
    Ok(rampart_crypto::SealConfig {
        init_id: bytes("seal init id", init_id)?,
        shares: small("shares", shares)?,
        threshold: small("threshold", threshold)?,
        root_check,
    })
}

pub(crate) fn decode_key(
    purpose: &str,
    version: i64,
    wrapped: Vec<u8>,
) -> Result<rampart_crypto::WrappedKey, StoreError> {
    Ok(rampart_crypto::WrappedKey {
        purpose: rampart_crypto::KeyPurpose::parse(purpose)
            .ok_or_else(|| StoreError::Corrupt(format!("key purpose {purpose:?}")))?,
        version: u32::try_from(version).map_err(|_| StoreError::Corrupt(format!("key version {version}")))?,
        wrapped,
    })
}

pub(crate) fn decode_public_key(b: &[u8]) -> Result<[u8; 32], StoreError> {
    bytes("audit public key", b)
}

/// Entries read per query when verifying.
pub(crate) const VERIFY_PAGE_LEN: u64 = 25_000;

/// A filter value as a `BIGINT`, saturating: a filter beyond the representable range simply matches nothing more.
pub(crate) fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Ends verification. An initialised database always has a signed head (initialisation itself is audited), so a
/// missing head, even with an empty log, means the log was wiped.
pub(crate) fn finish(
    verifier: rampart_audit::Verifier,
    head: Option<SignedHead>,
    initialised: bool,
) -> rampart_audit::VerifyReport {
    let mut report = verifier.finish(head.as_ref());
    if head.is_none() && initialised && report.finding.is_none() {
        report.finding = Some(rampart_audit::Finding {
            seq: 1,
            kind: rampart_audit::FindingKind::Truncated,
            message: "the database is initialised but its audit log has no signed head (wiped)".into(),
        });
    }
    report
}

/// `records`, each with `key` = `id` among its details (the id a command's insert just assigned).
pub(crate) fn tagged(mut records: Vec<AuditRecord>, key: &str, id: i64) -> Vec<AuditRecord> {
    for r in &mut records {
        r.details.insert(key.into(), id.to_string());
    }
    records
}
