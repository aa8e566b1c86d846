//! A development Bitcoin chain that really validates: a UTXO set, a mempool that refuses unknown or already spent
//! inputs, conflicts, outputs worth more than the inputs and any input that fails Bitcoin Core's interpreter, blocks
//! made on demand, confirmations, and reorganisations a test can trigger. Everything runs offline and in memory;
//! the service persists it and produces blocks on a timer (next step). Unconfirmed chains (a transaction spending
//! another still in the mempool) are not supported: the child is refused until its parent is mined.

use std::collections::{BTreeMap, HashMap, HashSet};

use bitcoin::hashes::Hash;
use bitcoin::{Amount, OutPoint, ScriptBuf, Transaction, TxOut, Txid};

use crate::CustodyError;
use crate::taproot::verify_spend;

/// Why the chain refused a transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainRejection {
    /// An input spends an output that does not exist or is already spent in a block.
    #[error("input {0} spends an unknown or spent output")]
    MissingInput(usize),
    /// An input spends an output that a transaction in the mempool already spends.
    #[error("input {0} conflicts with a transaction in the mempool")]
    Conflict(usize),
    /// The outputs are worth more than the inputs.
    #[error("the outputs are worth more than the inputs")]
    Overspend,
    /// The fee is below the chain's minimum.
    #[error("the fee of {fee} sat is below the minimum of {min} sat")]
    FeeTooLow {
        /// The fee.
        fee: u64,
        /// The minimum.
        min: u64,
    },
    /// The transaction is already known.
    #[error("the transaction is already known")]
    Duplicate,
    /// A script or signature fails Bitcoin's consensus rules.
    #[error("{0}")]
    Script(String),
}

/// One block: its height and the transactions it confirmed.
#[derive(Debug, Clone)]
pub struct Block {
    /// Height (the first mined block is 1).
    pub height: u64,
    /// Transactions, in order.
    pub transactions: Vec<Transaction>,
}

/// The chain.
#[derive(Default)]
pub struct DevChain {
    utxos: HashMap<OutPoint, TxOut>,
    mempool: BTreeMap<Txid, Transaction>,
    /// The outputs the mempool's transactions spend.
    reserved: HashSet<OutPoint>,
    blocks: Vec<Block>,
    confirmed_at: HashMap<Txid, u64>,
    /// The smallest fee accepted, in satoshis.
    pub min_fee_sat: u64,
    coinbase_counter: u64,
    /// Every output the faucet made, so that a reorganisation can restore one a block had spent.
    minted: HashMap<OutPoint, TxOut>,
}

impl DevChain {
    /// An empty chain with a minimum fee.
    pub fn new(min_fee_sat: u64) -> DevChain {
        DevChain { min_fee_sat, ..DevChain::default() }
    }

