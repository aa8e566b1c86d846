//! A development Bitcoin chain that really validates and makes real blocks, so that a chain watcher can follow it
//! exactly as it would follow Bitcoin Core on regtest.
//!
//! - **Blocks** are `bitcoin::Block`s on regtest parameters, starting from regtest's genesis block (height 0): a
//!   version-`0x20000000` header on the previous block's hash, the merkle root of its transactions, the time the
//!   caller passes in (pure: no clock here), regtest's bits `0x207fffff` and a nonce that meets them. The first
//!   transaction is a coinbase with the height first in its script (BIP-34), an extra nonce (the number of blocks this
//!   chain has ever connected, so that a replacement block never repeats the block it replaces) and the witness
//!   commitment (BIP-141). The coinbase pays the subsidy (50 BTC halving every 150 blocks) and the fees to an
//!   `OP_RETURN` output: development coins are burnt rather than kept, so coinbase maturity never arises.
//! - **The faucet** makes a funding transaction with a single null input (coinbase-like, so `is_coinbase()` is true
//!   for it too; only the first transaction of a block is the block's coinbase) whose script carries a serial number,
//!   so every faucet transaction has its own txid. It waits in the mempool and enters the next mined block, so a
//!   deposit from the faucet appears in a block and gains confirmations like any other.
//! - **The mempool** refuses unknown or spent inputs, inputs spent twice, conflicts with the mempool, outputs worth
//!   more than the inputs, outputs below the dust limit (330 sat; `OP_RETURN` outputs excepted), a fee below the
//!   minimum fee rate times the virtual size, a lock time not yet reached, and any input that fails Bitcoin Core's
//!   interpreter given every spent output. A newly submitted transaction may spend confirmed outputs only: a child of
//!   a transaction still in the mempool (a faucet transaction included) is refused until its parent is mined.
//!   Transactions that a reorganisation returns keep their order, and there a child may follow its parent. Relative
//!   lock times (BIP-68) are not implemented.
//! - **Replacement** (BIP-125, as Bitcoin Core applies it): a new transaction that spends an output a mempool
//!   transaction spends replaces it (and its descendants) when every transaction it replaces signals replaceability
//!   (an input's sequence below `0xfffffffe`), it pays at least their fees plus the minimum fee rate times its own
//!   virtual size, and its fee rate is above each directly replaced transaction's. Otherwise it is refused as a
//!   conflict ([`ChainRejection::Conflict`]) or as paying too little ([`ChainRejection::ReplacementFeeTooLow`]).
//!   Transactions returned by a reorganisation never replace anything.
//! - **Mining** takes the mempool in the order it was accepted (parents before children), as much as fits in 4,000,000
//!   weight units, and checks the block exactly as a block from outside would be checked.
//! - **Reorganisations** disconnect blocks exactly (with per-block undo data), return their transactions to the
//!   mempool unless evicted, and mine a longer branch of empty blocks.
//! - **Persistence** stays with the caller: every connected or disconnected block is recorded as a [`LogRecord`]
//!   ([`DevChain::drain_log`]), and [`DevChain::apply`] replays records to the same chain. The mempool is not recorded,
//!   so a replayed chain starts with an empty one.

use std::collections::{HashMap, HashSet};

use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::blockdata::constants::genesis_block;
use bitcoin::hashes::{Hash, sha256d};
use bitcoin::pow::{CompactTarget, Target};
use bitcoin::script::{Builder, Instruction};
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, Block, BlockHash, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxMerkleNode, TxOut, Txid,
    Weight, Witness, absolute,
};

use crate::CustodyError;
use crate::taproot::verify_spend;

/// The compact difficulty target of every block (regtest's).
pub const REGTEST_BITS: u32 = 0x207f_ffff;
/// The smallest output value accepted, in satoshis (Bitcoin Core's dust limit for a Taproot output).
pub const DUST_LIMIT_SAT: u64 = 330;
/// Blocks between two halvings of the subsidy (regtest's interval).
pub const HALVING_INTERVAL_BLOCKS: u64 = 150;
/// The subsidy of the first blocks, in satoshis.
pub const INITIAL_SUBSIDY_SAT: u64 = 50 * 100_000_000;

/// Header version of mined blocks: the BIP-9 top bits and nothing signalled, as Bitcoin Core mines today.
const BLOCK_VERSION: i32 = 0x2000_0000;
/// Weight kept free in a block for the header and the coinbase.
const COINBASE_RESERVE_WU: u64 = 4_000;
/// The witness reserved value in every coinbase (BIP-141 allows any 32 bytes; Core uses zeros).
const WITNESS_RESERVED_VALUE: [u8; 32] = [0; 32];
/// Marks a faucet transaction's script.
const FAUCET_TAG: &[u8; 14] = b"rampart-faucet";
/// What the coinbase's burning output carries.
const BURN_TAG: &[u8; 16] = b"rampart-devchain";
/// The header of a BIP-141 witness commitment inside its `OP_RETURN` push.
const WITNESS_COMMITMENT_HEADER: [u8; 4] = [0xaa, 0x21, 0xa9, 0xed];
/// Records longer than this are corrupt (a block's serialisation is at most 4 MB).
const LOG_RECORD_MAX_BYTES: usize = 8 * 1024 * 1024;

