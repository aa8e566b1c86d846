//! Bitcoin Core's JSON-RPC interface (version 1.0 requests over HTTP POST with basic authentication), as the chain of
//! a real deployment.
//!
//! Core answers an RPC error with HTTP 500 (404 for an unknown method) and a JSON-RPC body, and a bad login with 401
//! and no body; a busy node answers 503 with text. Fee estimates arrive as JSON numbers in BTC/kvB: serde_json holds
//! them as `f64`, whose shortest representation gives back Core's decimal text exactly (it prints at most 8
//! decimals), and that text is converted with integer arithmetic only.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use bitcoin::{Block, BlockHash, Network, Transaction, TxOut, Txid};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Chain, ChainError};

/// How long one RPC call may take.
const RPC_TIMEOUT_S: u64 = 30;
/// The confirmation target of fee estimates, in blocks.
const FEE_TARGET_BLOCKS: u64 = 6;
/// The fee rate used when the node has no estimate yet, in sat/vB (Core's default minimum relay fee rate).
const FALLBACK_FEE_RATE_SAT_VB: u64 = 1;

// Bitcoin Core's error codes (src/rpc/protocol.h).
const RPC_INVALID_ADDRESS_OR_KEY: i64 = -5;
const RPC_INVALID_PARAMETER: i64 = -8;
const RPC_VERIFY_ERROR: i64 = -25;
const RPC_VERIFY_REJECTED: i64 = -26;
const RPC_VERIFY_ALREADY_IN_CHAIN: i64 = -27;
const RPC_IN_WARMUP: i64 = -28;

/// How to log in to Bitcoin Core's RPC interface.
#[derive(Debug, Clone)]
pub enum RpcAuth {
    /// `rpcuser`/`rpcpassword` or an `rpcauth` entry.
    UserPass {
        /// The user.
        user: String,
        /// The password (never logged).
        password: SecretString,
    },
    /// The cookie file Core writes at start (`<datadir>/<network>/.cookie`), read at every call because a restarted
    /// node writes a new one.
    Cookie(PathBuf),
}

/// A Bitcoin Core node reached over JSON-RPC.
pub struct BitcoinCoreRpc {
    url: String,
    auth: RpcAuth,
    network: Network,
    client: reqwest::Client,
    next_id: AtomicU64,
}

impl std::fmt::Debug for BitcoinCoreRpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BitcoinCoreRpc").field("url", &self.url).field("network", &self.network).finish()
    }
}

/// One JSON-RPC answer.
#[derive(Deserialize)]
struct RpcResponse {
    #[serde(default)]
    result: Value,
    #[serde(default)]
    error: Option<RpcErrorBody>,
    #[serde(default)]
    id: Value,
}

#[derive(Deserialize)]
struct RpcErrorBody {
    code: i64,
    message: String,
}

#[derive(Deserialize)]
struct BlockchainInfo {
    chain: String,
    blocks: u64,
    bestblockhash: String,
}

#[derive(Deserialize)]
struct SmartFee {
    feerate: Option<serde_json::Number>,
    #[serde(default)]
    errors: Vec<String>,
}

#[derive(Deserialize)]
struct MempoolAccept {
    txid: String,
    allowed: Option<bool>,
    #[serde(rename = "reject-reason")]
    reject_reason: Option<String>,
}

