//! The development node: the pure [`DevChain`] behind a mutex, a block log on disk, a timer that mines, and the
//! [`Chain`] trait on top.
//!
//! The block log is an append-only file of [`LogRecord`]s (each length-prefixed and checksummed). Opening the node
//! replays it; every record a call produces is appended and flushed to disk (`fsync`) before the call returns, so a
//! block a watcher has seen survives a crash. A crash in the middle of an append leaves a torn last record, which
//! opening cuts away; damage anywhere else is refused rather than silently dropped. The mempool is not written down:
//! after a restart, unconfirmed transactions (faucet payments not yet mined included) are gone, as they would be
//! from a regtest node restarted without its mempool file.
//!
//! The mutex is held only for the chain's own work and the append (never across an `.await`); an append that fails
//! leaves the log behind the chain in memory, so the node then refuses every further change until it is reopened.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bitcoin::{Amount, Block, BlockHash, Network, OutPoint, ScriptBuf, Transaction, TxOut, Txid};
use rampart_custody::devchain::{DevChain, LogDecodeError, LogRecord};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Chain, ChainError};

/// A clock in seconds since the Unix epoch (block times).
type Clock = Box<dyn Fn() -> u32 + Send + Sync>;

/// The development chain as a node: shared, persistent if asked, and mined on demand or on a timer.
pub struct DevChainNode {
    state: Mutex<State>,
    clock: Clock,
    tip: watch::Sender<u64>,
}

struct State {
    chain: DevChain,
    log: Option<BlockLog>,
    /// Set when an append failed: the log no longer matches the chain.
    broken: Option<String>,
}

struct BlockLog {
    file: File,
    path: PathBuf,
    /// The length of the file's valid records.
    len: u64,
}

impl std::fmt::Debug for DevChainNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevChainNode").field("tip", &*self.tip.borrow()).finish_non_exhaustive()
    }
}

impl DevChainNode {
    /// Opens a node whose blocks take the system's time: with `path`, the block log there is replayed (created if
    /// missing, a torn last record cut away) and appended to; without, the chain lives in memory only. The mempool
    /// asks at least `min_fee_rate_sat_vb`.
    pub fn open(path: Option<PathBuf>, min_fee_rate_sat_vb: u64) -> Result<Arc<DevChainNode>, ChainError> {
        DevChainNode::open_with_clock(path, min_fee_rate_sat_vb, system_time_s)
    }

    /// [`DevChainNode::open`] with another clock for block times (seconds since the Unix epoch).
    pub fn open_with_clock(
        path: Option<PathBuf>,
        min_fee_rate_sat_vb: u64,
        clock: impl Fn() -> u32 + Send + Sync + 'static,
    ) -> Result<Arc<DevChainNode>, ChainError> {
        let mut chain = DevChain::new(min_fee_rate_sat_vb);
        let log = match path {
            Some(path) => Some(BlockLog::open(path, &mut chain)?),
            None => None,
        };
        let (tip, _) = watch::channel(chain.height());
        Ok(Arc::new(DevChainNode {
            state: Mutex::new(State { chain, log, broken: None }),
            clock: Box::new(clock),
            tip,
        }))
    }

    /// Mines `n` blocks (the first takes the mempool); answers the new height once they are on disk.
    pub fn mine(&self, n: u64) -> Result<u64, ChainError> {
        let mut state = self.state_for_change()?;
        for _ in 0..n {
            let time = self.block_time(&state.chain);
            state.chain.mine(time);
        }
        self.commit(&mut state)?;
        Ok(state.chain.height())
    }

    /// The faucet: a payment of `amount` to `script`, confirmed by the next mined block; answers its outpoint.
    pub fn faucet(&self, script: ScriptBuf, amount: Amount) -> Result<OutPoint, ChainError> {
        let mut state = self.state_for_change()?;
        state.chain.faucet(script, amount).map_err(|e| ChainError::Rejected(e.to_string()))
    }

    /// A reorganisation `depth` blocks deep that drops the transactions in `evict` (see [`DevChain::reorg`]);
    /// answers every transaction dropped.
    pub fn reorg(&self, depth: u64, evict: &[Txid]) -> Result<Vec<Txid>, ChainError> {
        let mut state = self.state_for_change()?;
        let time = self.block_time(&state.chain);
        let dropped = state.chain.reorg(depth, evict, time)?;
        self.commit(&mut state)?;
        Ok(dropped)
    }

    /// Confirmations of a transaction (0 if unconfirmed or unknown).
    pub fn confirmations(&self, txid: &Txid) -> u64 {
        self.state().chain.confirmations(txid)
    }

    /// Reads the chain under the lock (keep `read` short).
    pub fn with_chain<R>(&self, read: impl FnOnce(&DevChain) -> R) -> R {
        read(&self.state().chain)
    }