/// Why the chain refused a transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainRejection {
    /// An input spends an output that does not exist or is already spent in a block.
    #[error("input {0} spends an unknown or spent output")]
    MissingInput(usize),
    /// An input spends an output of a transaction that is still in the mempool.
    #[error("input {0} spends an output of an unconfirmed transaction (wait for it to be mined)")]
    UnconfirmedInput(usize),
    /// An input spends an output that a transaction in the mempool already spends.
    #[error("input {0} conflicts with a transaction in the mempool")]
    Conflict(usize),
    /// Two inputs of the transaction spend the same output.
    #[error("input {0} spends the same output as an earlier input")]
    DuplicateInput(usize),
    /// The transaction is not a well-formed spend.
    #[error("malformed transaction: {0}")]
    Malformed(&'static str),
    /// An output, the outputs together or the inputs together are worth more than 21 million bitcoin.
    #[error("an output value is out of range")]
    ValueOutOfRange,
    /// The outputs are worth more than the inputs.
    #[error("the outputs are worth more than the inputs")]
    Overspend,
    /// An output is worth less than the dust limit.
    #[error("output {output} of {value} sat is below the dust limit of 330 sat")]
    Dust {
        /// The output's index.
        output: usize,
        /// Its value in satoshis.
        value: u64,
    },
    /// The fee is below the minimum fee rate times the transaction's virtual size.
    #[error("the fee of {fee} sat is below the minimum of {min} sat")]
    FeeTooLow {
        /// The fee.
        fee: u64,
        /// The minimum for this transaction.
        min: u64,
    },
    /// The transaction's lock time is not reached yet.
    #[error("the transaction's lock time is not reached")]
    NonFinal,
    /// The transaction conflicts with replaceable mempool transactions but pays too little to replace them: less
    /// than their fees plus the minimum fee rate times its virtual size, or a fee rate no higher than one of theirs.
    #[error("a replacement must pay at least {min} sat and a higher fee rate than what it replaces; it pays {fee} sat")]
    ReplacementFeeTooLow {
        /// The replacement's fee.
        fee: u64,
        /// The least it must pay.
        min: u64,
    },
    /// The transaction is already known.
    #[error("the transaction is already known")]
    Duplicate,
    /// A script or signature fails Bitcoin's consensus rules.
    #[error("{0}")]
    Script(String),
}

/// Why a block, a disconnection or a reorganisation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The block's previous hash is not the tip's hash.
    #[error("the block does not build on the tip")]
    NotOnTip,
    /// The header's bits are not regtest's, or its hash does not meet them.
    #[error("the proof of work is invalid")]
    BadProofOfWork,
    /// The header's merkle root is not that of the transactions.
    #[error("the merkle root does not match the transactions")]
    BadMerkleRoot,
    /// The coinbase's witness commitment does not match the transactions' witnesses.
    #[error("the witness commitment does not match the transactions")]
    BadWitnessCommitment,
    /// The block weighs more than 4,000,000 weight units.
    #[error("the block is too heavy")]
    TooHeavy,
    /// The coinbase is missing, malformed, without its height, or pays too much.
    #[error("bad coinbase: {0}")]
    BadCoinbase(&'static str),
    /// A transaction of the block is invalid.
    #[error("transaction {index} of the block is invalid: {reason}")]
    Transaction {
        /// Its position in the block.
        index: usize,
        /// What is wrong with it.
        reason: ChainRejection,
    },
    /// Only the genesis block is left, which cannot be disconnected.
    #[error("nothing to disconnect: only the genesis block is left")]
    NothingToDisconnect,
    /// A reorganisation deeper than the chain.
    #[error("cannot disconnect {depth} blocks from a chain of height {height}")]
    TooDeep {
        /// The depth asked for.
        depth: u64,
        /// The chain's height.
        height: u64,
    },
}

/// A change to the chain, in the order it happened: what a node appends to its block log to replay later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRecord {
    /// A block connected on the tip.
    Block(Block),
    /// The tip block disconnected.
    Disconnect,
}

/// Why bytes do not decode as a [`LogRecord`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogDecodeError {
    /// The bytes end before the record does (a torn write, if it is the last record of a file).
    #[error("the record is incomplete")]
    Incomplete,
    /// The record is complete but wrong: bad checksum, unknown kind, or a block that does not decode.
    #[error("the record is corrupt: {0}")]
    Corrupt(String),
}

const RECORD_BLOCK: u8 = 1;
const RECORD_DISCONNECT: u8 = 2;

