//! The Bitcoin chains that custody reads and writes through one trait, [`Chain`]: the tip, blocks by height and by
//! hash, broadcasting a transaction, and a fee rate. Two implementations:
//!
//! - [`DevChainNode`]: the pure development chain of `rampart-custody` (real regtest blocks, a validating mempool,
//!   reorganisations on demand) behind a mutex, with an optional append-only block log that survives restarts and a
//!   timer that mines like a regtest miner. For development, demos and tests.
//! - [`BitcoinCoreRpc`]: Bitcoin Core's JSON-RPC interface, for real deployments (user and password, or the cookie
//!   file). No node is reachable from this project's machines, so it is tested against recorded responses.

mod dev;
mod rpc;

use async_trait::async_trait;
use bitcoin::{Block, BlockHash, Network, Transaction, TxOut, Txid};
use rampart_custody::devchain::BlockError;

pub use dev::DevChainNode;
pub use rpc::{BitcoinCoreRpc, RpcAuth, fee_rate_from_btc_per_kvb};

/// What went wrong talking to a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain could not be reached or did not answer (connection, timeout, an HTTP error without a JSON-RPC body,
    /// a node still starting): trying again later can help.
    #[error("the chain is unavailable: {0}")]
    Unavailable(String),
    /// The node refused the transaction (consensus or policy: a conflict, a fee too low, already confirmed, …).
    #[error("the transaction was rejected: {0}")]
    Rejected(String),
    /// The node refused the credentials (HTTP 401 or 403).
    #[error("the node refused the RPC credentials")]
    Unauthorized,
    /// The node follows another network than the one configured.
    #[error("the node follows {found}, not {expected}")]
    WrongNetwork {
        /// The network configured.
        expected: Network,
        /// The chain the node named.
        found: String,
    },
    /// No block with this hash is known.
    #[error("block {0} is unknown")]
    UnknownBlock(BlockHash),
    /// The node answered something that is not what was asked for (not JSON, a bad hex block, a wrong hash, …).
    #[error("the node's answer is invalid: {0}")]
    Invalid(String),
    /// Another JSON-RPC error.
    #[error("RPC error {code}: {message}")]
    Rpc {
        /// Bitcoin Core's error code.
        code: i64,
        /// Its message.
        message: String,
    },
    /// The development chain refused a block operation (a reorganisation deeper than the chain, …).
    #[error("the development chain refused: {0}")]
    Dev(#[from] BlockError),
    /// The development node's block log cannot be read, replayed or written.
    #[error("block log: {0}")]
    Log(String),
}

/// A Bitcoin chain as custody needs it. Implementations are shared between tasks.
#[async_trait]
pub trait Chain: Send + Sync {
    /// The network the chain belongs to (addresses and checks depend on it).
    fn network(&self) -> Network;

    /// The height and hash of the best block.
    async fn tip(&self) -> Result<(u64, BlockHash), ChainError>;

    /// The hash of the best chain's block at `height`, if the chain is that high.
    async fn block_hash(&self, height: u64) -> Result<Option<BlockHash>, ChainError>;

    /// The block with this hash ([`ChainError::UnknownBlock`] if there is none).
    async fn block(&self, hash: &BlockHash) -> Result<Block, ChainError>;

    /// Sends a signed transaction to the network; answers its id. A refusal is [`ChainError::Rejected`]; a
    /// transaction already waiting in the mempool is answered with its id, so a retry is harmless.
    async fn broadcast(&self, tx: &Transaction) -> Result<Txid, ChainError>;

    /// A fee rate, in satoshis per virtual byte, that should confirm within a few blocks (at least 1).
    async fn fee_rate(&self) -> Result<u64, ChainError>;

    /// The outputs that `tx`'s inputs spend, in input order: what funded it, so that its sources can be screened.
    /// `None` for an input that creates coins (a coinbase) or whose transaction the chain cannot find.
    async fn previous_outputs(&self, tx: &Transaction) -> Result<Vec<Option<TxOut>>, ChainError>;
}