    /// The tip's height now and after every change (for a watcher, or a test, to wait on instead of polling).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tip.subscribe()
    }

    /// Mines one block every `every`, mempool empty or not, like a regtest node with a miner attached. The task stops
    /// when the node is dropped; a failure to mine is logged and the timer goes on.
    pub fn spawn_timer(self: &Arc<Self>, every: Duration) -> JoinHandle<()> {
        let node = Arc::downgrade(self);
        let every = every.max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(node) = node.upgrade() else { break };
                // Appending to the log syncs the disk: off the async threads.
                match tokio::task::spawn_blocking(move || node.mine(1)).await {
                    Ok(Ok(height)) => tracing::debug!(height, "dev chain: mined a block"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "dev chain: the timer could not mine"),
                    Err(e) => tracing::warn!(error = %e, "dev chain: the mining task failed"),
                }
            }
        })
    }

    /// The state, even after a panic elsewhere: every change to it completes before the lock is released, or
    /// marks the node broken.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state for a change, refused once the log fell behind.
    fn state_for_change(&self) -> Result<MutexGuard<'_, State>, ChainError> {
        let state = self.state();
        match &state.broken {
            Some(reason) => {
                Err(ChainError::Log(format!("the node stopped after a failed write ({reason}); reopen it")))
            }
            None => Ok(state),
        }
    }

    /// The time of the next block: the clock, but never before the tip's time.
    fn block_time(&self, chain: &DevChain) -> u32 {
        let tip_time = chain.block_at(chain.height()).map_or(0, |b| b.header.time);
        (self.clock)().max(tip_time)
    }

    /// Appends what the chain recorded since the last commit and announces the new tip.
    fn commit(&self, state: &mut State) -> Result<(), ChainError> {
        let records = state.chain.drain_log();
        if let Some(log) = &mut state.log
            && !records.is_empty()
            && let Err(e) = log.append(&records)
        {
            state.broken = Some(e.to_string());
            return Err(e);
        }
        self.tip.send_replace(state.chain.height());
        Ok(())
    }
}

impl BlockLog {
    /// Opens (or creates) the log at `path` and replays it into `chain`.
    fn open(path: PathBuf, chain: &mut DevChain) -> Result<BlockLog, ChainError> {
        let io = |what: &str, e: std::io::Error| ChainError::Log(format!("{}: {what}: {e}", path.display()));
        let existed = path.exists();
        let mut file =
            OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(|e| io("cannot open", e))?;
        if !existed {
            sync_parent(&path).map_err(|e| io("cannot sync its directory", e))?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| io("cannot read", e))?;
        let mut offset = 0;
        while offset < bytes.len() {
            let rest = &bytes[offset..];
            match LogRecord::decode(rest) {
                Ok((record, used)) => {
                    chain.apply(&record).map_err(|e| {
                        ChainError::Log(format!("{}: the record at byte {offset} does not replay: {e}", path.display()))
                    })?;
                    offset += used;
                }
                Err(e) if is_torn_tail(rest, &e) => {
                    tracing::warn!(
                        path = %path.display(),
                        offset,
                        dropped_bytes = rest.len(),
                        "dev chain: cutting a torn last record from the block log"
                    );
                    file.set_len(offset as u64).map_err(|e| io("cannot truncate", e))?;
                    file.sync_all().map_err(|e| io("cannot sync", e))?;
                    break;
                }
                Err(e) => {
                    return Err(ChainError::Log(format!("{}: the record at byte {offset}: {e}", path.display())));
                }
            }
        }
        Ok(BlockLog { file, path, len: offset as u64 })
    }

    /// Appends records and syncs them to disk; on failure cuts the file back to what it held.
    fn append(&mut self, records: &[LogRecord]) -> Result<(), ChainError> {
        let bytes: Vec<u8> = records.iter().flat_map(LogRecord::encode).collect();
        let written = self.file.write_all(&bytes).and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Best effort: a partial record left behind would be cut at the next open anyway.
                let _ = self.file.set_len(self.len);
                Err(ChainError::Log(format!("{}: cannot append: {e}", self.path.display())))
            }
        }
    }
}

/// Whether a record that does not decode is what a crash during its append leaves: cut short, or the file's last
/// record by its own length.
fn is_torn_tail(rest: &[u8], error: &LogDecodeError) -> bool {
    match error {
        LogDecodeError::Incomplete => true,
        LogDecodeError::Corrupt(_) => match rest.get(..4) {
            Some(len) => {
                let len = u64::from(u32::from_le_bytes([len[0], len[1], len[2], len[3]]));
                len + 8 >= rest.len() as u64
            }
            None => true,
        },
    }
}

/// Makes a new file's directory entry durable.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

fn system_time_s() -> u32 {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    u32::try_from(seconds).unwrap_or(u32::MAX)
}

#[async_trait]
impl Chain for DevChainNode {
    fn network(&self) -> Network {
        Network::Regtest
    }

    async fn tip(&self) -> Result<(u64, BlockHash), ChainError> {
        Ok(self.state().chain.tip())
    }

    async fn block_hash(&self, height: u64) -> Result<Option<BlockHash>, ChainError> {
        Ok(self.state().chain.block_hash(height))
    }

    async fn block(&self, hash: &BlockHash) -> Result<Block, ChainError> {
        self.state().chain.block(hash).cloned().ok_or(ChainError::UnknownBlock(*hash))
    }

    async fn broadcast(&self, tx: &Transaction) -> Result<Txid, ChainError> {
        let mut state = self.state();
        let txid = tx.compute_txid();
        if state.chain.in_mempool(&txid) {
            return Ok(txid);
        }
        state.chain.submit(tx.clone()).map_err(|e| ChainError::Rejected(e.to_string()))
    }

    async fn fee_rate(&self) -> Result<u64, ChainError> {
        Ok(self.state().chain.min_fee_rate_sat_vb().max(1))
    }

    async fn previous_outputs(&self, tx: &Transaction) -> Result<Vec<Option<TxOut>>, ChainError> {
        let state = self.state();
        Ok(tx
            .input
            .iter()
            .map(|input| {
                let spent = input.previous_output;
                let funding = state.chain.transaction(&spent.txid)?;
                funding.output.get(usize::try_from(spent.vout).ok()?).cloned()
            })
            .collect())
    }
}