impl LogRecord {
    /// Encodes the record: the body's length (4 bytes, little-endian), the body (a kind byte, then for a block its
    /// consensus encoding), and the first 4 bytes of the body's double SHA-256 (so a torn or damaged record is seen).
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self {
            LogRecord::Block(block) => {
                body.push(RECORD_BLOCK);
                body.extend(bitcoin::consensus::encode::serialize(block));
            }
            LogRecord::Disconnect => body.push(RECORD_DISCONNECT),
        }
        let check = sha256d::Hash::hash(&body).to_byte_array();
        // A body is at most a block, far below 4 GiB, so its length fits.
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(body.len() + 8);
        out.extend(len.to_le_bytes());
        out.extend(body);
        out.extend(&check[..4]);
        out
    }

    /// Decodes the record at the start of `bytes`; answers it and how many bytes it took.
    pub fn decode(bytes: &[u8]) -> Result<(LogRecord, usize), LogDecodeError> {
        let Some(len) = bytes.get(..4) else { return Err(LogDecodeError::Incomplete) };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
        let len = usize::try_from(len).map_err(|_| LogDecodeError::Corrupt("a record longer than memory".into()))?;
        if len == 0 || len > LOG_RECORD_MAX_BYTES {
            return Err(LogDecodeError::Corrupt(format!("a record of {len} bytes")));
        }
        let total = len + 8;
        let Some(record) = bytes.get(..total) else { return Err(LogDecodeError::Incomplete) };
        let body = &record[4..4 + len];
        let check = sha256d::Hash::hash(body).to_byte_array();
        if record[4 + len..] != check[..4] {
            return Err(LogDecodeError::Corrupt("the checksum does not match".into()));
        }
        let decoded = match body[0] {
            RECORD_BLOCK => LogRecord::Block(
                bitcoin::consensus::encode::deserialize(&body[1..])
                    .map_err(|e| LogDecodeError::Corrupt(format!("the block does not decode: {e}")))?,
            ),
            RECORD_DISCONNECT if len == 1 => LogRecord::Disconnect,
            kind => return Err(LogDecodeError::Corrupt(format!("unknown record kind {kind}"))),
        };
        Ok((decoded, total))
    }
}

/// A transaction waiting in the mempool, with the fee it pays.
#[derive(Debug, Clone)]
struct MempoolEntry {
    tx: Transaction,
    txid: Txid,
    fee: u64,
}

/// The chain.
#[derive(Debug, Clone)]
pub struct DevChain {
    min_fee_rate_sat_vb: u64,
    /// Every block of the active chain, the genesis block first (index = height).
    blocks: Vec<Block>,
    hashes: Vec<BlockHash>,
    heights: HashMap<BlockHash, u64>,
    /// Per block, the outputs its transactions spent, in order: what disconnecting it puts back.
    undo: Vec<Vec<(OutPoint, TxOut)>>,
    utxos: HashMap<OutPoint, TxOut>,
    confirmed_at: HashMap<Txid, u64>,
    /// In acceptance order, so parents come before children.
    mempool: Vec<MempoolEntry>,
    mempool_ids: HashSet<Txid>,
    /// The outputs the mempool's transactions spend.
    mempool_spends: HashSet<OutPoint>,
    /// The outputs the mempool's transactions create.
    mempool_outputs: HashMap<OutPoint, TxOut>,
    /// The next faucet serial number.
    faucet_serial: u64,
    /// How many blocks this chain has ever connected (the coinbase's extra nonce).
    connected: u64,
    log: Vec<LogRecord>,
}

impl DevChain {
    /// A chain holding regtest's genesis block, whose mempool asks at least `min_fee_rate_sat_vb` satoshis per
    /// virtual byte.
    pub fn new(min_fee_rate_sat_vb: u64) -> DevChain {
        let genesis = genesis_block(Network::Regtest);
        let hash = genesis.block_hash();
        DevChain {
            min_fee_rate_sat_vb,
            blocks: vec![genesis],
            hashes: vec![hash],
            heights: HashMap::from([(hash, 0)]),
            undo: vec![Vec::new()],
            utxos: HashMap::new(),
            confirmed_at: HashMap::new(),
            mempool: Vec::new(),
            mempool_ids: HashSet::new(),
            mempool_spends: HashSet::new(),
            mempool_outputs: HashMap::new(),
            faucet_serial: 0,
            connected: 0,
            log: Vec::new(),
        }
    }

    /// The minimum fee rate of the mempool, in satoshis per virtual byte.
    pub fn min_fee_rate_sat_vb(&self) -> u64 {
        self.min_fee_rate_sat_vb
    }

    /// The height of the tip (0 while only the genesis block exists).
    pub fn height(&self) -> u64 {
        self.hashes.len() as u64 - 1
    }

    /// The tip's height and hash.
    pub fn tip(&self) -> (u64, BlockHash) {
        let height = self.height();
        (height, self.hashes[self.hashes.len() - 1])
    }

    /// The hash of the active chain's block at `height`.
    pub fn block_hash(&self, height: u64) -> Option<BlockHash> {
        self.hashes.get(usize::try_from(height).ok()?).copied()
    }

    /// The active chain's block at `height`.
    pub fn block_at(&self, height: u64) -> Option<&Block> {
        self.blocks.get(usize::try_from(height).ok()?)
    }

    /// The active chain's block with this hash.
    pub fn block(&self, hash: &BlockHash) -> Option<&Block> {
        self.block_at(self.height_of(hash)?)
    }

