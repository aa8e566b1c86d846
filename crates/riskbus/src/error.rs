//! The crate's error.

use std::path::PathBuf;

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name, a partition count or a worker assignment is unusable; nothing was done.
    #[error("invalid riskbus configuration: {0}")]
    Config(String),
    /// A call to the NATS server failed (unreachable, timed out, refused by JetStream). Retrying may help.
    #[error("NATS JetStream: {context}: {source}")]
    Nats {
        /// What was being done.
        context: String,
        /// The client's error.
        #[source]
        source: async_nats::Error,
    },
    /// An envelope or a decision could not be encoded.
    #[error("JSON encoding: {0}")]
    Json(#[from] serde_json::Error),
    /// A checkpoint file could not be read or written.
    #[error("checkpoint {path}: {source}")]
    CheckpointIo {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file exists but cannot be used: corrupt, of another format, or of another stream or partition
    /// count (whose users are not this partition's users).
    #[error("checkpoint {path} cannot be used: {reason}")]
    CheckpointInvalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The stream no longer holds the events that follow a checkpoint (its limits discarded them), so resuming would
    /// silently skip events; the checkpoint must be rebuilt or removed by an operator.
    #[error(
        "partition {partition}: the checkpoint ends at stream sequence {checkpoint} but the stream now begins at \
         {first}; events in between were discarded by the stream's limits"
    )]
    CheckpointBehindStream {
        /// The partition.
        partition: u32,
        /// The checkpoint's last applied sequence.
        checkpoint: u64,
        /// The stream's first sequence.
        first: u64,
    },
    /// A worker's run was dropped in the middle of a batch: events were applied whose decisions may not have been
    /// published, so neither running on nor checkpointing is safe. Start a new worker from the last checkpoint.
    #[error("the risk worker was interrupted in the middle of a batch; restart it from its checkpoint")]
    Interrupted,
}

/// Wraps a client error with what was being done.
pub(crate) fn nats<E>(context: impl Into<String>) -> impl FnOnce(E) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    let context = context.into();
    move |e| Error::Nats { context, source: Box::new(e) }
}
