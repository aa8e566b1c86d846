//! Custody records: custodians, wallets, the ceremonies the server relays, deposit addresses, what the chain watcher
//! has seen, the transactions the exchange makes, and refill proposals. Every change that matters is audited in its
//! own transaction; the once-only rules (one message per sender and round, the first signers of a session, one
//! approval per person, one active wallet per asset and kind) are enforced by the database itself.

#![allow(clippy::too_many_arguments)] // each audited command takes its auditor and records besides its data

use rampart_audit::AuditRecord;

use crate::audit::{self, Auditor};
use crate::backend::Pipe;
use crate::{Store, StoreError, ts};

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn i(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{v} does not fit a 64-bit column")))
}

/// Inserts a custody transaction and reserves the outputs it spends inside a transaction of [`on_backend!`]:
/// `Some(id)`, or `None` when an output is reserved already (the caller then drops the transaction, which rolls back
/// what this wrote).
macro_rules! insert_custody_tx {
    ($tx:ident, $sql:ident, $new:expr, $spends:expr, $now:expr) => {
        'insert: {
            let new: &CustodyTx = $new;
            let id: i64 = sqlx::query_scalar(&$sql(
                "INSERT INTO custody_txs (asset, kind, txid, tx, prevouts, to_cold, to_hot, fee, state, ceremony_id, \
                 created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING id",
            ))
            .bind(&new.asset)
            .bind(&new.kind)
            .bind(&new.txid)
            .bind(&new.tx)
            .bind(&new.prevouts)
            .bind(i(new.to_cold)?)
            .bind(i(new.to_hot)?)
            .bind(i(new.fee)?)
            .bind(&new.state)
            .bind(new.ceremony_id)
            .bind(ts($now))
            .fetch_one(&mut *$tx.0)
            .await?;
            let spends: &[(Vec<u8>, u32)] = $spends;
            for (txid, vout) in spends {
                let reserved = sqlx::query(&$sql(
                    "UPDATE custody_utxos SET spent_by = $1 WHERE asset = $2 AND txid = $3 AND vout = $4 \
                     AND spent_by IS NULL",
                ))
                .bind(&new.txid)
                .bind(&new.asset)
                .bind(txid)
                .bind(i64::from(*vout))
                .execute(&mut *$tx.0)
                .await?
                .rows_affected();
                if reserved != 1 {
                    break 'insert None;
                }
            }
            Some(id)
        }
    };
}

/// Audit records about custody transaction `id` (whose id is known only once it is inserted).
pub(crate) fn about_custody_tx(records: Vec<AuditRecord>, id: i64) -> Vec<AuditRecord> {
    records
        .into_iter()
        .map(|mut r| {
            r.target = format!("custody_tx:{id}");
            r
        })
        .collect()
}

/// A custodian: a staff member who holds shares of cold keys, known by their identity keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustodianRecord {
    /// The id.
    pub id: i64,
    /// The staff account.
    pub staff_id: i64,
    /// The name shown to others (the staff username).
    pub name: String,
    /// Ed25519 public key that signs their ceremony messages.
    pub signing_key: Vec<u8>,
    /// X25519 public key that secret packages are encrypted to.
    pub exchange_key: Vec<u8>,
    /// `pending`, `active` or `retired`.
    pub status: String,
}

type CustodianRow = (i64, i64, String, Vec<u8>, Vec<u8>, String);

fn custodian((id, staff_id, name, signing_key, exchange_key, status): CustodianRow) -> CustodianRecord {
    CustodianRecord { id, staff_id, name, signing_key, exchange_key, status }
}

const CUSTODIAN_COLUMNS: &str = "id, staff_id, name, signing_key, exchange_key, status";

/// A wallet: a cold threshold key or a hot key.
#[derive(Clone, PartialEq, Eq)]
pub struct WalletRecord {
    /// The id.
    pub id: i64,
    /// The asset.
    pub asset: String,
    /// `cold` or `hot`.
    pub kind: String,
    /// `active` or `retired`.
    pub status: String,
    /// The cold key's version.
    pub epoch: u64,
    /// Signers needed (cold).
    pub threshold: Option<u64>,
    /// The wallet's output script.
    pub script_pubkey: Vec<u8>,
    /// The FROST public key package (cold).
    pub public_package: Option<Vec<u8>>,
    /// The extended private key, encrypted (hot).
    pub hot_key: Option<Vec<u8>>,
    /// The account-level xpub (hot).
    pub account_xpub: Option<String>,
}

impl std::fmt::Debug for WalletRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalletRecord")
            .field("id", &self.id)
            .field("asset", &self.asset)
            .field("kind", &self.kind)
            .field("status", &self.status)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

type WalletRow =
    (i64, String, String, String, i64, Option<i64>, Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>, Option<String>);

fn wallet(r: WalletRow) -> WalletRecord {
    WalletRecord {
        id: r.0,
        asset: r.1,
        kind: r.2,
        status: r.3,
        epoch: u(r.4),
        threshold: r.5.map(u),
        script_pubkey: r.6,
        public_package: r.7,
        hot_key: r.8,
        account_xpub: r.9,
    }
}

const WALLET_COLUMNS: &str =
    "id, asset, kind, status, epoch, threshold, script_pubkey, public_package, hot_key, account_xpub";

/// A member of a cold key: the identifier of their share and who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// The FROST identifier (1, 2, …).
    pub identifier: u16,
    /// The custodian.
    pub custodian_id: i64,
}

/// What a completed key ceremony leaves behind.
#[derive(Clone)]
pub enum KeyOutcome {
    /// A new cold wallet (key generation).
    NewWallet {
        /// Its output script.
        script_pubkey: Vec<u8>,
        /// Its public key package.
        public_package: Vec<u8>,
        /// Its members.
        members: Vec<Member>,
    },
    /// A new epoch of an existing key (refresh, removal): new verifying shares, possibly fewer members.
    NewEpoch {
        /// The new public key package (same group key).
        public_package: Vec<u8>,
        /// The members of the new epoch.
        members: Vec<Member>,
    },
    /// Nothing changes in the wallet (a repair restores a share the wallet already counts).
    Unchanged,
    /// A signing session's transaction, now signed and verified.
    Signed {
        /// The custody transaction.
        custody_tx_id: i64,
        /// The signed transaction, consensus-encoded.
        tx: Vec<u8>,
    },
    /// A signing session's proof-of-reserves statement, now signed (BIP-340) and verified.
    Attested {
        /// The signature.
        signature: Vec<u8>,
    },
}

/// A ceremony as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CeremonyRecord {
    /// The id.
    pub id: i64,
    /// `dkg`, `refresh`, `repair`, `remove` or `sign`.
    pub kind: String,
    /// The asset.
    pub asset: String,
    /// The wallet it works on (all but a key generation).
    pub wallet_id: Option<i64>,
    /// `open`, `completed`, `failed` or `expired`.
    pub state: String,
    /// Signers needed.
    pub threshold: u64,
    /// The participants, as JSON.
    pub roster: String,
    /// Kind-specific parameters, as JSON.
    pub params: String,
    /// Why it failed.
    pub failure: Option<String>,
    /// Who created it.
    pub created_by: String,
    /// When it stops accepting messages.
    pub expires_at_ns: u64,
}

type CeremonyRow = (i64, String, String, Option<i64>, String, i64, String, String, Option<String>, String, i64);

fn ceremony(r: CeremonyRow) -> CeremonyRecord {
    CeremonyRecord {
        id: r.0,
        kind: r.1,
        asset: r.2,
        wallet_id: r.3,
        state: r.4,
        threshold: u(r.5),
        roster: r.6,
        params: r.7,
        failure: r.8,
        created_by: r.9,
        expires_at_ns: u(r.10),
    }
}

const CEREMONY_COLUMNS: &str =
    "id, kind, asset, wallet_id, state, threshold, roster, params, failure, created_by, expires_at";

/// A ceremony to create.
#[derive(Debug, Clone)]
pub struct NewCeremony {
    /// Its kind.
    pub kind: String,
    /// The asset.
    pub asset: String,
    /// The wallet (all but a key generation).
    pub wallet_id: Option<i64>,
    /// Signers needed.
    pub threshold: u64,
    /// The participants, as JSON.
    pub roster: String,
    /// Parameters, as JSON.
    pub params: String,
    /// Who creates it.
    pub created_by: String,
    /// When it expires.
    pub expires_at_ns: u64,
}

/// One relayed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CeremonyMessage {
    /// The round (`round1`, `round2`, `confirm`, `commit`, `share`, …).
    pub round: String,
    /// The sender's identifier.
    pub sender: u16,
    /// The recipient's identifier; 0 for everyone.
    pub recipient: u16,
    /// The payload (encrypted when addressed to one participant).
    pub payload: Vec<u8>,
    /// The sender's Ed25519 signature.
    pub signature: Vec<u8>,
}