    /// The height of a block of the active chain (a disconnected block has none).
    pub fn height_of(&self, hash: &BlockHash) -> Option<u64> {
        self.heights.get(hash).copied()
    }

    /// The unspent output at `outpoint`, if a block created it and no block spent it.
    pub fn utxo(&self, outpoint: &OutPoint) -> Option<&TxOut> {
        self.utxos.get(outpoint)
    }

    /// Every unspent output, in no particular order.
    pub fn utxos(&self) -> impl Iterator<Item = (&OutPoint, &TxOut)> {
        self.utxos.iter()
    }

    /// Confirmations of a transaction: 0 in the mempool or unknown, 1 in the tip block, and so on.
    pub fn confirmations(&self, txid: &Txid) -> u64 {
        self.confirmed_at.get(txid).map_or(0, |h| self.height() + 1 - h)
    }

    /// A confirmed transaction, from the block that confirmed it.
    pub fn transaction(&self, txid: &Txid) -> Option<&Transaction> {
        let height = *self.confirmed_at.get(txid)?;
        self.block_at(height)?.txdata.iter().find(|tx| tx.compute_txid() == *txid)
    }

    /// Whether a transaction waits in the mempool.
    pub fn in_mempool(&self, txid: &Txid) -> bool {
        self.mempool_ids.contains(txid)
    }

    /// The mempool's transactions, in the order they will be mined.
    pub fn mempool_txids(&self) -> Vec<Txid> {
        self.mempool.iter().map(|e| e.txid).collect()
    }

    /// Takes the records of every block connected or disconnected since the last call, in order.
    pub fn drain_log(&mut self) -> Vec<LogRecord> {
        std::mem::take(&mut self.log)
    }