impl BitcoinCoreRpc {
    /// A client for the node at `url` (such as `http://127.0.0.1:18443/`) that must follow `network`. Nothing is sent
    /// until the first call.
    pub fn new(url: impl Into<String>, auth: RpcAuth, network: Network) -> Result<BitcoinCoreRpc, ChainError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(RPC_TIMEOUT_S))
            .build()
            .map_err(|e| ChainError::Unavailable(format!("cannot build the HTTP client: {}", e.without_url())))?;
        Ok(BitcoinCoreRpc { url: url.into(), auth, network, client, next_id: AtomicU64::new(1) })
    }

    /// Asks the node whether it would accept `tx` into its mempool (`testmempoolaccept`) without sending it: `Ok` if
    /// so, [`ChainError::Rejected`] with Core's reason if not.
    pub async fn test_accept(&self, tx: &Transaction) -> Result<(), ChainError> {
        let result = self.call("testmempoolaccept", json!([[serialize_hex(tx)]])).await?;
        let answers: Vec<MempoolAccept> = parse("testmempoolaccept", result)?;
        let [answer] = answers.as_slice() else {
            return Err(ChainError::Invalid(format!(
                "testmempoolaccept: {} answers for one transaction",
                answers.len()
            )));
        };
        if answer.txid != tx.compute_txid().to_string() {
            return Err(ChainError::Invalid(format!("testmempoolaccept answered for transaction {}", answer.txid)));
        }
        match answer.allowed {
            Some(true) => Ok(()),
            _ => Err(ChainError::Rejected(answer.reject_reason.clone().unwrap_or_else(|| "not allowed".into()))),
        }
    }

    /// The user and password for this call.
    async fn credentials(&self) -> Result<(String, SecretString), ChainError> {
        match &self.auth {
            RpcAuth::UserPass { user, password } => Ok((user.clone(), password.clone())),
            RpcAuth::Cookie(path) => {
                let cookie = tokio::fs::read_to_string(path).await.map_err(|e| {
                    ChainError::Unavailable(format!("cannot read the cookie file {}: {e}", path.display()))
                })?;
                let cookie = SecretString::from(cookie);
                let Some((user, password)) = cookie.expose_secret().trim_end().split_once(':') else {
                    return Err(ChainError::Invalid(format!(
                        "the cookie file {} is not user:password",
                        path.display()
                    )));
                };
                Ok((user.to_owned(), SecretString::from(password)))
            }
        }
    }

    /// One call: answers the `result`, or the error mapped to [`ChainError`].
    async fn call(&self, method: &str, params: Value) -> Result<Value, ChainError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = json!({"jsonrpc": "1.0", "id": id, "method": method, "params": params});
        let (user, password) = self.credentials().await?;
        let response = self
            .client
            .post(&self.url)
            .basic_auth(user, Some(password.expose_secret()))
            .json(&request)
            .send()
            .await
            .map_err(|e| ChainError::Unavailable(format!("{method}: {}", e.without_url())))?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(ChainError::Unauthorized);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| ChainError::Unavailable(format!("{method}: reading the answer: {}", e.without_url())))?;
        let answer: RpcResponse = match serde_json::from_slice(&body) {
            Ok(answer) => answer,
            Err(_) if !status.is_success() => {
                return Err(ChainError::Unavailable(format!("{method}: HTTP {status} without a JSON-RPC answer")));
            }
            Err(e) => return Err(ChainError::Invalid(format!("{method}: the answer is not JSON-RPC: {e}"))),
        };
        if let Some(error) = answer.error {
            tracing::debug!(method, code = error.code, message = %error.message, "bitcoind answered an error");
            return Err(match error.code {
                RPC_VERIFY_ERROR | RPC_VERIFY_REJECTED | RPC_VERIFY_ALREADY_IN_CHAIN => {
                    ChainError::Rejected(error.message)
                }
                RPC_IN_WARMUP => ChainError::Unavailable(format!("{method}: the node is starting: {}", error.message)),
                code => ChainError::Rpc { code, message: error.message },
            });
        }
        if !status.is_success() {
            return Err(ChainError::Unavailable(format!("{method}: HTTP {status}")));
        }
        if answer.id != json!(id) {
            return Err(ChainError::Invalid(format!("{method}: the answer is for request {}, not {id}", answer.id)));
        }
        Ok(answer.result)
    }
}

#[async_trait]
impl Chain for BitcoinCoreRpc {
    fn network(&self) -> Network {
        self.network
    }

    /// From `getblockchaininfo`, which also says which chain the node follows: another network is an error.
    async fn tip(&self) -> Result<(u64, BlockHash), ChainError> {
        let info: BlockchainInfo = parse("getblockchaininfo", self.call("getblockchaininfo", json!([])).await?)?;
        if info.chain != self.network.to_core_arg() {
            return Err(ChainError::WrongNetwork { expected: self.network, found: info.chain });
        }
        Ok((info.blocks, parse_hash("getblockchaininfo", &info.bestblockhash)?))
    }