type MessageRow = (String, i64, i64, Vec<u8>, Vec<u8>);

/// What happened to a posted message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostOutcome {
    /// Stored.
    Stored,
    /// The same message was already stored (a retry).
    Duplicate,
    /// A different message from the same sender for the same round and recipient exists: refused.
    Conflict,
    /// The ceremony is not open.
    Closed,
    /// The round already has as many senders as it accepts (a signing session's signers are fixed).
    Full,
}

/// A customer's deposit address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepositAddress {
    /// The id.
    pub id: i64,
    /// The customer.
    pub customer_id: i64,
    /// The asset.
    pub asset: String,
    /// The derivation index.
    pub index: u32,
    /// The output script.
    pub script_pubkey: Vec<u8>,
    /// The address.
    pub address: String,
}

/// An output that pays one of our scripts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Utxo {
    /// The transaction id (internal byte order).
    pub txid: Vec<u8>,
    /// The output index.
    pub vout: u32,
    /// `cold`, `hot` or `deposit`.
    pub wallet: String,
    /// Derivation branch and index (hot and deposit outputs).
    pub path: Option<(u32, u32)>,
    /// The script.
    pub script_pubkey: Vec<u8>,
    /// Satoshis.
    pub value: u64,
    /// The block height that confirmed it.
    pub height: u64,
    /// Our transaction that spends it, if any.
    pub spent_by: Option<Vec<u8>>,
}

type UtxoRow = (Vec<u8>, i64, String, Option<i64>, Option<i64>, Vec<u8>, i64, i64, Option<Vec<u8>>);

fn utxo(r: UtxoRow) -> Utxo {
    let path = match (r.3, r.4) {
        (Some(b), Some(i)) => Some((u32::try_from(b).unwrap_or(0), u32::try_from(i).unwrap_or(0))),
        _ => None,
    };
    Utxo {
        txid: r.0,
        vout: u32::try_from(r.1).unwrap_or(0),
        wallet: r.2,
        path,
        script_pubkey: r.5,
        value: u(r.6),
        height: u(r.7),
        spent_by: r.8,
    }
}

const UTXO_COLUMNS: &str = "txid, vout, wallet, branch, idx, script_pubkey, value, height, spent_by";

/// A deposit seen on chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDeposit {
    /// The transaction id.
    pub txid: Vec<u8>,
    /// The output index.
    pub vout: u32,
    /// The deposit address.
    pub address_id: i64,
    /// The customer credited.
    pub customer_id: i64,
    /// Satoshis.
    pub amount: u64,
    /// The block height that confirmed it.
    pub height: u64,
    /// `pending`, `credited`, `dust`, `reversed`, `orphaned`, or after screening its sources `held` (for compliance),
    /// `released` (to be credited) or `refused` (never credited).
    pub state: String,
}

type DepositRow = (Vec<u8>, i64, i64, i64, i64, i64, String);

fn deposit(r: DepositRow) -> ChainDeposit {
    ChainDeposit {
        txid: r.0,
        vout: u32::try_from(r.1).unwrap_or(0),
        address_id: r.2,
        customer_id: r.3,
        amount: u(r.4),
        height: u(r.5),
        state: r.6,
    }
}

const DEPOSIT_COLUMNS: &str = "txid, vout, address_id, customer_id, amount, height, state";

/// What the watcher found in one block.
#[derive(Debug, Clone, Default)]
pub struct BlockFindings {
    /// New outputs paying our scripts.
    pub outputs: Vec<Utxo>,
    /// Of those, the customer deposits (the address and customer of each).
    pub deposits: Vec<ChainDeposit>,
    /// Our outputs spent in this block: (txid, vout, spending txid).
    pub spends: Vec<(Vec<u8>, u32, Vec<u8>)>,
    /// Transactions in the block (to mark our own as confirmed).
    pub txids: Vec<Vec<u8>>,
    /// The addresses that funded the deposit transactions: (txid, address), screened before a deposit is credited.
    pub sources: Vec<(Vec<u8>, String)>,
}

/// A transaction the exchange makes.
#[derive(Clone, PartialEq, Eq)]
pub struct CustodyTx {
    /// The id.
    pub id: i64,
    /// The asset.
    pub asset: String,
    /// `sweep` or `refill`.
    pub kind: String,
    /// The transaction id.
    pub txid: Vec<u8>,
    /// The transaction, consensus-encoded (signed once signed).
    pub tx: Vec<u8>,
    /// The outputs it spends, consensus-encoded as a vector of outputs.
    pub prevouts: Vec<u8>,
    /// Satoshis to the cold wallet.
    pub to_cold: u64,
    /// Satoshis to the hot wallet.
    pub to_hot: u64,
    /// The network fee.
    pub fee: u64,
    /// `signing`, `signed`, `broadcast`, `confirmed` or `failed`.
    pub state: String,
    /// The signing session, for a refill.
    pub ceremony_id: Option<i64>,
    /// Why it failed.
    pub failure: Option<String>,
}

impl std::fmt::Debug for CustodyTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustodyTx")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("state", &self.state)
            .field("to_cold", &self.to_cold)
            .field("to_hot", &self.to_hot)
            .field("fee", &self.fee)
            .finish_non_exhaustive()
    }
}

type CustodyTxRow =
    (i64, String, String, Vec<u8>, Vec<u8>, Vec<u8>, i64, i64, i64, String, Option<i64>, Option<String>);

fn custody_tx(r: CustodyTxRow) -> CustodyTx {
    CustodyTx {
        id: r.0,
        asset: r.1,
        kind: r.2,
        txid: r.3,
        tx: r.4,
        prevouts: r.5,
        to_cold: u(r.6),
        to_hot: u(r.7),
        fee: u(r.8),
        state: r.9,
        ceremony_id: r.10,
        failure: r.11,
    }
}

const CUSTODY_TX_COLUMNS: &str =
    "id, asset, kind, txid, tx, prevouts, to_cold, to_hot, fee, state, ceremony_id, failure";

/// A refill from cold to hot, waiting for approvals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefillProposal {
    /// The id.
    pub id: i64,
    /// The asset.
    pub asset: String,
    /// Satoshis to move to the hot wallet.
    pub amount: u64,
    /// Why.
    pub reason: String,
    /// Who proposed it (`staff:<id>` or `system`).
    pub proposed_by: String,
    /// `pending`, `approved`, `rejected` or `done`.
    pub state: String,
    /// The signing session, once approved.
    pub ceremony_id: Option<i64>,
    /// Staff ids who approved.
    pub approvals: Vec<i64>,
}

type RefillRow = (i64, String, i64, String, String, String, Option<i64>);

/// The outcome of an approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefillDecision {
    /// Counted; more are needed.
    Recorded(RefillProposal),
    /// The quorum is reached: the proposal is approved.
    Approved(RefillProposal),
    /// No such proposal.
    NotFound,
    /// Not pending any more.
    NotPending,
    /// The proposer cannot approve their own proposal.
    OwnProposal,
    /// This person already approved.
    AlreadyApproved,
}

/// Balances and counts of one asset's custody, from the outputs the watcher has recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustodyBalances {
    /// Unspent satoshis per wallet, and their output counts: cold, hot, deposit.
    pub cold: (u64, u64),
    /// Hot.
    pub hot: (u64, u64),
    /// Deposit addresses.
    pub deposit: (u64, u64),
    /// Satoshis on their way to cold and to hot in our own transactions not yet confirmed.
    pub in_flight_to_cold: u64,
    /// To hot.
    pub in_flight_to_hot: u64,
    /// Sweeps not yet confirmed.
    pub pending_sweeps: u64,
    /// Refill proposals not yet done.
    pub pending_refills: u64,
    /// Deposits waiting for confirmations.
    pub pending_deposits: u64,
}