    /// The development faucet: a funding transaction paying `amount` to `script` enters the mempool and is mined in
    /// the next block; answers the outpoint it creates. Dust and more than 21 million bitcoin are refused.
    pub fn faucet(&mut self, script: ScriptBuf, amount: Amount) -> Result<OutPoint, ChainRejection> {
        if amount > Amount::MAX_MONEY {
            return Err(ChainRejection::ValueOutOfRange);
        }
        if amount.to_sat() < DUST_LIMIT_SAT {
            return Err(ChainRejection::Dust { output: 0, value: amount.to_sat() });
        }
        let script_sig =
            Builder::new().push_slice(FAUCET_TAG).push_slice(self.faucet_serial.to_be_bytes()).into_script();
        let tx = Transaction {
            version: Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::null(),
                script_sig,
                sequence: Sequence::MAX,
                witness: Witness::new(),
            }],
            output: vec![TxOut { value: amount, script_pubkey: script }],
        };
        let txid = self.accept(tx, true)?;
        self.faucet_serial += 1;
        Ok(OutPoint { txid, vout: 0 })
    }

    /// Accepts a transaction into the mempool after every check; answers its id.
    pub fn submit(&mut self, tx: Transaction) -> Result<Txid, ChainRejection> {
        self.accept(tx, false)
    }

    /// Mines a block with the mempool's transactions (as many as fit, in order) at `time`; answers its height.
    pub fn mine(&mut self, time: u32) -> u64 {
        self.mine_block(time, true)
    }

    /// A block on the tip with a coinbase (paying the subsidy only) and then `transactions`, at `time`, with a valid
    /// header; nothing else is checked, so a test can build an invalid block (a double spend, say) to submit.
    pub fn template(&self, transactions: Vec<Transaction>, time: u32) -> Block {
        let height = self.height() + 1;
        assemble(self.tip().1, height, self.connected, Amount::from_sat(subsidy(height)), transactions, time)
    }

    /// Checks a block made elsewhere and connects it on the tip, like Bitcoin Core's `submitblock`; the mempool loses
    /// what the block confirmed and what now conflicts. Answers the new height.
    pub fn submit_block(&mut self, block: Block) -> Result<u64, BlockError> {
        self.connect_checked(&block)?;
        self.log.push(LogRecord::Block(block));
        Ok(self.height())
    }

    /// A reorganisation: disconnects exactly `depth` blocks (their spent outputs come back), returns their
    /// transactions (coinbases aside) to the mempool in order, followed by what the mempool held, except the
    /// transactions in `evict` and whatever no longer fits (the evicted ones' descendants, conflicts), then mines
    /// `depth + 1` empty blocks at `time`, so the new branch is longer and the returned transactions wait in the
    /// mempool for the next [`DevChain::mine`]. Answers the transactions dropped, evicted ones included.
    pub fn reorg(&mut self, depth: u64, evict: &[Txid], time: u32) -> Result<Vec<Txid>, BlockError> {
        if depth > self.height() {
            return Err(BlockError::TooDeep { depth, height: self.height() });
        }
        let mut disconnected = Vec::new();
        for _ in 0..depth {
            disconnected.push(self.disconnect_tip().ok_or(BlockError::NothingToDisconnect)?);
            self.log.push(LogRecord::Disconnect);
        }
        let mut candidates: Vec<Transaction> =
            disconnected.iter().rev().flat_map(|b| b.txdata.iter().skip(1).cloned()).collect();
        candidates.extend(self.take_mempool());
        let evict: HashSet<Txid> = evict.iter().copied().collect();
        let dropped = self.readmit(candidates, &evict);
        for _ in 0..=depth {
            self.mine_block(time, false);
        }
        Ok(dropped)
    }

    /// Replays one record (from a block log): a block is checked and connected, a disconnection undoes the tip. The
    /// transactions of a disconnected block are forgotten (the log does not say which a reorganisation evicted).
    /// Nothing is added to [`DevChain::drain_log`].
    pub fn apply(&mut self, record: &LogRecord) -> Result<(), BlockError> {
        match record {
            LogRecord::Block(block) => self.connect_checked(block),
            LogRecord::Disconnect => {
                self.disconnect_tip().ok_or(BlockError::NothingToDisconnect)?;
                self.refresh_mempool();
                Ok(())
            }
        }
    }

    /// Every mempool check; `returned` admits what a block or the faucet made: faucet transactions and children of
    /// transactions still in the mempool.
    fn accept(&mut self, tx: Transaction, returned: bool) -> Result<Txid, ChainRejection> {
        let txid = tx.compute_txid();
        if self.mempool_ids.contains(&txid) || self.confirmed_at.contains_key(&txid) {
            return Err(ChainRejection::Duplicate);
        }
        if tx.input.is_empty() || tx.output.is_empty() {
            return Err(ChainRejection::Malformed("a transaction needs inputs and outputs"));
        }
        let value_out = output_total(&tx)?;
        for (output, o) in tx.output.iter().enumerate() {
            if !o.script_pubkey.is_op_return() && o.value.to_sat() < DUST_LIMIT_SAT {
                return Err(ChainRejection::Dust { output, value: o.value.to_sat() });
            }
        }
        if tx.is_coinbase() {
            if !returned {
                return Err(ChainRejection::Malformed("only the faucet creates coins"));
            }
            self.insert_mempool(MempoolEntry { tx, txid, fee: 0 });
            return Ok(txid);
        }
        let mut spent = Vec::with_capacity(tx.input.len());
        let mut seen = HashSet::with_capacity(tx.input.len());
        let mut conflict = None;
        for (i, input) in tx.input.iter().enumerate() {
            let outpoint = input.previous_output;
            if !seen.insert(outpoint) {
                return Err(ChainRejection::DuplicateInput(i));
            }
            if self.mempool_spends.contains(&outpoint) {
                // A returned transaction never replaces; a new one may (checked below, once it is known valid).
                if returned {
                    return Err(ChainRejection::Conflict(i));
                }
                conflict = conflict.or(Some(i));
            }
            let output = match (self.utxos.get(&outpoint), self.mempool_outputs.get(&outpoint)) {
                (Some(output), _) => output,
                (None, Some(_)) if !returned => return Err(ChainRejection::UnconfirmedInput(i)),
                (None, Some(output)) => output,
                (None, None) => return Err(ChainRejection::MissingInput(i)),
            };
            spent.push(output.clone());
        }
        let value_in = input_total(&spent)?;
        let fee = value_in.checked_sub(value_out).ok_or(ChainRejection::Overspend)?;
        let min = self.min_fee_rate_sat_vb.saturating_mul(tx.vsize() as u64);
        if fee < min {
            return Err(ChainRejection::FeeTooLow { fee, min });
        }
        let tip_time = self.blocks.last().map_or(0, |b| b.header.time);
        if !is_final(&tx, self.height() + 1, tip_time) {
            return Err(ChainRejection::NonFinal);
        }
        verify_spend(&tx, &spent).map_err(|e: CustodyError| ChainRejection::Script(e.to_string()))?;
        if let Some(input) = conflict {
            let replaced = self.replaceable_by(&tx, fee, input)?;
            let candidates = self.take_mempool();
            self.readmit(candidates, &replaced);
        }
        self.insert_mempool(MempoolEntry { tx, txid, fee });
        Ok(txid)
    }

    /// What a new transaction `tx` paying `fee`, which spends an output a mempool transaction spends (its input
    /// `input` first), would replace under BIP-125's rules: the conflicting transactions and their descendants.
    /// Refused as a conflict unless each of them signals replaceability, and as too cheap unless `tx` pays for all
    /// of them plus its own relay (the minimum fee rate times its virtual size) at a fee rate above each conflict's.
    fn replaceable_by(&self, tx: &Transaction, fee: u64, input: usize) -> Result<HashSet<Txid>, ChainRejection> {
        let spends: HashSet<OutPoint> = tx.input.iter().map(|i| i.previous_output).collect();
        let vsize = tx.vsize() as u64;
        let mut replaced = HashSet::new();
        let mut replaced_fees = 0u64;
        for entry in &self.mempool {
            let direct = entry.tx.input.iter().any(|i| spends.contains(&i.previous_output));
            let child = entry.tx.input.iter().any(|i| replaced.contains(&i.previous_output.txid));
            if !(direct || child) {
                continue;
            }
            if !entry.tx.is_explicitly_rbf() {
                return Err(ChainRejection::Conflict(input));
            }
            // Compare fee rates without division: fee / vsize > entry.fee / entry_vsize.
            let entry_vsize = entry.tx.vsize() as u64;
            if direct && u128::from(fee) * u128::from(entry_vsize) <= u128::from(entry.fee) * u128::from(vsize) {
                let min = entry.fee.saturating_mul(vsize).div_ceil(entry_vsize.max(1)).saturating_add(1);
                return Err(ChainRejection::ReplacementFeeTooLow { fee, min });
            }
            replaced.insert(entry.txid);
            replaced_fees = replaced_fees.saturating_add(entry.fee);
        }
        let min = replaced_fees.saturating_add(self.min_fee_rate_sat_vb.max(1).saturating_mul(vsize));
        if fee < min {
            return Err(ChainRejection::ReplacementFeeTooLow { fee, min });
        }
        Ok(replaced)
    }

    fn insert_mempool(&mut self, entry: MempoolEntry) {
        if !entry.tx.is_coinbase() {
            self.mempool_spends.extend(entry.tx.input.iter().map(|i| i.previous_output));
        }
        for (vout, output) in entry.tx.output.iter().enumerate() {
            if !output.script_pubkey.is_op_return() {
                self.mempool_outputs.insert(outpoint(entry.txid, vout), output.clone());
            }
        }
        self.mempool_ids.insert(entry.txid);
        self.mempool.push(entry);
    }

    /// Empties the mempool, answering its transactions in order.
    fn take_mempool(&mut self) -> Vec<Transaction> {
        self.mempool_ids.clear();
        self.mempool_spends.clear();
        self.mempool_outputs.clear();
        std::mem::take(&mut self.mempool).into_iter().map(|e| e.tx).collect()
    }

    /// Puts transactions back into the (empty) mempool in order, except the evicted; answers those left out.
    fn readmit(&mut self, candidates: Vec<Transaction>, evict: &HashSet<Txid>) -> Vec<Txid> {
        let mut dropped = Vec::new();
        for tx in candidates {
            let txid = tx.compute_txid();
            if evict.contains(&txid) || self.accept(tx, true).is_err() {
                dropped.push(txid);
            }
        }
        dropped
    }

    /// Checks the mempool again after the chain changed: what a block confirmed or now conflicts with leaves.
    fn refresh_mempool(&mut self) {
        let candidates = self.take_mempool();
        self.readmit(candidates, &HashSet::new());
    }

    fn mine_block(&mut self, time: u32, with_mempool: bool) -> u64 {
        let height = self.height() + 1;
        let budget = Weight::MAX_BLOCK.to_wu() - COINBASE_RESERVE_WU;
        let mut weight = 0u64;
        let mut fees = 0u64;
        let mut transactions = Vec::new();
        if with_mempool {
            for entry in &self.mempool {
                let w = entry.tx.weight().to_wu();
                if weight + w > budget {
                    break;
                }
                weight += w;
                fees = fees.saturating_add(entry.fee);
                transactions.push(entry.tx.clone());
            }
        }
        let took = !transactions.is_empty();
        // The faucet can mint more than 21 million bitcoin in all; a coinbase may claim less than it could.
        let value = Amount::from_sat(subsidy(height).saturating_add(fees).min(Amount::MAX_MONEY.to_sat()));
        let block = assemble(self.tip().1, height, self.connected, value, transactions, time);
        // Every transaction was checked against this UTXO set when it entered the mempool, and the mempool is checked
        // again whenever the chain changes: a block made from it always connects, or this chain has a bug.
        let undo = self.check_block(&block).expect("a block made from the mempool is valid");
        self.connect(block.clone(), undo);
        self.log.push(LogRecord::Block(block));
        if took {
            self.refresh_mempool();
        }
        height
    }

    fn connect_checked(&mut self, block: &Block) -> Result<(), BlockError> {
        let undo = self.check_block(block)?;
        self.connect(block.clone(), undo);
        self.refresh_mempool();
        Ok(())
    }

    /// Every check of a block on the tip, without changing anything; answers the outputs it spends (its undo data).
    fn check_block(&self, block: &Block) -> Result<Vec<(OutPoint, TxOut)>, BlockError> {
        let height = self.height() + 1;
        let (_, tip) = self.tip();
        if block.header.prev_blockhash != tip {
            return Err(BlockError::NotOnTip);
        }
        if block.header.bits != CompactTarget::from_consensus(REGTEST_BITS)
            || block.header.validate_pow(regtest_target()).is_err()
        {
            return Err(BlockError::BadProofOfWork);
        }
        if !block.check_merkle_root() {
            return Err(BlockError::BadMerkleRoot);
        }
        if !block.check_witness_commitment() {
            return Err(BlockError::BadWitnessCommitment);
        }
        if block.weight() > Weight::MAX_BLOCK {
            return Err(BlockError::TooHeavy);
        }
        let coinbase = block.txdata.first().ok_or(BlockError::BadCoinbase("the block has no transactions"))?;
        let coinbase_input = match coinbase.input.as_slice() {
            [input] if coinbase.is_coinbase() => input,
            _ => return Err(BlockError::BadCoinbase("the first transaction is not a coinbase")),
        };
        if !(2..=100).contains(&coinbase_input.script_sig.len()) {
            return Err(BlockError::BadCoinbase("the coinbase script is not 2 to 100 bytes long"));
        }
        if !coinbase_input.script_sig.as_bytes().starts_with(height_push(height).as_bytes()) {
            return Err(BlockError::BadCoinbase("the coinbase script does not start with the height (BIP-34)"));
        }
        let tip_time = self.blocks.last().map_or(0, |b| b.header.time);
        let mut created: HashMap<OutPoint, TxOut> = HashMap::new();
        let mut spent_here: HashSet<OutPoint> = HashSet::new();
        let mut txids: HashSet<Txid> = HashSet::new();
        let mut undo = Vec::new();
        let mut fees = 0u64;
        for (index, tx) in block.txdata.iter().enumerate() {
            let fail = |reason| BlockError::Transaction { index, reason };
            let txid = tx.compute_txid();
            if !txids.insert(txid) || self.confirmed_at.contains_key(&txid) {
                return Err(fail(ChainRejection::Duplicate));
            }
            if tx.input.is_empty() || tx.output.is_empty() {
                return Err(fail(ChainRejection::Malformed("a transaction needs inputs and outputs")));
            }
            let value_out = output_total(tx).map_err(fail)?;
            if !tx.is_coinbase() {
                if !is_final(tx, height, tip_time) {
                    return Err(fail(ChainRejection::NonFinal));
                }
                let mut spent = Vec::with_capacity(tx.input.len());
                for (i, input) in tx.input.iter().enumerate() {
                    let outpoint = input.previous_output;
                    if !spent_here.insert(outpoint) {
                        return Err(fail(ChainRejection::MissingInput(i)));
                    }
                    let output = created
                        .get(&outpoint)
                        .or_else(|| self.utxos.get(&outpoint))
                        .ok_or(fail(ChainRejection::MissingInput(i)))?;
                    spent.push(output.clone());
                }
                let value_in = input_total(&spent).map_err(fail)?;
                let fee = value_in.checked_sub(value_out).ok_or(fail(ChainRejection::Overspend))?;
                fees = fees.saturating_add(fee);
                verify_spend(tx, &spent).map_err(|e| fail(ChainRejection::Script(e.to_string())))?;
                undo.extend(tx.input.iter().map(|i| i.previous_output).zip(spent));
            }
            for (vout, output) in tx.output.iter().enumerate() {
                if !output.script_pubkey.is_op_return() {
                    created.insert(outpoint(txid, vout), output.clone());
                }
            }
        }
        let paid = output_total(coinbase).map_err(|_| BlockError::BadCoinbase("the coinbase's outputs overflow"))?;
        if paid > subsidy(height).saturating_add(fees) {
            return Err(BlockError::BadCoinbase("the coinbase pays more than the subsidy and the fees"));
        }
        Ok(undo)
    }

    /// Connects a checked block on the tip.
    fn connect(&mut self, block: Block, undo: Vec<(OutPoint, TxOut)>) {
        let height = self.height() + 1;
        for tx in &block.txdata {
            let txid = tx.compute_txid();
            if tx.is_coinbase() {
                if let Some(serial) = faucet_serial(tx) {
                    self.faucet_serial = self.faucet_serial.max(serial.saturating_add(1));
                }
            } else {
                for input in &tx.input {
                    self.utxos.remove(&input.previous_output);
                }
            }
            for (vout, output) in tx.output.iter().enumerate() {
                if !output.script_pubkey.is_op_return() {
                    self.utxos.insert(outpoint(txid, vout), output.clone());
                }
            }
            self.confirmed_at.insert(txid, height);
        }
        let hash = block.block_hash();
        self.hashes.push(hash);
        self.heights.insert(hash, height);
        self.undo.push(undo);
        self.blocks.push(block);
        self.connected += 1;
    }

    /// Disconnects the tip block (never the genesis block) exactly: its outputs go, the outputs it spent come back.
    fn disconnect_tip(&mut self) -> Option<Block> {
        if self.blocks.len() <= 1 {
            return None;
        }
        let block = self.blocks.pop()?;
        let undo = self.undo.pop().unwrap_or_default();
        if let Some(hash) = self.hashes.pop() {
            self.heights.remove(&hash);
        }
        for tx in block.txdata.iter().rev() {
            let txid = tx.compute_txid();
            for vout in 0..tx.output.len() {
                self.utxos.remove(&outpoint(txid, vout));
            }
            self.confirmed_at.remove(&txid);
        }
        self.utxos.extend(undo);
        Some(block)
    }
}

