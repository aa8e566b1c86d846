//! Proof-of-reserves records: the consistent read of every customer's balances at one ledger point, and the
//! snapshots built from it.

use crate::audit::{self, Auditor};
use crate::backend::Pipe;
use crate::{Store, StoreError, ts};
use rampart_audit::AuditRecord;

/// Whose a liability is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LiabilityOwner {
    /// A customer, by their public handle.
    Customer(Vec<u8>),
    /// An account of the customers' code whose `user_data` names no customer (made by hand through the ledger API):
    /// still owed, so never dropped; named by its account id.
    Account(u128),
}

/// Every customer's balances at one ledger point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiabilitiesRead {
    /// The newest transfer's sequence number when the read began (0 for an empty ledger).
    pub ledger_seq: i64,
    /// (owner, asset, posted balance) for each account of the code with a positive balance.
    pub balances: Vec<(LiabilityOwner, String, u128)>,
    /// Accounts of the code with more debits than credits: they owe rather than are owed, and are left out rather
    /// than netted against the others (a proof of liabilities never nets one account against another).
    pub overdrawn: Vec<u128>,
}

/// A snapshot as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservesSnapshot {
    pub id: i64,
    pub name: String,
    pub ledger_seq: i64,
    pub created_at_ns: u64,
    pub created_by: String,
    /// The tree's parameters as JSON.
    pub params: String,
    pub root: Vec<u8>,
    /// The totals as a JSON array of decimal strings.
    pub totals: String,
    pub users: i64,
    /// `revealed` or `private`.
    pub form: String,
}

/// What a new snapshot stores.
pub struct NewReservesSnapshot<'a> {
    pub name: &'a str,
    pub ledger_seq: i64,
    pub created_by: &'a str,
    pub params: &'a str,
    pub root: &'a [u8],
    pub totals: &'a str,
    pub users: i64,
    /// The tree secret, already sealed.
    pub secret: &'a [u8],
    /// The builder's input, encoded.
    pub holdings: &'a [u8],
    /// The reserves' side: every address holding coins at the snapshot's block.
    pub attestations: &'a [Attestation],
    /// `revealed` or `private`.
    pub form: &'a str,
    /// The private form's publication (what verifiers download), encoded.
    pub publication: Option<&'a [u8]>,
}

/// One address of the reserves' side of a snapshot (docs/reserves-spec.md §9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    pub asset: String,
    pub script_pubkey: Vec<u8>,
    /// `cold`, `hot` or `deposit`.
    pub wallet: String,
    /// The block the balance is read at.
    pub height: u64,
    /// Its hash, hex, as Bitcoin displays it.
    pub block_hash: String,
    pub balance: u64,
    /// The outputs that make the balance: (`<txid>:<vout>`, value).
    pub outputs: Vec<(String, u64)>,
    /// The BIP-340 signature by the address's key over the statement, once made.
    pub signature: Option<Vec<u8>>,
    /// The custodians' signing session, for the cold wallet's address.
    pub ceremony_id: Option<i64>,
}

/// An output of the exchange's wallets on chain at a block (the reserves' side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveOutput {
    /// `cold`, `hot` or `deposit`.
    pub wallet: String,
    /// The hot key's derivation path of a hot or deposit output.
    pub path: Option<(u32, u32)>,
    pub script_pubkey: Vec<u8>,
    /// Its transaction id as Bitcoin displays it, hex.
    pub txid: String,
    pub vout: u32,
    pub value: u64,
}

/// wallet, branch, idx, script_pubkey, txid, vout, value.
type OutputRow = (String, Option<i64>, Option<i64>, Vec<u8>, Vec<u8>, i64, i64);

const ATTESTATION_COLUMNS: &str =
    "asset, script_pubkey, wallet, height, block_hash, balance, outputs, signature, ceremony_id";

type AttestationRow = (String, Vec<u8>, String, i64, String, i64, String, Option<Vec<u8>>, Option<i64>);

fn attestation(row: AttestationRow) -> Result<Attestation, StoreError> {
    let (asset, script_pubkey, wallet, height, block_hash, balance, outputs, signature, ceremony_id) = row;
    let outputs: Vec<(String, u64)> = serde_json::from_str(&outputs)
        .map_err(|e| StoreError::Corrupt(format!("the outputs of an attestation of {asset}: {e}")))?;
    Ok(Attestation {
        asset,
        script_pubkey,
        wallet,
        height: u64::try_from(height).unwrap_or(0),
        block_hash,
        balance: u64::try_from(balance).unwrap_or(0),
        outputs,
        signature,
        ceremony_id,
    })
}