impl Store {
    /// Registers a staff member as a custodian with their identity keys, `pending` until an administrator
    /// activates them. `None` if they are registered already or the key is someone else's.
    pub async fn register_custodian(
        &self,
        staff_id: i64,
        name: &str,
        signing_key: &[u8],
        exchange_key: &[u8],
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<Option<i64>, StoreError> {
        on_backend!(self, |tx, sql| {
            let id: Result<i64, sqlx::Error> = sqlx::query_scalar(&sql(
                "INSERT INTO custodians (staff_id, name, signing_key, exchange_key, status, created_at) \
                 VALUES ($1, $2, $3, $4, 'pending', $5) RETURNING id",
            ))
            .bind(staff_id)
            .bind(name)
            .bind(signing_key)
            .bind(exchange_key)
            .bind(ts(now_ns))
            .fetch_one(&mut *tx.0)
            .await;
            let id = match id {
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(None),
                other => other?,
            };
            audit::append(&mut tx, records, auditor).await?;
            Some(id)
        })
        .pipe(Ok)
    }

    /// Sets a custodian's status (`active`, `retired`). `false` if there is no such custodian.
    pub async fn set_custodian_status(
        &self,
        id: i64,
        status: &str,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            let changed = sqlx::query(&sql("UPDATE custodians SET status = $1 WHERE id = $2"))
                .bind(status)
                .bind(id)
                .execute(&mut *tx.0)
                .await?
                .rows_affected();
            if changed == 1 {
                audit::append(&mut tx, records, auditor).await?;
            }
            changed == 1
        })
        .pipe(Ok)
    }

    /// Every custodian, by id.
    pub async fn custodians(&self) -> Result<Vec<CustodianRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!("SELECT {CUSTODIAN_COLUMNS} FROM custodians ORDER BY id"));
            let rows: Vec<CustodianRow> = sqlx::query_as(&q).fetch_all(pool).await?;
            Ok(rows.into_iter().map(custodian).collect())
        })
    }

    /// The custodian record of a staff member.
    pub async fn custodian_of_staff(&self, staff_id: i64) -> Result<Option<CustodianRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!("SELECT {CUSTODIAN_COLUMNS} FROM custodians WHERE staff_id = $1"));
            let row: Option<CustodianRow> = sqlx::query_as(&q).bind(staff_id).fetch_optional(pool).await?;
            Ok(row.map(custodian))
        })
    }

    /// Creates the hot wallet of an asset (its key encrypted by the caller). `None` if one is active already.
    pub async fn create_hot_wallet(
        &self,
        asset: &str,
        script_pubkey: &[u8],
        hot_key: &[u8],
        account_xpub: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<Option<i64>, StoreError> {
        on_backend!(self, |tx, sql| {
            let id: Result<i64, sqlx::Error> = sqlx::query_scalar(&sql(
                "INSERT INTO custody_wallets (asset, kind, status, epoch, script_pubkey, hot_key, account_xpub, \
                 created_at) VALUES ($1, 'hot', 'active', 1, $2, $3, $4, $5) RETURNING id",
            ))
            .bind(asset)
            .bind(script_pubkey)
            .bind(hot_key)
            .bind(account_xpub)
            .bind(ts(now_ns))
            .fetch_one(&mut *tx.0)
            .await;
            let id = match id {
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(None),
                other => other?,
            };
            audit::append(&mut tx, records, auditor).await?;
            Some(id)
        })
        .pipe(Ok)
    }

    /// Replaces a wallet's encrypted hot key (re-encryption under a new data key).
    pub async fn rewrap_hot_key(&self, wallet_id: i64, hot_key: &[u8]) -> Result<(), StoreError> {
        on_backend!(self, |tx, sql| {
            sqlx::query(&sql("UPDATE custody_wallets SET hot_key = $1 WHERE id = $2 AND kind = 'hot'"))
                .bind(hot_key)
                .bind(wallet_id)
                .execute(&mut *tx.0)
                .await?;
        });
        Ok(())
    }

    /// The active wallet of an asset and kind.
    pub async fn active_wallet(&self, asset: &str, kind: &str) -> Result<Option<WalletRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!(
                "SELECT {WALLET_COLUMNS} FROM custody_wallets WHERE asset = $1 AND kind = $2 AND status = 'active'"
            ));
            let row: Option<WalletRow> = sqlx::query_as(&q).bind(asset).bind(kind).fetch_optional(pool).await?;
            Ok(row.map(wallet))
        })
    }

    /// The wallet with this id.
    pub async fn wallet(&self, id: i64) -> Result<Option<WalletRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!("SELECT {WALLET_COLUMNS} FROM custody_wallets WHERE id = $1"));
            let row: Option<WalletRow> = sqlx::query_as(&q).bind(id).fetch_optional(pool).await?;
            Ok(row.map(wallet))
        })
    }

    /// Every wallet, by id.
    pub async fn wallets(&self) -> Result<Vec<WalletRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!("SELECT {WALLET_COLUMNS} FROM custody_wallets ORDER BY id"));
            let rows: Vec<WalletRow> = sqlx::query_as(&q).fetch_all(pool).await?;
            Ok(rows.into_iter().map(wallet).collect())
        })
    }

    /// The members of a cold wallet's epoch, by identifier.
    pub async fn wallet_members(&self, wallet_id: i64, epoch: u64) -> Result<Vec<Member>, StoreError> {
        on_reader!(self, |pool, sql| {
            let rows: Vec<(i64, i64)> = sqlx::query_as(&sql(
                "SELECT identifier, custodian_id FROM wallet_members WHERE wallet_id = $1 AND epoch = $2 \
                 ORDER BY identifier",
            ))
            .bind(wallet_id)
            .bind(i(epoch)?)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(identifier, custodian_id)| Member {
                    identifier: u16::try_from(identifier).unwrap_or(0),
                    custodian_id,
                })
                .collect())
        })
    }

    /// Creates a ceremony, audited.
    pub async fn create_ceremony(
        &self,
        new: &NewCeremony,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<i64, StoreError> {
        on_backend!(self, |tx, sql| {
            let id: i64 = sqlx::query_scalar(&sql(
                "INSERT INTO ceremonies (kind, asset, wallet_id, state, threshold, roster, params, created_by, \
                 created_at, expires_at) VALUES ($1, $2, $3, 'open', $4, $5, $6, $7, $8, $9) RETURNING id",
            ))
            .bind(&new.kind)
            .bind(&new.asset)
            .bind(new.wallet_id)
            .bind(i(new.threshold)?)
            .bind(&new.roster)
            .bind(&new.params)
            .bind(&new.created_by)
            .bind(ts(now_ns))
            .bind(ts(new.expires_at_ns))
            .fetch_one(&mut *tx.0)
            .await?;
            let records = records
                .into_iter()
                .map(|mut r| {
                    r.target = format!("ceremony:{id}");
                    r
                })
                .collect();
            audit::append(&mut tx, records, auditor).await?;
            id
        })
        .pipe(Ok)
    }

    /// The ceremony with this id.
    pub async fn ceremony(&self, id: i64) -> Result<Option<CeremonyRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!("SELECT {CEREMONY_COLUMNS} FROM ceremonies WHERE id = $1"));
            let row: Option<CeremonyRow> = sqlx::query_as(&q).bind(id).fetch_optional(pool).await?;
            Ok(row.map(ceremony))
        })
    }

    /// Ceremonies, newest first, optionally only open ones.
    pub async fn ceremonies(&self, open_only: bool, limit: u32) -> Result<Vec<CeremonyRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let filter = if open_only { "WHERE state = 'open'" } else { "" };
            let q = sql(&format!("SELECT {CEREMONY_COLUMNS} FROM ceremonies {filter} ORDER BY id DESC LIMIT $1"));
            let rows: Vec<CeremonyRow> = sqlx::query_as(&q).bind(i64::from(limit)).fetch_all(pool).await?;
            Ok(rows.into_iter().map(ceremony).collect())
        })
    }

    /// Stores a relayed message once. With `max_senders`, the round accepts messages from at most that many
    /// distinct senders (the first ones win: a signing session's signers). The ceremony row is locked, so
    /// concurrent posts are counted exactly.
    pub async fn post_ceremony_message(
        &self,
        ceremony_id: i64,
        message: &CeremonyMessage,
        max_senders: Option<u16>,
        now_ns: u64,
    ) -> Result<PostOutcome, StoreError> {
        let lock = if matches!(self, Store::Postgres(_)) { " FOR UPDATE" } else { "" };
        on_backend!(self, |tx, sql| {
            let state: Option<(String, i64)> =
                sqlx::query_as(&sql(&format!("SELECT state, expires_at FROM ceremonies WHERE id = $1{lock}")))
                    .bind(ceremony_id)
                    .fetch_optional(&mut *tx.0)
                    .await?;
            match state {
                Some((state, expires)) if state == "open" && expires > ts(now_ns) => {}
                _ => return Ok(PostOutcome::Closed),
            }
            let existing: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(&sql(
                "SELECT payload, signature FROM ceremony_messages WHERE ceremony_id = $1 AND round = $2 \
                 AND sender = $3 AND recipient = $4",
            ))
            .bind(ceremony_id)
            .bind(&message.round)
            .bind(i64::from(message.sender))
            .bind(i64::from(message.recipient))
            .fetch_optional(&mut *tx.0)
            .await?;
            if let Some((payload, _)) = existing {
                return Ok(if payload == message.payload { PostOutcome::Duplicate } else { PostOutcome::Conflict });
            }
            if let Some(max) = max_senders {
                let senders: Vec<i64> = sqlx::query_scalar(&sql(
                    "SELECT DISTINCT sender FROM ceremony_messages WHERE ceremony_id = $1 AND round = $2",
                ))
                .bind(ceremony_id)
                .bind(&message.round)
                .fetch_all(&mut *tx.0)
                .await?;
                if !senders.contains(&i64::from(message.sender)) && senders.len() >= usize::from(max) {
                    return Ok(PostOutcome::Full);
                }
            }
            sqlx::query(&sql(
                "INSERT INTO ceremony_messages (ceremony_id, round, sender, recipient, payload, signature, \
                 created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            ))
            .bind(ceremony_id)
            .bind(&message.round)
            .bind(i64::from(message.sender))
            .bind(i64::from(message.recipient))
            .bind(&message.payload)
            .bind(&message.signature)
            .bind(ts(now_ns))
            .execute(&mut *tx.0)
            .await?;
            PostOutcome::Stored
        })
        .pipe(Ok)
    }

    /// The messages of a ceremony that `reader` may see (broadcasts and those addressed to them; `None`: all), in
    /// round, sender, recipient order.
    pub async fn ceremony_messages(
        &self,
        ceremony_id: i64,
        reader: Option<u16>,
    ) -> Result<Vec<CeremonyMessage>, StoreError> {
        on_reader!(self, |pool, sql| {
            let rows: Vec<MessageRow> =
                sqlx::query_as(&sql("SELECT round, sender, recipient, payload, signature FROM ceremony_messages \
                 WHERE ceremony_id = $1 AND ($2 < 0 OR recipient = 0 OR recipient = $2) \
                 ORDER BY round, sender, recipient"))
                .bind(ceremony_id)
                .bind(reader.map_or(-1, i64::from))
                .fetch_all(pool)
                .await?;
            Ok(rows
                .into_iter()
                .map(|(round, sender, recipient, payload, signature)| CeremonyMessage {
                    round,
                    sender: u16::try_from(sender).unwrap_or(0),
                    recipient: u16::try_from(recipient).unwrap_or(0),
                    payload,
                    signature,
                })
                .collect())
        })
    }

    /// Fails an open ceremony with a reason, audited; a refill transaction it was signing fails too and its
    /// outputs are released. `false` if it was not open.
    pub async fn fail_ceremony(
        &self,
        id: i64,
        reason: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            let changed = sqlx::query(&sql(
                "UPDATE ceremonies SET state = 'failed', failure = $1 WHERE id = $2 AND state = 'open'",
            ))
            .bind(reason)
            .bind(id)
            .execute(&mut *tx.0)
            .await?
            .rows_affected();
            if changed != 1 {
                return Ok(false);
            }
            let txids: Vec<Vec<u8>> =
                sqlx::query_scalar(&sql("UPDATE custody_txs SET state = 'failed', failure = $1, updated_at = $2 \
                 WHERE ceremony_id = $3 AND state = 'signing' RETURNING txid"))
                .bind(reason)
                .bind(ts(now_ns))
                .bind(id)
                .fetch_all(&mut *tx.0)
                .await?;
            for txid in txids {
                sqlx::query(&sql("UPDATE custody_utxos SET spent_by = NULL WHERE spent_by = $1"))
                    .bind(txid)
                    .execute(&mut *tx.0)
                    .await?;
            }
            sqlx::query(&sql("UPDATE refill_proposals SET state = 'approved', ceremony_id = NULL \
                 WHERE ceremony_id = $1 AND state = 'approved'"))
            .bind(id)
            .execute(&mut *tx.0)
            .await?;
            audit::append(&mut tx, records, auditor).await?;
            true
        })
        .pipe(Ok)
    }

    /// Completes an open ceremony with its outcome, in one audited transaction. `false` if it was not open (someone
    /// else completed or failed it first).
    pub async fn complete_ceremony(
        &self,
        id: i64,
        outcome: &KeyOutcome,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<bool, StoreError> {
        let lock = if matches!(self, Store::Postgres(_)) { " FOR UPDATE" } else { "" };
        on_backend!(self, |tx, sql| {
            let row: Option<(String, String, Option<i64>, i64)> = sqlx::query_as(&sql(&format!(
                "SELECT state, asset, wallet_id, threshold FROM ceremonies WHERE id = $1{lock}"
            )))
            .bind(id)
            .fetch_optional(&mut *tx.0)
            .await?;
            let Some((state, asset, wallet_id, threshold)) = row else { return Ok(false) };
            if state != "open" {
                return Ok(false);
            }
            let members = |wallet_id: i64, epoch: i64, members: &[Member]| {
                members
                    .iter()
                    .map(move |m| (wallet_id, epoch, i64::from(m.identifier), m.custodian_id))
                    .collect::<Vec<_>>()
            };
            let mut rows = Vec::new();
            let mut wallet_created = None;
            match outcome {
                KeyOutcome::NewWallet { script_pubkey, public_package, members: list } => {
                    let wallet: Result<i64, sqlx::Error> = sqlx::query_scalar(&sql(
                        "INSERT INTO custody_wallets (asset, kind, status, epoch, threshold, script_pubkey, \
                         public_package, created_at) VALUES ($1, 'cold', 'active', 1, $2, $3, $4, $5) RETURNING id",
                    ))
                    .bind(&asset)
                    .bind(threshold)
                    .bind(script_pubkey)
                    .bind(public_package)
                    .bind(ts(now_ns))
                    .fetch_one(&mut *tx.0)
                    .await;
                    let wallet = match wallet {
                        // The asset has an active cold wallet already: this ceremony cannot replace it.
                        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(false),
                        other => other?,
                    };
                    rows = members(wallet, 1, list);
                    wallet_created = Some(wallet);
                    sqlx::query(&sql("UPDATE ceremonies SET wallet_id = $1 WHERE id = $2"))
                        .bind(wallet)
                        .bind(id)
                        .execute(&mut *tx.0)
                        .await?;
                }
                KeyOutcome::NewEpoch { public_package, members: list } => {
                    let wallet = wallet_id.ok_or_else(|| StoreError::Corrupt("a refresh without a wallet".into()))?;
                    let epoch: i64 = sqlx::query_scalar(&sql(
                        "UPDATE custody_wallets SET epoch = epoch + 1, public_package = $1 WHERE id = $2 \
                         RETURNING epoch",
                    ))
                    .bind(public_package)
                    .bind(wallet)
                    .fetch_one(&mut *tx.0)
                    .await?;
                    rows = members(wallet, epoch, list);
                }
                KeyOutcome::Unchanged => {}
                KeyOutcome::Signed { custody_tx_id, tx: signed } => {
                    sqlx::query(&sql(
                        "UPDATE custody_txs SET tx = $1, state = 'signed', updated_at = $2 WHERE id = $3 \
                         AND state = 'signing'",
                    ))
                    .bind(signed)
                    .bind(ts(now_ns))
                    .bind(custody_tx_id)
                    .execute(&mut *tx.0)
                    .await?;
                    sqlx::query(&sql("UPDATE refill_proposals SET state = 'done' WHERE ceremony_id = $1"))
                        .bind(id)
                        .execute(&mut *tx.0)
                        .await?;
                }
                KeyOutcome::Attested { signature } => {
                    sqlx::query(&sql(
                        "UPDATE reserves_attestations SET signature = $1 WHERE ceremony_id = $2 AND signature IS NULL",
                    ))
                    .bind(signature)
                    .bind(id)
                    .execute(&mut *tx.0)
                    .await?;
                }
            }
            for (wallet, epoch, identifier, custodian) in rows {
                sqlx::query(&sql(
                    "INSERT INTO wallet_members (wallet_id, epoch, identifier, custodian_id) VALUES ($1, $2, $3, $4)",
                ))
                .bind(wallet)
                .bind(epoch)
                .bind(identifier)
                .bind(custodian)
                .execute(&mut *tx.0)
                .await?;
            }
            sqlx::query(&sql("UPDATE ceremonies SET state = 'completed' WHERE id = $1"))
                .bind(id)
                .execute(&mut *tx.0)
                .await?;
            let records = match wallet_created {
                Some(w) => records
                    .into_iter()
                    .map(|mut r| {
                        r.details.insert("wallet_id".into(), w.to_string());
                        r
                    })
                    .collect(),
                None => records,
            };
            audit::append(&mut tx, records, auditor).await?;
            true
        })
        .pipe(Ok)
    }

    /// Marks open ceremonies past their expiry as expired (and fails the refills they were signing); answers their
    /// ids.
    pub async fn expire_ceremonies(&self, now_ns: u64) -> Result<Vec<i64>, StoreError> {
        let open: Vec<i64> = on_reader!(self, |pool, sql| {
            sqlx::query_scalar(&sql("SELECT id FROM ceremonies WHERE state = 'open' AND expires_at <= $1"))
                .bind(ts(now_ns))
                .fetch_all(pool)
                .await?
        });
        let mut expired = Vec::new();
        for id in open {
            let done = on_backend!(self, |tx, sql| {
                let changed = sqlx::query(&sql(
                    "UPDATE ceremonies SET state = 'expired', failure = 'expired' WHERE id = $1 AND state = 'open'",
                ))
                .bind(id)
                .execute(&mut *tx.0)
                .await?
                .rows_affected();
                let txids: Vec<Vec<u8>> = sqlx::query_scalar(&sql(
                    "UPDATE custody_txs SET state = 'failed', failure = 'expired', updated_at = $1 \
                     WHERE ceremony_id = $2 AND state = 'signing' RETURNING txid",
                ))
                .bind(ts(now_ns))
                .bind(id)
                .fetch_all(&mut *tx.0)
                .await?;
                for txid in txids {
                    sqlx::query(&sql("UPDATE custody_utxos SET spent_by = NULL WHERE spent_by = $1"))
                        .bind(txid)
                        .execute(&mut *tx.0)
                        .await?;
                }
                // As after a failure: the approved refill it was signing may take a new signing session.
                sqlx::query(&sql("UPDATE refill_proposals SET ceremony_id = NULL WHERE ceremony_id = $1 \
                     AND state = 'approved'"))
                .bind(id)
                .execute(&mut *tx.0)
                .await?;
                changed == 1
            });
            if done {
                expired.push(id);
            }
        }
        Ok(expired)
    }

    /// The customer's newest deposit address for an asset.
    pub async fn latest_deposit_address(
        &self,
        customer_id: i64,
        asset: &str,
    ) -> Result<Option<DepositAddress>, StoreError> {
        on_reader!(self, |pool, sql| {
            let row: Option<(i64, i64, Vec<u8>, String)> = sqlx::query_as(&sql(
                "SELECT id, idx, script_pubkey, address FROM deposit_addresses WHERE customer_id = $1 \
                 AND asset = $2 ORDER BY idx DESC LIMIT 1",
            ))
            .bind(customer_id)
            .bind(asset)
            .fetch_optional(pool)
            .await?;
            Ok(row.map(|(id, idx, script_pubkey, address)| DepositAddress {
                id,
                customer_id,
                asset: asset.to_owned(),
                index: u32::try_from(idx).unwrap_or(0),
                script_pubkey,
                address,
            }))
        })
    }

    /// Creates a deposit address at the next unused index of the asset (never reused, whoever asks), with
    /// `derive(index)` giving its script and address. Concurrent creations race on the unique index and retry.
    pub async fn create_deposit_address(
        &self,
        customer_id: i64,
        asset: &str,
        derive: &(dyn Fn(u32) -> Result<(Vec<u8>, String), StoreError> + Sync),
        now_ns: u64,
    ) -> Result<DepositAddress, StoreError> {
        for _ in 0..16 {
            let made: Option<DepositAddress> = on_backend!(self, |tx, sql| {
                let next: Option<i64> =
                    sqlx::query_scalar(&sql("SELECT MAX(idx) FROM deposit_addresses WHERE asset = $1"))
                        .bind(asset)
                        .fetch_one(&mut *tx.0)
                        .await?;
                let index = next.map_or(0, |n| n + 1);
                let index32 =
                    u32::try_from(index).map_err(|_| StoreError::Corrupt("deposit addresses exhausted".into()))?;
                let (script, address) = derive(index32)?;
                let id: Result<i64, sqlx::Error> = sqlx::query_scalar(&sql(
                    "INSERT INTO deposit_addresses (customer_id, asset, idx, script_pubkey, address, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                ))
                .bind(customer_id)
                .bind(asset)
                .bind(index)
                .bind(&script)
                .bind(&address)
                .bind(ts(now_ns))
                .fetch_one(&mut *tx.0)
                .await;
                match id {
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => None,
                    other => Some(DepositAddress {
                        id: other?,
                        customer_id,
                        asset: asset.to_owned(),
                        index: index32,
                        script_pubkey: script,
                        address,
                    }),
                }
            });
            if let Some(made) = made {
                return Ok(made);
            }
        }
        Err(StoreError::Corrupt("could not allocate a deposit address index".into()))
    }

    /// Every deposit address of an asset: (id, customer, index, script).
    pub async fn deposit_scripts(&self, asset: &str) -> Result<Vec<(i64, i64, u32, Vec<u8>)>, StoreError> {
        on_reader!(self, |pool, sql| {
            let rows: Vec<(i64, i64, i64, Vec<u8>)> = sqlx::query_as(&sql(
                "SELECT id, customer_id, idx, script_pubkey FROM deposit_addresses WHERE asset = $1",
            ))
            .bind(asset)
            .fetch_all(pool)
            .await?;
            Ok(rows.into_iter().map(|(a, c, i, s)| (a, c, u32::try_from(i).unwrap_or(0), s)).collect())
        })
    }

    /// The hash of the block the watcher recorded at `height`.
    pub async fn seen_block(&self, asset: &str, height: u64) -> Result<Option<Vec<u8>>, StoreError> {
        on_reader!(self, |pool, sql| {
            Ok(sqlx::query_scalar(&sql("SELECT hash FROM chain_blocks WHERE asset = $1 AND height = $2"))
                .bind(asset)
                .bind(i(height)?)
                .fetch_optional(pool)
                .await?)
        })
    }

    /// The highest block the watcher recorded.
    pub async fn seen_tip(&self, asset: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        on_reader!(self, |pool, sql| {
            let row: Option<(i64, Vec<u8>)> = sqlx::query_as(&sql(
                "SELECT height, hash FROM chain_blocks WHERE asset = $1 ORDER BY height DESC LIMIT 1",
            ))
            .bind(asset)
            .fetch_optional(pool)
            .await?;
            Ok(row.map(|(h, hash)| (u(h), hash)))
        })
    }

    /// Records one block and what it holds for us, in one transaction: new outputs, deposits (pending), spends of our
    /// outputs, and our transactions it confirms. `false` if the block at that height was recorded already.
    pub async fn connect_block(
        &self,
        asset: &str,
        height: u64,
        hash: &[u8],
        found: &BlockFindings,
        now_ns: u64,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            let inserted = sqlx::query(&sql(
                "INSERT INTO chain_blocks (asset, height, hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            ))
            .bind(asset)
            .bind(i(height)?)
            .bind(hash)
            .execute(&mut *tx.0)
            .await?
            .rows_affected();
            if inserted != 1 {
                return Ok(false);
            }
            for o in &found.outputs {
                sqlx::query(&sql(
                    "INSERT INTO custody_utxos (asset, txid, vout, wallet, branch, idx, script_pubkey, value, height) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
                ))
                .bind(asset)
                .bind(&o.txid)
                .bind(i64::from(o.vout))
                .bind(&o.wallet)
                .bind(o.path.map(|p| i64::from(p.0)))
                .bind(o.path.map(|p| i64::from(p.1)))
                .bind(&o.script_pubkey)
                .bind(i(o.value)?)
                .bind(i(height)?)
                .execute(&mut *tx.0)
                .await?;
            }
            for d in &found.deposits {
                sqlx::query(&sql(
                    "INSERT INTO chain_deposits (asset, txid, vout, address_id, customer_id, amount, height, state, \
                     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $8) \
                     ON CONFLICT (asset, txid, vout) DO UPDATE SET height = excluded.height, \
                     state = CASE WHEN chain_deposits.state = 'refused' THEN 'refused' ELSE 'pending' END, \
                     updated_at = excluded.updated_at",
                ))
                .bind(asset)
                .bind(&d.txid)
                .bind(i64::from(d.vout))
                .bind(d.address_id)
                .bind(d.customer_id)
                .bind(i(d.amount)?)
                .bind(i(height)?)
                .bind(ts(now_ns))
                .execute(&mut *tx.0)
                .await?;
            }
            for (txid, address) in &found.sources {
                sqlx::query(&sql(
                    "INSERT INTO deposit_sources (asset, txid, address) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                ))
                .bind(asset)
                .bind(txid)
                .bind(address)
                .execute(&mut *tx.0)
                .await?;
            }
            for (txid, vout, by) in &found.spends {
                sqlx::query(&sql(
                    "UPDATE custody_utxos SET spent_by = $1, spent_height = $2 WHERE asset = $3 AND txid = $4 \
                     AND vout = $5",
                ))
                .bind(by)
                .bind(i(height)?)
                .bind(asset)
                .bind(txid)
                .bind(i64::from(*vout))
                .execute(&mut *tx.0)
                .await?;
            }
            for txid in &found.txids {
                sqlx::query(&sql(
                    "UPDATE custody_txs SET state = 'confirmed', updated_at = $1 WHERE asset = $2 AND txid = $3 \
                     AND state IN ('signed', 'broadcast')",
                ))
                .bind(ts(now_ns))
                .bind(asset)
                .bind(txid)
                .execute(&mut *tx.0)
                .await?;
            }
            true
        })
        .pipe(Ok)
    }

    /// The deposits confirmed at a height (to reverse them when their block is disconnected).
    pub async fn deposits_at(&self, asset: &str, height: u64) -> Result<Vec<ChainDeposit>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!(
                "SELECT {DEPOSIT_COLUMNS} FROM chain_deposits WHERE asset = $1 AND height = $2 \
                 AND state IN ('pending', 'credited', 'dust', 'held', 'released') ORDER BY txid, vout"
            ));
            let rows: Vec<DepositRow> = sqlx::query_as(&q).bind(asset).bind(i(height)?).fetch_all(pool).await?;
            Ok(rows.into_iter().map(deposit).collect())
        })
    }

    /// Undoes the recorded block at `height` (a reorganisation): its deposits become `reversed` (if they had been
    /// credited: the caller has posted the reversing transfers first) or `orphaned`, its outputs disappear, the
    /// spends it confirmed are undone, our transactions it confirmed go back to `broadcast`; audited.
    pub async fn disconnect_block(
        &self,
        asset: &str,
        height: u64,
        reversed: &[(Vec<u8>, u32)],
        txids: &[Vec<u8>],
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<(), StoreError> {
        on_backend!(self, |tx, sql| {
            let h = i(height)?;
            sqlx::query(&sql(
                "UPDATE chain_deposits SET state = 'orphaned', updated_at = $1 WHERE asset = $2 AND height = $3 \
                 AND state IN ('pending', 'credited', 'dust', 'held', 'released')",
            ))
            .bind(ts(now_ns))
            .bind(asset)
            .bind(h)
            .execute(&mut *tx.0)
            .await?;
            for (txid, vout) in reversed {
                sqlx::query(&sql(
                    "UPDATE chain_deposits SET state = 'reversed' WHERE asset = $1 AND txid = $2 AND vout = $3",
                ))
                .bind(asset)
                .bind(txid)
                .bind(i64::from(*vout))
                .execute(&mut *tx.0)
                .await?;
            }
            sqlx::query(&sql("DELETE FROM custody_utxos WHERE asset = $1 AND height = $2"))
                .bind(asset)
                .bind(h)
                .execute(&mut *tx.0)
                .await?;
            // Spends confirmed in this block: our own transactions go back to the mempool (still ours, still
            // reserved); others' spends of our outputs cannot happen without our keys.
            sqlx::query(&sql("UPDATE custody_utxos SET spent_height = NULL WHERE asset = $1 AND spent_height = $2"))
                .bind(asset)
                .bind(h)
                .execute(&mut *tx.0)
                .await?;
            for txid in txids {
                sqlx::query(&sql(
                    "UPDATE custody_txs SET state = 'broadcast', updated_at = $1 WHERE asset = $2 AND txid = $3 \
                     AND state = 'confirmed'",
                ))
                .bind(ts(now_ns))
                .bind(asset)
                .bind(txid)
                .execute(&mut *tx.0)
                .await?;
            }
            sqlx::query(&sql("DELETE FROM chain_blocks WHERE asset = $1 AND height = $2"))
                .bind(asset)
                .bind(h)
                .execute(&mut *tx.0)
                .await?;
            if !records.is_empty() {
                audit::append(&mut tx, records, auditor).await?;
            }
        });
        Ok(())
    }

    /// Every output of ours not yet seen spent in a block (reserved ones included): what the watcher looks for in
    /// blocks' inputs.
    pub async fn unspent_outpoints(&self, asset: &str) -> Result<Vec<(Vec<u8>, u32)>, StoreError> {
        on_reader!(self, |pool, sql| {
            let rows: Vec<(Vec<u8>, i64)> =
                sqlx::query_as(&sql("SELECT txid, vout FROM custody_utxos WHERE asset = $1 AND spent_height IS NULL"))
                    .bind(asset)
                    .fetch_all(pool)
                    .await?;
            Ok(rows.into_iter().map(|(t, v)| (t, u32::try_from(v).unwrap_or(0))).collect())
        })
    }

    /// Our transactions confirmed in the block at `height` (those that spent our outputs there).
    pub async fn txs_confirmed_at(&self, asset: &str, height: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        on_reader!(self, |pool, sql| {
            let rows: Vec<Vec<u8>> = sqlx::query_scalar(&sql(
                "SELECT DISTINCT spent_by FROM custody_utxos WHERE asset = $1 AND spent_height = $2 \
                 AND spent_by IS NOT NULL",
            ))
            .bind(asset)
            .bind(i(height)?)
            .fetch_all(pool)
            .await?;
            Ok(rows)
        })
    }

    /// Locks a customer's withdrawals until `until_ns` with a reason (a reversed deposit they had already spent),
    /// never shortening a longer lock.
    pub async fn lock_customer_withdrawals(
        &self,
        customer_id: i64,
        until_ns: u64,
        reason: &str,
    ) -> Result<(), StoreError> {
        on_backend!(self, |tx, sql| {
            sqlx::query(&sql(crate::customers::EXTEND_WITHDRAWAL_LOCK))
                .bind(ts(until_ns))
                .bind(reason)
                .bind(customer_id)
                .execute(&mut *tx.0)
                .await?;
        });
        Ok(())
    }

    /// Pending deposits confirmed at or below `height` (enough confirmations to be credited), and those compliance
    /// released.
    pub async fn creditable_deposits(&self, asset: &str, height: u64) -> Result<Vec<ChainDeposit>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!(
                "SELECT {DEPOSIT_COLUMNS} FROM chain_deposits WHERE asset = $1 AND state IN ('pending', 'released') \
                 AND height <= $2 ORDER BY height, txid, vout"
            ));
            let rows: Vec<DepositRow> = sqlx::query_as(&q).bind(asset).bind(i(height)?).fetch_all(pool).await?;
            Ok(rows.into_iter().map(deposit).collect())
        })
    }

    /// Marks a pending (or released) deposit `credited` or `dust`, audited. `false` if it was neither.
    pub async fn settle_deposit(
        &self,
        asset: &str,
        txid: &[u8],
        vout: u32,
        state: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            let changed = sqlx::query(&sql(
                "UPDATE chain_deposits SET state = $1, updated_at = $2 WHERE asset = $3 AND txid = $4 AND vout = $5 \
                 AND state IN ('pending', 'released')",
            ))
            .bind(state)
            .bind(ts(now_ns))
            .bind(asset)
            .bind(txid)
            .bind(i64::from(vout))
            .execute(&mut *tx.0)
            .await?
            .rows_affected();
            if changed == 1 {
                audit::append(&mut tx, records, auditor).await?;
            }
            changed == 1
        })
        .pipe(Ok)
    }

    /// A customer's deposits, newest first.
    pub async fn customer_deposits(&self, customer_id: i64, limit: u32) -> Result<Vec<ChainDeposit>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!(
                "SELECT {DEPOSIT_COLUMNS} FROM chain_deposits WHERE customer_id = $1 ORDER BY created_at DESC, \
                 txid, vout LIMIT $2"
            ));
            let rows: Vec<DepositRow> =
                sqlx::query_as(&q).bind(customer_id).bind(i64::from(limit)).fetch_all(pool).await?;
            Ok(rows.into_iter().map(deposit).collect())
        })
    }

    /// Our unspent, unreserved outputs of a wallet confirmed at or below `max_height`, oldest first.
    pub async fn spendable_utxos(&self, asset: &str, wallet: &str, max_height: u64) -> Result<Vec<Utxo>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!(
                "SELECT {UTXO_COLUMNS} FROM custody_utxos WHERE asset = $1 AND wallet = $2 AND spent_by IS NULL \
                 AND height <= $3 ORDER BY height, txid, vout"
            ));
            let rows: Vec<UtxoRow> =
                sqlx::query_as(&q).bind(asset).bind(wallet).bind(i(max_height)?).fetch_all(pool).await?;
            Ok(rows.into_iter().map(utxo).collect())
        })
    }

    /// Records a transaction we are making and reserves the outputs it spends, atomically: `None` (and nothing
    /// written) if any of them is reserved already.
    pub async fn record_custody_tx(
        &self,
        new: &CustodyTx,
        spends: &[(Vec<u8>, u32)],
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<Option<i64>, StoreError> {
        on_backend!(self, |tx, sql| {
            let Some(id) = insert_custody_tx!(tx, sql, new, spends, now_ns) else {
                // Dropping the transaction rolls back the insert and the reservations made so far.
                return Ok(None);
            };
            audit::append(&mut tx, about_custody_tx(records, id), auditor).await?;
            Some(id)
        })
        .pipe(Ok)
    }

    /// Moves a custody transaction to a new state (with the signed bytes, or a failure that releases its outputs),
    /// audited. `false` if it was not in `from`.
    pub async fn advance_custody_tx(
        &self,
        id: i64,
        from: &str,
        to: &str,
        signed: Option<&[u8]>,
        failure: Option<&str>,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            let txid: Option<Vec<u8>> = sqlx::query_scalar(&sql(
                "UPDATE custody_txs SET state = $1, tx = COALESCE($2, tx), failure = $3, updated_at = $4 \
                 WHERE id = $5 AND state = $6 RETURNING txid",
            ))
            .bind(to)
            .bind(signed)
            .bind(failure)
            .bind(ts(now_ns))
            .bind(id)
            .bind(from)
            .fetch_optional(&mut *tx.0)
            .await?;
            let Some(txid) = txid else { return Ok(false) };
            if to == "failed" {
                sqlx::query(&sql("UPDATE custody_utxos SET spent_by = NULL WHERE spent_by = $1"))
                    .bind(txid)
                    .execute(&mut *tx.0)
                    .await?;
            }
            if !records.is_empty() {
                audit::append(&mut tx, records, auditor).await?;
            }
            true
        })
        .pipe(Ok)
    }

    /// The height of the block that confirmed our transaction `txid` (the spend of its inputs), if one did.
    pub async fn custody_tx_height(&self, txid: &[u8]) -> Result<Option<u64>, StoreError> {
        on_reader!(self, |pool, sql| {
            let h: Option<i64> =
                sqlx::query_scalar(&sql("SELECT MIN(spent_height) FROM custody_utxos WHERE spent_by = $1"))
                    .bind(txid)
                    .fetch_one(pool)
                    .await?;
            Ok(h.map(u))
        })
    }

    /// Custody transactions of an asset in one of `states`, oldest first.
    pub async fn custody_txs(&self, asset: &str, states: &[&str]) -> Result<Vec<CustodyTx>, StoreError> {
        let all: Vec<CustodyTx> = on_reader!(self, |pool, sql| {
            let q = sql(&format!("SELECT {CUSTODY_TX_COLUMNS} FROM custody_txs WHERE asset = $1 ORDER BY id"));
            let rows: Vec<CustodyTxRow> = sqlx::query_as(&q).bind(asset).fetch_all(pool).await?;
            rows.into_iter().map(custody_tx).collect()
        });
        Ok(all.into_iter().filter(|t| states.is_empty() || states.contains(&t.state.as_str())).collect())
    }

    /// The custody transaction with this id.
    pub async fn custody_tx(&self, id: i64) -> Result<Option<CustodyTx>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!("SELECT {CUSTODY_TX_COLUMNS} FROM custody_txs WHERE id = $1"));
            let row: Option<CustodyTxRow> = sqlx::query_as(&q).bind(id).fetch_optional(pool).await?;
            Ok(row.map(custody_tx))
        })
    }

    /// The custody transaction a signing ceremony signs.
    pub async fn custody_tx_of_ceremony(&self, ceremony_id: i64) -> Result<Option<CustodyTx>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!("SELECT {CUSTODY_TX_COLUMNS} FROM custody_txs WHERE ceremony_id = $1"));
            let row: Option<CustodyTxRow> = sqlx::query_as(&q).bind(ceremony_id).fetch_optional(pool).await?;
            Ok(row.map(custody_tx))
        })
    }

    /// Proposes a refill of the hot wallet from cold, audited.
    pub async fn propose_refill(
        &self,
        asset: &str,
        amount: u64,
        reason: &str,
        proposed_by: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<i64, StoreError> {
        on_backend!(self, |tx, sql| {
            let id: i64 = sqlx::query_scalar(&sql(
                "INSERT INTO refill_proposals (asset, amount, reason, proposed_by, state, created_at) \
                 VALUES ($1, $2, $3, $4, 'pending', $5) RETURNING id",
            ))
            .bind(asset)
            .bind(i(amount)?)
            .bind(reason)
            .bind(proposed_by)
            .bind(ts(now_ns))
            .fetch_one(&mut *tx.0)
            .await?;
            let records = records
                .into_iter()
                .map(|mut r| {
                    r.target = format!("refill:{id}");
                    r
                })
                .collect();
            audit::append(&mut tx, records, auditor).await?;
            id
        })
        .pipe(Ok)
    }

    /// Refill proposals of an asset (all assets if empty), newest first.
    pub async fn refill_proposals(&self, asset: Option<&str>) -> Result<Vec<RefillProposal>, StoreError> {
        self.refills(asset, None).await
    }

    /// [`Store::refill_proposals`], or only the one with id `only` (however old).
    async fn refills(&self, asset: Option<&str>, only: Option<i64>) -> Result<Vec<RefillProposal>, StoreError> {
        let rows: Vec<RefillRow> = on_reader!(self, |pool, sql| {
            sqlx::query_as(&sql(
                "SELECT id, asset, amount, reason, proposed_by, state, ceremony_id FROM refill_proposals \
                 WHERE ($1 = '' OR asset = $1) AND ($2 < 0 OR id = $2) ORDER BY id DESC LIMIT 200",
            ))
            .bind(asset.unwrap_or(""))
            .bind(only.unwrap_or(-1))
            .fetch_all(pool)
            .await?
        });
        let approvals: Vec<(i64, i64)> = on_reader!(self, |pool, sql| {
            sqlx::query_as(&sql("SELECT proposal_id, staff_id FROM refill_approvals ORDER BY created_at"))
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|(id, asset, amount, reason, proposed_by, state, ceremony_id)| RefillProposal {
                id,
                asset,
                amount: u(amount),
                reason,
                proposed_by,
                state,
                ceremony_id,
                approvals: approvals.iter().filter(|(p, _)| *p == id).map(|(_, s)| *s).collect(),
            })
            .collect())
    }

    /// Records `staff_id`'s approval of a pending refill; with `quorum` distinct approvers (the proposer excluded)
    /// it becomes `approved`. Audited; the proposal row is locked so concurrent approvals count exactly.
    pub async fn approve_refill(
        &self,
        id: i64,
        staff_id: i64,
        quorum: usize,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<RefillDecision, StoreError> {
        let lock = if matches!(self, Store::Postgres(_)) { " FOR UPDATE" } else { "" };
        let decision = on_backend!(self, |tx, sql| {
            let row: Option<(String, String)> =
                sqlx::query_as(&sql(&format!("SELECT state, proposed_by FROM refill_proposals WHERE id = $1{lock}")))
                    .bind(id)
                    .fetch_optional(&mut *tx.0)
                    .await?;
            let Some((state, proposed_by)) = row else { return Ok(RefillDecision::NotFound) };
            if state != "pending" {
                return Ok(RefillDecision::NotPending);
            }
            if proposed_by == format!("staff:{staff_id}") {
                return Ok(RefillDecision::OwnProposal);
            }
            let inserted = sqlx::query(&sql(
                "INSERT INTO refill_approvals (proposal_id, staff_id, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
            ))
            .bind(id)
            .bind(staff_id)
            .bind(ts(now_ns))
            .execute(&mut *tx.0)
            .await?
            .rows_affected();
            if inserted != 1 {
                return Ok(RefillDecision::AlreadyApproved);
            }
            let count: i64 = sqlx::query_scalar(&sql("SELECT COUNT(*) FROM refill_approvals WHERE proposal_id = $1"))
                .bind(id)
                .fetch_one(&mut *tx.0)
                .await?;
            let approved = usize::try_from(count).unwrap_or(0) >= quorum;
            if approved {
                sqlx::query(&sql("UPDATE refill_proposals SET state = 'approved' WHERE id = $1"))
                    .bind(id)
                    .execute(&mut *tx.0)
                    .await?;
            }
            audit::append(&mut tx, records, auditor).await?;
            approved
        });
        let proposal = self.refills(None, Some(id)).await?.into_iter().next();
        let Some(proposal) = proposal else { return Ok(RefillDecision::NotFound) };
        Ok(if decision { RefillDecision::Approved(proposal) } else { RefillDecision::Recorded(proposal) })
    }

    /// Ties an approved refill to the signing ceremony that carries it out. `false` if it is not approved or has
    /// one already.
    pub async fn attach_refill_ceremony(&self, id: i64, ceremony_id: i64) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            sqlx::query(&sql("UPDATE refill_proposals SET ceremony_id = $1 WHERE id = $2 AND state = 'approved' \
                 AND ceremony_id IS NULL"))
            .bind(ceremony_id)
            .bind(id)
            .execute(&mut *tx.0)
            .await?
            .rows_affected()
                == 1
        })
        .pipe(Ok)
    }

    /// Balances and counts of an asset's custody.
    pub async fn custody_balances(&self, asset: &str) -> Result<CustodyBalances, StoreError> {
        let sums: Vec<(String, i64, i64)> = on_reader!(self, |pool, sql| {
            sqlx::query_as(&sql("SELECT wallet, CAST(COALESCE(SUM(value), 0) AS BIGINT), COUNT(*) FROM custody_utxos \
                 WHERE asset = $1 AND spent_by IS NULL GROUP BY wallet"))
            .bind(asset)
            .fetch_all(pool)
            .await?
        });
        let mut b = CustodyBalances::default();
        for (wallet, sum, count) in sums {
            let v = (u(sum), u(count));
            match wallet.as_str() {
                "cold" => b.cold = v,
                "hot" => b.hot = v,
                _ => b.deposit = v,
            }
        }
        for t in self.custody_txs(asset, &["signing", "signed", "broadcast"]).await? {
            b.in_flight_to_cold += t.to_cold;
            b.in_flight_to_hot += t.to_hot;
            if t.kind == "sweep" {
                b.pending_sweeps += 1;
            }
        }
        b.pending_refills = self
            .refill_proposals(Some(asset))
            .await?
            .iter()
            .filter(|p| p.state == "pending" || p.state == "approved")
            .count() as u64;
        b.pending_deposits = on_reader!(self, |pool, sql| {
            let n: i64 =
                sqlx::query_scalar(&sql("SELECT COUNT(*) FROM chain_deposits WHERE asset = $1 AND state = 'pending'"))
                    .bind(asset)
                    .fetch_one(pool)
                    .await?;
            u(n)
        });
        Ok(b)
    }
}