/// The subsidy of the block at `height`.
fn subsidy(height: u64) -> u64 {
    let halvings = height / HALVING_INTERVAL_BLOCKS;
    if halvings >= 64 { 0 } else { INITIAL_SUBSIDY_SAT >> halvings }
}

fn regtest_target() -> Target {
    Target::from_compact(CompactTarget::from_consensus(REGTEST_BITS))
}

/// The script a coinbase at `height` must start with (BIP-34: the height as a script number, as Core pushes it).
fn height_push(height: u64) -> ScriptBuf {
    Builder::new().push_int(i64::try_from(height).unwrap_or(i64::MAX)).into_script()
}

fn outpoint(txid: Txid, vout: usize) -> OutPoint {
    // A transaction's outputs are far fewer than 2^32.
    OutPoint { txid, vout: u32::try_from(vout).unwrap_or(u32::MAX) }
}

/// The outputs' total, each and all within 21 million bitcoin.
fn output_total(tx: &Transaction) -> Result<u64, ChainRejection> {
    let mut total = 0u64;
    for output in &tx.output {
        if output.value > Amount::MAX_MONEY {
            return Err(ChainRejection::ValueOutOfRange);
        }
        total = total.checked_add(output.value.to_sat()).ok_or(ChainRejection::ValueOutOfRange)?;
    }
    if total > Amount::MAX_MONEY.to_sat() {
        return Err(ChainRejection::ValueOutOfRange);
    }
    Ok(total)
}