const SNAPSHOT_COLUMNS: &str = "id, name, ledger_seq, created_at, created_by, params, root, totals, users, form";

type SnapshotRow = (i64, String, i64, i64, String, String, Vec<u8>, String, i64, String);

fn snapshot(row: SnapshotRow) -> ReservesSnapshot {
    let (id, name, ledger_seq, created_at, created_by, params, root, totals, users, form) = row;
    ReservesSnapshot {
        id,
        name,
        ledger_seq,
        created_at_ns: u64::try_from(created_at).unwrap_or(0),
        created_by,
        params,
        root,
        totals,
        users,
        form,
    }
}

impl Store {
    /// Every customer's posted balance in each of their accounts of `account_code`, with their handles, in one
    /// consistent read (a repeatable-read, read-only transaction on PostgreSQL; one read transaction on SQLite's WAL),
    /// while writers go on. A pending hold still counts: the funds are owed until the withdrawal is confirmed.
    pub async fn read_liabilities(&self, account_code: u16) -> Result<LiabilitiesRead, StoreError> {
        let (ledger_seq, accounts, customers) = match self {
            Store::Sqlite(s) => s.liabilities(account_code).await?,
            Store::Postgres(s) => s.liabilities(account_code).await?,
        };
        let handles: std::collections::HashMap<i64, Vec<u8>> = customers.into_iter().collect();
        let mut balances = Vec::with_capacity(accounts.len());
        let mut overdrawn = Vec::new();
        for account in accounts {
            let Some(balance) = account.credits_posted.checked_sub(account.debits_posted) else {
                overdrawn.push(account.id.get());
                continue;
            };
            if balance.is_zero() {
                continue;
            }
            let owner = match i64::try_from(account.user_data).ok().and_then(|c| handles.get(&c)) {
                Some(handle) => LiabilityOwner::Customer(handle.clone()),
                None => LiabilityOwner::Account(account.id.get()),
            };
            balances.push((owner, account.asset.as_str().to_owned(), balance.units()));
        }
        Ok(LiabilitiesRead { ledger_seq, balances, overdrawn })
    }