/// Where one of our outputs stands, as the watcher recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpend {
    /// The transaction that spends it (ours, reserved; or whichever a block confirmed).
    pub spent_by: Option<Vec<u8>>,
    /// The height of the block that confirmed that spend.
    pub spent_height: Option<u64>,
}

impl Store {
    /// Our transaction with this id (internal byte order), if we made one.
    pub async fn custody_tx_by_txid(&self, txid: &[u8]) -> Result<Option<CustodyTx>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!("SELECT {CUSTODY_TX_COLUMNS} FROM custody_txs WHERE txid = $1"));
            let row: Option<CustodyTxRow> = sqlx::query_as(&q).bind(txid).fetch_optional(pool).await?;
            Ok(row.map(custody_tx))
        })
    }

    /// Where our output `(txid, vout)` stands: `None` if the watcher has no such output (never seen, or its block
    /// was disconnected).
    pub async fn output_spend(&self, asset: &str, txid: &[u8], vout: u32) -> Result<Option<OutputSpend>, StoreError> {
        on_reader!(self, |pool, sql| {
            let row: Option<(Option<Vec<u8>>, Option<i64>)> = sqlx::query_as(&sql(
                "SELECT spent_by, spent_height FROM custody_utxos WHERE asset = $1 AND txid = $2 AND vout = $3",
            ))
            .bind(asset)
            .bind(txid)
            .bind(i64::from(vout))
            .fetch_optional(pool)
            .await?;
            Ok(row.map(|(spent_by, h)| OutputSpend { spent_by, spent_height: h.map(u) }))
        })
    }

    /// Replaces a broadcast withdrawal transaction `old` by `new` (the same inputs, signed, state `signed`), in one
    /// audited transaction: `old` becomes `failed` with the reason `replaced by <new txid>` (its inputs are not
    /// released: the reservation moves to `new`), and the withdrawals `old` paid are paid by `new`. `None`, and
    /// nothing written, if `old` is no longer a broadcast withdrawal transaction or any of its inputs is no longer
    /// reserved for it (a block confirmed a spend meanwhile).
    pub async fn replace_custody_tx(
        &self,
        old: i64,
        new: &CustodyTx,
        inputs: usize,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<Option<i64>, StoreError> {
        let reason = format!("replaced by {}", txid_text(&new.txid));
        on_backend!(self, |tx, sql| {
            let old_txid: Option<Vec<u8>> = sqlx::query_scalar(&sql(
                "UPDATE custody_txs SET state = 'failed', failure = $1, updated_at = $2 WHERE id = $3 \
                 AND state = 'broadcast' AND kind = 'withdrawal' RETURNING txid",
            ))
            .bind(&reason)
            .bind(ts(now_ns))
            .bind(old)
            .fetch_optional(&mut *tx.0)
            .await?;
            let Some(old_txid) = old_txid else { return Ok(None) };
            let Some(id) = insert_custody_tx!(tx, sql, new, &[], now_ns) else { return Ok(None) };
            let moved = sqlx::query(&sql(
                "UPDATE custody_utxos SET spent_by = $1 WHERE asset = $2 AND spent_by = $3 AND spent_height IS NULL",
            ))
            .bind(&new.txid)
            .bind(&new.asset)
            .bind(&old_txid)
            .execute(&mut *tx.0)
            .await?
            .rows_affected();
            if usize::try_from(moved).unwrap_or(0) != inputs {
                return Ok(None);
            }
            sqlx::query(&sql("UPDATE withdrawals SET custody_tx = $1, updated_at = $2 WHERE custody_tx = $3"))
                .bind(id)
                .bind(ts(now_ns))
                .bind(old)
                .execute(&mut *tx.0)
                .await?;
            audit::append(&mut tx, records, auditor).await?;
            Some(id)
        })
        .pipe(Ok)
    }

    /// Undoes [`Store::replace_custody_tx`]: the replacement `new` becomes `failed` with `failure`, the transaction
    /// it replaced (`old`) goes back to `old_state` (`broadcast` when the chain refused the replacement, `confirmed`
    /// when a block confirmed the original after all), the reservation and the withdrawals go back to it. `false`,
    /// and nothing written, unless `new` is `signed` or `broadcast` and `old` is `failed`.
    pub async fn restore_replaced(
        &self,
        new: i64,
        old: i64,
        old_state: &str,
        failure: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            let new_txid: Option<(Vec<u8>, String)> = sqlx::query_as(&sql(
                "UPDATE custody_txs SET state = 'failed', failure = $1, updated_at = $2 WHERE id = $3 \
                 AND state IN ('signed', 'broadcast') RETURNING txid, asset",
            ))
            .bind(failure)
            .bind(ts(now_ns))
            .bind(new)
            .fetch_optional(&mut *tx.0)
            .await?;
            let Some((new_txid, asset)) = new_txid else { return Ok(false) };
            let old_txid: Option<Vec<u8>> = sqlx::query_scalar(&sql(
                "UPDATE custody_txs SET state = $1, failure = NULL, updated_at = $2 WHERE id = $3 \
                 AND state = 'failed' RETURNING txid",
            ))
            .bind(old_state)
            .bind(ts(now_ns))
            .bind(old)
            .fetch_optional(&mut *tx.0)
            .await?;
            let Some(old_txid) = old_txid else { return Ok(false) };
            sqlx::query(&sql(
                "UPDATE custody_utxos SET spent_by = $1 WHERE asset = $2 AND spent_by = $3 AND spent_height IS NULL",
            ))
            .bind(&old_txid)
            .bind(&asset)
            .bind(&new_txid)
            .execute(&mut *tx.0)
            .await?;
            sqlx::query(&sql("UPDATE withdrawals SET custody_tx = $1, updated_at = $2 WHERE custody_tx = $3"))
                .bind(old)
                .bind(ts(now_ns))
                .bind(new)
                .execute(&mut *tx.0)
                .await?;
            audit::append(&mut tx, records, auditor).await?;
            true
        })
        .pipe(Ok)
    }
}

/// A transaction id as block explorers show it (reversed bytes, hex).
pub fn txid_text(internal: &[u8]) -> String {
    internal.iter().rev().map(|b| format!("{b:02x}")).collect()
}