/// The spent outputs' total, within 21 million bitcoin (coins the faucet made can add up to more).
fn input_total(spent: &[TxOut]) -> Result<u64, ChainRejection> {
    spent
        .iter()
        .try_fold(0u64, |acc, o| acc.checked_add(o.value.to_sat()))
        .filter(|total| *total <= Amount::MAX_MONEY.to_sat())
        .ok_or(ChainRejection::ValueOutOfRange)
}

/// Whether a transaction may enter a block at `height` whose predecessor has time `prev_time` (Core compares time
/// locks with the median of the last eleven blocks; the previous block's time is close enough here).
fn is_final(tx: &Transaction, height: u64, prev_time: u32) -> bool {
    if !tx.is_lock_time_enabled() {
        return true;
    }
    match tx.lock_time {
        absolute::LockTime::Blocks(h) => u64::from(h.to_consensus_u32()) < height,
        absolute::LockTime::Seconds(t) => t.to_consensus_u32() < prev_time,
    }
}

/// The serial number in a faucet transaction's script.
fn faucet_serial(tx: &Transaction) -> Option<u64> {
    let mut pushes = tx.input.first()?.script_sig.instructions();
    match (pushes.next(), pushes.next()) {
        (Some(Ok(Instruction::PushBytes(tag))), Some(Ok(Instruction::PushBytes(serial))))
            if tag.as_bytes() == FAUCET_TAG =>
        {
            Some(u64::from_be_bytes(serial.as_bytes().try_into().ok()?))
        }
        _ => None,
    }
}