    async fn block_hash(&self, height: u64) -> Result<Option<BlockHash>, ChainError> {
        match self.call("getblockhash", json!([height])).await {
            Ok(result) => {
                let hash: String = parse("getblockhash", result)?;
                Ok(Some(parse_hash("getblockhash", &hash)?))
            }
            // "Block height out of range".
            Err(ChainError::Rpc { code: RPC_INVALID_PARAMETER, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn block(&self, hash: &BlockHash) -> Result<Block, ChainError> {
        let hex: String = match self.call("getblock", json!([hash.to_string(), 0])).await {
            Ok(result) => parse("getblock", result)?,
            // "Block not found".
            Err(ChainError::Rpc { code: RPC_INVALID_ADDRESS_OR_KEY, .. }) => {
                return Err(ChainError::UnknownBlock(*hash));
            }
            Err(e) => return Err(e),
        };
        let block: Block = deserialize_hex(&hex)
            .map_err(|e| ChainError::Invalid(format!("getblock: the block does not decode: {e}")))?;
        if block.block_hash() != *hash {
            return Err(ChainError::Invalid(format!("getblock: asked for {hash}, got {}", block.block_hash())));
        }
        Ok(block)
    }

    async fn broadcast(&self, tx: &Transaction) -> Result<Txid, ChainError> {
        let result = self.call("sendrawtransaction", json!([serialize_hex(tx)])).await?;
        let txid: String = parse("sendrawtransaction", result)?;
        let txid = Txid::from_str(&txid)
            .map_err(|e| ChainError::Invalid(format!("sendrawtransaction: a bad txid {txid:?}: {e}")))?;
        if txid != tx.compute_txid() {
            return Err(ChainError::Invalid(format!("sendrawtransaction answered {txid} for {}", tx.compute_txid())));
        }
        Ok(txid)
    }

    /// `getrawtransaction` for each transaction the inputs spend (once each): Bitcoin Core finds a confirmed one only
    /// with `-txindex=1`, so a deployment that screens deposit sources runs its node with it; without, the sources are
    /// `None` and the watcher logs that it could not screen them.
    async fn previous_outputs(&self, tx: &Transaction) -> Result<Vec<Option<TxOut>>, ChainError> {
        let mut funding: std::collections::HashMap<Txid, Option<Transaction>> = std::collections::HashMap::new();
        let mut outputs = Vec::with_capacity(tx.input.len());
        for input in &tx.input {
            let spent = input.previous_output;
            if spent.is_null() {
                outputs.push(None);
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = funding.entry(spent.txid) {
                let found = match self.call("getrawtransaction", json!([spent.txid.to_string(), false])).await {
                    Ok(result) => {
                        let hex: String = parse("getrawtransaction", result)?;
                        let found: Transaction = deserialize_hex(&hex).map_err(|e| {
                            ChainError::Invalid(format!("getrawtransaction: the transaction does not decode: {e}"))
                        })?;
                        if found.compute_txid() != spent.txid {
                            return Err(ChainError::Invalid(format!(
                                "getrawtransaction: asked for {}, got {}",
                                spent.txid,
                                found.compute_txid()
                            )));
                        }
                        Some(found)
                    }
                    // "No such mempool or blockchain transaction" (no transaction index, or truly unknown).
                    Err(ChainError::Rpc { code: RPC_INVALID_ADDRESS_OR_KEY, .. }) => None,
                    Err(e) => return Err(e),
                };
                slot.insert(found);
            }
            let output = funding
                .get(&spent.txid)
                .and_then(Option::as_ref)
                .and_then(|t| t.output.get(usize::try_from(spent.vout).ok()?).cloned());
            outputs.push(output);
        }
        Ok(outputs)
    }

    /// `estimatesmartfee 6`, converted from BTC/kvB to sat/vB and rounded up; 1 sat/vB while Core has too little data.
    async fn fee_rate(&self) -> Result<u64, ChainError> {
        let fee: SmartFee =
            parse("estimatesmartfee", self.call("estimatesmartfee", json!([FEE_TARGET_BLOCKS])).await?)?;
        match fee.feerate {
            Some(rate) => fee_rate_from_btc_per_kvb(&rate.to_string())
                .map(|r| r.max(FALLBACK_FEE_RATE_SAT_VB))
                .map_err(|e| ChainError::Invalid(format!("estimatesmartfee: feerate {rate}: {e}"))),
            None => {
                tracing::debug!(errors = ?fee.errors, "no fee estimate yet; using the fallback");
                Ok(FALLBACK_FEE_RATE_SAT_VB)
            }
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(method: &str, result: Value) -> Result<T, ChainError> {
    serde_json::from_value(result).map_err(|e| ChainError::Invalid(format!("{method}: unexpected result: {e}")))
}

fn parse_hash(method: &str, hex: &str) -> Result<BlockHash, ChainError> {
    BlockHash::from_str(hex).map_err(|e| ChainError::Invalid(format!("{method}: a bad block hash {hex:?}: {e}")))
}

/// Converts a fee rate written as a decimal number of BTC per 1000 virtual bytes (as Core prints it: `0.00012345`,
/// or in exponent form `1e-6`) to whole satoshis per virtual byte, rounded up, with integer arithmetic only.
pub fn fee_rate_from_btc_per_kvb(text: &str) -> Result<u64, String> {
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.strip_prefix('+').unwrap_or(e).parse::<i64>().map_err(|_| "a bad exponent")?),
        None => (text, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err("no digits".into());
    }
    if !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
        return Err("not a non-negative decimal number".into());
    }
    // value = digits × 10^(exponent − fraction length) BTC/kvB; × 10^8 sat/BTC gives sat/kvB.
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(0);
    }
    if digits.len() > 38 {
        return Err("too many digits".into());
    }
    let digits: u128 = digits.parse().map_err(|_| "too many digits")?;
    let fraction_len = i64::try_from(fraction.len()).map_err(|_| "too many digits")?;
    let shift = exponent.checked_add(8).and_then(|s| s.checked_sub(fraction_len)).ok_or("a bad exponent")?;
    let sat_per_kvb: u128 = if shift >= 0 {
        let scale = u32::try_from(shift).ok().and_then(|s| 10u128.checked_pow(s)).ok_or("too large")?;
        digits.checked_mul(scale).ok_or("too large")?
    } else {
        match u32::try_from(-shift).ok().and_then(|s| 10u128.checked_pow(s)) {
            Some(scale) => digits.div_ceil(scale),
            // Smaller than one satoshi per kvB, yet above zero.
            None => 1,
        }
    };
    u64::try_from(sat_per_kvb.div_ceil(1000)).map_err(|_| "too large".into())
}

#[cfg(test)]
mod tests {
    use super::fee_rate_from_btc_per_kvb as rate;

    #[test]
    fn fee_rates_convert_exactly_and_round_up() {
        assert_eq!(rate("0.00012345"), Ok(13)); // 12,345 sat/kvB = 12.345 sat/vB
        assert_eq!(rate("0.00001"), Ok(1));
        assert_eq!(rate("0.00001000"), Ok(1));
        assert_eq!(rate("0.00001001"), Ok(2));
        assert_eq!(rate("0.0002"), Ok(20));
        assert_eq!(rate("1e-5"), Ok(1));
        assert_eq!(rate("1.5e-4"), Ok(15));
        assert_eq!(rate("2E-3"), Ok(200));
        assert_eq!(rate("1e-6"), Ok(1), "0.1 sat/vB rounds up to 1");
        assert_eq!(rate("1e-400"), Ok(1));
        assert_eq!(rate("0"), Ok(0));
        assert_eq!(rate("0.000010000000001"), Ok(2));
        assert_eq!(rate("1"), Ok(100_000));
        assert_eq!(rate("12.5"), Ok(1_250_000));
        assert_eq!(rate("1e+1"), Ok(1_000_000));
        for bad in ["", ".", "-0.0001", "abc", "1e", "1e5.5", "0x10", " 1", "1e999999999999999999999"] {
            assert!(rate(bad).is_err(), "{bad:?}");
        }
        assert!(rate("1e30").is_err(), "beyond u64");
    }
}