    /// Mints an output paying `amount` to `script` (the development faucet: a coinbase-like transaction, mined at
    /// once); answers the outpoint.
    pub fn faucet(&mut self, script: ScriptBuf, amount: Amount) -> OutPoint {
        self.coinbase_counter += 1;
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&self.coinbase_counter.to_be_bytes());
        id[8..16].copy_from_slice(b"devfauct");
        let outpoint = OutPoint { txid: Txid::from_byte_array(id), vout: 0 };
        let output = TxOut { value: amount, script_pubkey: script };
        self.minted.insert(outpoint, output.clone());
        self.utxos.insert(outpoint, output);
        outpoint
    }

    /// The unspent output at `outpoint`, if it exists in a block.
    pub fn utxo(&self, outpoint: &OutPoint) -> Option<&TxOut> {
        self.utxos.get(outpoint)
    }

    /// Accepts a transaction into the mempool after every check; answers its id.
    pub fn submit(&mut self, tx: Transaction) -> Result<Txid, ChainRejection> {
        let txid = tx.compute_txid();
        if self.mempool.contains_key(&txid) || self.confirmed_at.contains_key(&txid) {
            return Err(ChainRejection::Duplicate);
        }
        let mut spent = Vec::with_capacity(tx.input.len());
        for (i, input) in tx.input.iter().enumerate() {
            if self.reserved.contains(&input.previous_output) {
                return Err(ChainRejection::Conflict(i));
            }
            spent.push(self.utxos.get(&input.previous_output).cloned().ok_or(ChainRejection::MissingInput(i))?);
        }
        let value_in = spent.iter().try_fold(0u64, |acc, o| acc.checked_add(o.value.to_sat()));
        let value_out = tx.output.iter().try_fold(0u64, |acc, o| acc.checked_add(o.value.to_sat()));
        let (Some(value_in), Some(value_out)) = (value_in, value_out) else { return Err(ChainRejection::Overspend) };
        let fee = value_in.checked_sub(value_out).ok_or(ChainRejection::Overspend)?;
        if fee < self.min_fee_sat {
            return Err(ChainRejection::FeeTooLow { fee, min: self.min_fee_sat });
        }
        verify_spend(&tx, &spent).map_err(|e: CustodyError| ChainRejection::Script(e.to_string()))?;
        for input in &tx.input {
            self.reserved.insert(input.previous_output);
        }
        self.mempool.insert(txid, tx);
        Ok(txid)
    }

    /// Mines a block with every mempool transaction; answers its height.
    pub fn mine(&mut self) -> u64 {
        let height = self.blocks.len() as u64 + 1;
        let transactions: Vec<Transaction> = std::mem::take(&mut self.mempool).into_values().collect();
        self.reserved.clear();
        for tx in &transactions {
            let txid = tx.compute_txid();
            for input in &tx.input {
                self.utxos.remove(&input.previous_output);
            }
            for (vout, output) in tx.output.iter().enumerate() {
                let vout = u32::try_from(vout).unwrap_or(u32::MAX);
                self.utxos.insert(OutPoint { txid, vout }, output.clone());
            }
            self.confirmed_at.insert(txid, height);
        }
        self.blocks.push(Block { height, transactions });
        height
    }

    /// The chain's height.
    pub fn height(&self) -> u64 {
        self.blocks.len() as u64
    }

    /// Confirmations of a transaction: 0 in the mempool or unknown, 1 in the tip block, and so on.
    pub fn confirmations(&self, txid: &Txid) -> u64 {
        self.confirmed_at.get(txid).map_or(0, |h| self.height() + 1 - h)
    }

    /// Whether a transaction waits in the mempool.
    pub fn in_mempool(&self, txid: &Txid) -> bool {
        self.mempool.contains_key(txid)
    }

    /// Undoes the last `depth` blocks (a reorganisation): their transactions go back to the mempool, in order, where
    /// they are checked again; those that no longer fit are dropped (answered).
    pub fn reorg(&mut self, depth: u64) -> Vec<Txid> {
        let mut undone = Vec::new();
        for _ in 0..depth.min(self.height()) {
            let Some(block) = self.blocks.pop() else { break };
            for tx in block.transactions.iter().rev() {
                let txid = tx.compute_txid();
                for (vout, _) in tx.output.iter().enumerate() {
                    self.utxos.remove(&OutPoint { txid, vout: u32::try_from(vout).unwrap_or(u32::MAX) });
                }
                self.confirmed_at.remove(&txid);
                undone.push((txid, tx.clone()));
            }
            // The outputs they spent come back (they were in blocks before, or minted by the faucet).
            for tx in &block.transactions {
                for input in &tx.input {
                    if let Some(output) = self.spent_output(&input.previous_output) {
                        self.utxos.insert(input.previous_output, output);
                    }
                }
            }
        }
        let mut dropped = Vec::new();
        for (txid, tx) in undone.into_iter().rev() {
            if self.submit(tx).is_err() {
                dropped.push(txid);
            }
        }
        dropped
    }

    /// The output at `outpoint` as created by a transaction still in a block or the mempool, or by the faucet.
    fn spent_output(&self, outpoint: &OutPoint) -> Option<TxOut> {
        self.blocks
            .iter()
            .flat_map(|b| b.transactions.iter())
            .chain(self.mempool.values())
            .find(|tx| tx.compute_txid() == outpoint.txid)
            .and_then(|tx| tx.output.get(usize::try_from(outpoint.vout).ok()?).cloned())
            .or_else(|| self.minted.get(outpoint).cloned())
    }
}