/// A block on `prev` at `height`: a coinbase paying `value` to a burning output, with the height, the extra nonce
/// `serial` and the witness commitment, then `transactions`; the header's nonce is searched until it meets regtest's
/// target.
fn assemble(
    prev: BlockHash,
    height: u64,
    serial: u64,
    value: Amount,
    transactions: Vec<Transaction>,
    time: u32,
) -> Block {
    let script_sig = Builder::new()
        .push_int(i64::try_from(height).unwrap_or(i64::MAX))
        .push_slice(serial.to_le_bytes())
        .into_script();
    let coinbase = Transaction {
        version: Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig,
            sequence: Sequence::MAX,
            witness: Witness::from_slice(&[WITNESS_RESERVED_VALUE]),
        }],
        output: vec![
            TxOut { value, script_pubkey: ScriptBuf::new_op_return(BURN_TAG) },
            // The witness commitment, filled in below (the witness root does not depend on the coinbase).
            TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::new() },
        ],
    };
    let mut txdata = Vec::with_capacity(transactions.len() + 1);
    txdata.push(coinbase);
    txdata.extend(transactions);
    let mut block = Block {
        header: Header {
            version: BlockVersion::from_consensus(BLOCK_VERSION),
            prev_blockhash: prev,
            merkle_root: TxMerkleNode::all_zeros(),
            time,
            bits: CompactTarget::from_consensus(REGTEST_BITS),
            nonce: 0,
        },
        txdata,
    };
    if let Some(root) = block.witness_root() {
        let commitment = Block::compute_witness_commitment(&root, &WITNESS_RESERVED_VALUE);
        let mut push = [0u8; 36];
        push[..4].copy_from_slice(&WITNESS_COMMITMENT_HEADER);
        push[4..].copy_from_slice(commitment.as_byte_array());
        block.txdata[0].output[1].script_pubkey = ScriptBuf::new_op_return(push);
    }
    if let Some(root) = block.compute_merkle_root() {
        block.header.merkle_root = root;
    }
    // About one nonce in two meets regtest's target; should none of 2^32 do, the next second is tried.
    let target = regtest_target();
    loop {
        for nonce in 0..=u32::MAX {
            block.header.nonce = nonce;
            if block.header.validate_pow(target).is_ok() {
                return block;
            }
        }
        block.header.time = block.header.time.wrapping_add(1);
    }
}