    /// Records a snapshot with its audit entries; `None` when the name is taken (nothing is written).
    pub async fn insert_reserves_snapshot(
        &self,
        new: &NewReservesSnapshot<'_>,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<Option<i64>, StoreError> {
        let taken: Option<i64> = on_reader!(self, |pool, sql| {
            sqlx::query_scalar(&sql("SELECT id FROM reserves_snapshots WHERE name = $1"))
                .bind(new.name)
                .fetch_optional(pool)
                .await?
        });
        if taken.is_some() {
            return Ok(None);
        }
        on_backend!(self, |tx, sql| {
            let id: i64 = sqlx::query_scalar(&sql(
                "INSERT INTO reserves_snapshots (name, ledger_seq, created_at, created_by, params, root, totals, \
                 users, secret, holdings, form, publication) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
                 $12) RETURNING id",
            ))
            .bind(new.name)
            .bind(new.ledger_seq)
            .bind(ts(now_ns))
            .bind(new.created_by)
            .bind(new.params)
            .bind(new.root)
            .bind(new.totals)
            .bind(new.users)
            .bind(new.secret)
            .bind(new.holdings)
            .bind(new.form)
            .bind(new.publication)
            .fetch_one(&mut *tx.0)
            .await?;
            for a in new.attestations {
                let outputs = serde_json::to_string(&a.outputs).expect("strings and numbers serialise");
                sqlx::query(&sql(&format!(
                    "INSERT INTO reserves_attestations (snapshot_id, {ATTESTATION_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                )))
                .bind(id)
                .bind(&a.asset)
                .bind(&a.script_pubkey)
                .bind(&a.wallet)
                .bind(i64::try_from(a.height).map_err(|_| StoreError::Corrupt("a block height out of range".into()))?)
                .bind(&a.block_hash)
                .bind(i64::try_from(a.balance).map_err(|_| StoreError::Corrupt("a balance out of range".into()))?)
                .bind(outputs)
                .bind(&a.signature)
                .bind(a.ceremony_id)
                .execute(&mut *tx.0)
                .await?;
            }
            audit::append(&mut tx, audit::tagged(records, "reserves_snapshot", id), auditor).await?;
            Some(id)
        })
        .pipe(Ok)
    }

    /// Snapshots, newest first.
    pub async fn reserves_snapshots(&self, limit: u32) -> Result<Vec<ReservesSnapshot>, StoreError> {
        let rows: Vec<SnapshotRow> = on_reader!(self, |pool, sql| {
            sqlx::query_as(&sql(&format!(
                "SELECT {SNAPSHOT_COLUMNS} FROM reserves_snapshots ORDER BY id DESC LIMIT $1"
            )))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().map(snapshot).collect())
    }

    /// One snapshot by name.
    pub async fn reserves_snapshot(&self, name: &str) -> Result<Option<ReservesSnapshot>, StoreError> {
        let row: Option<SnapshotRow> = on_reader!(self, |pool, sql| {
            sqlx::query_as(&sql(&format!("SELECT {SNAPSHOT_COLUMNS} FROM reserves_snapshots WHERE name = $1")))
                .bind(name)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(snapshot))
    }

    /// A snapshot's sealed secret and encoded holdings, to rebuild its tree.
    pub async fn reserves_snapshot_material(&self, name: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
        on_reader!(self, |pool, sql| {
            sqlx::query_as(&sql("SELECT secret, holdings FROM reserves_snapshots WHERE name = $1"))
                .bind(name)
                .fetch_optional(pool)
                .await?
        })
        .pipe(Ok)
    }

    /// A private snapshot's publication (encoded); `None` for a revealed one or an unknown name.
    pub async fn reserves_publication(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row: Option<Option<Vec<u8>>> = on_reader!(self, |pool, sql| {
            sqlx::query_scalar(&sql("SELECT publication FROM reserves_snapshots WHERE name = $1"))
                .bind(name)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.flatten())
    }

    /// The reserves' side of a snapshot, by asset and address.
    pub async fn reserves_attestations(&self, snapshot_id: i64) -> Result<Vec<Attestation>, StoreError> {
        let rows: Vec<AttestationRow> = on_reader!(self, |pool, sql| {
            sqlx::query_as(&sql(&format!(
                "SELECT {ATTESTATION_COLUMNS} FROM reserves_attestations WHERE snapshot_id = $1 \
                 ORDER BY asset, wallet, script_pubkey"
            )))
            .bind(snapshot_id)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(attestation).collect()
    }

    /// Names the signing session that is to sign an attestation still unsigned; `false` if it is signed or in
    /// another open session already.
    pub async fn set_reserves_attestation_ceremony(
        &self,
        snapshot_id: i64,
        asset: &str,
        script_pubkey: &[u8],
        ceremony_id: i64,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            let updated = sqlx::query(&sql(
                "UPDATE reserves_attestations SET ceremony_id = $1 WHERE snapshot_id = $2 AND asset = $3 \
                 AND script_pubkey = $4 AND signature IS NULL AND (ceremony_id IS NULL OR ceremony_id IN \
                 (SELECT id FROM ceremonies WHERE state <> 'open'))",
            ))
            .bind(ceremony_id)
            .bind(snapshot_id)
            .bind(asset)
            .bind(script_pubkey)
            .execute(&mut *tx.0)
            .await?
            .rows_affected();
            updated == 1
        })
        .pipe(Ok)
    }

    /// Every output of the exchange's wallets for `asset` on chain at block `height`: confirmed at or below it and not
    /// spent by a transaction confirmed at or below it (a spend still in the mempool does not count).
    pub async fn reserve_outputs(&self, asset: &str, height: u64) -> Result<Vec<ReserveOutput>, StoreError> {
        let height = i64::try_from(height).map_err(|_| StoreError::Corrupt("a block height out of range".into()))?;
        let rows: Vec<OutputRow> = on_reader!(self, |pool, sql| {
            sqlx::query_as(&sql("SELECT wallet, branch, idx, script_pubkey, txid, vout, value FROM custody_utxos \
                 WHERE asset = $1 AND height <= $2 AND (spent_height IS NULL OR spent_height > $2) \
                 ORDER BY wallet, script_pubkey, txid, vout"))
            .bind(asset)
            .bind(height)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(wallet, branch, idx, script_pubkey, txid, vout, value)| ReserveOutput {
                wallet,
                path: match (branch, idx) {
                    (Some(b), Some(i)) => Some((u32::try_from(b).unwrap_or(0), u32::try_from(i).unwrap_or(0))),
                    _ => None,
                },
                script_pubkey,
                txid: crate::txid_text(&txid),
                vout: u32::try_from(vout).unwrap_or(0),
                value: u64::try_from(value).unwrap_or(0),
            })
            .collect())
    }
}
