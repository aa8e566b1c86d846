//! A partition's checkpoint file: its engine's snapshot and the stream sequence of the last event applied to it,
//! written together (so that they always agree) and atomically (so that a crash leaves the old file or the new one).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The file format this build writes and reads.
const FORMAT: u32 = 1;

/// What a partition's checkpoint holds.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    pub format: u32,
    /// The events stream it was made from: sequences mean nothing in another stream.
    pub stream: String,
    /// The partition count: with another count the partition holds other users.
    pub partitions: u32,
    pub partition: u32,
    /// The stream sequence of the last event applied to the engine (0: none).
    pub last_seq: u64,
    /// How many events the engine has applied (skipped duplicates not counted).
    pub applied: u64,
    /// The durable consumer the partition was reading, by its creation time (a consumer recreated under the same
    /// name is another consumer), and the last delivery sequence it had delivered: if the consumer is still the same
    /// and has delivered nothing since, it is exactly at this checkpoint.
    pub consumer: ConsumerMark,
    /// [`rampart_risk::Engine::snapshot`].
    pub engine: Vec<u8>,
}

/// A durable consumer's identity (its creation time as the server reports it) and a delivery sequence of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConsumerMark {
    pub created: String,
    pub delivered: u64,
}

impl Checkpoint {
    pub fn new(
        stream: &str,
        (partitions, partition): (u32, u32),
        (last_seq, applied): (u64, u64),
        consumer: ConsumerMark,
        engine: Vec<u8>,
    ) -> Self {
        let stream = stream.to_owned();
        Checkpoint { format: FORMAT, stream, partitions, partition, last_seq, applied, consumer, engine }
    }
}

/// The file of `partition` in `dir`.
pub(crate) fn path(dir: &Path, partition: u32) -> PathBuf {
    dir.join(format!("partition-{partition:04}.ckpt"))
}

/// Writes `checkpoint` to `path`: a temporary file, flushed to disk, renamed over the old one, and the directory
/// flushed so that the rename itself survives a power loss.
pub(crate) fn write(path: &Path, checkpoint: &Checkpoint) -> Result<(), Error> {
    let io = |source| Error::CheckpointIo { path: path.to_owned(), source };
    let bytes = postcard::to_stdvec(checkpoint).map_err(|e| io(io::Error::other(e)))?;
    let tmp = path.with_extension("ckpt.tmp");
    let mut file = fs::File::create(&tmp).map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        // Directories can be opened and synced on Unix; elsewhere the rename is as durable as the platform makes it.
        if let Ok(d) = fs::File::open(dir) {
            d.sync_all().map_err(io)?;
        }
    }
    Ok(())
}

/// Reads the checkpoint at `path`, `None` if there is none; it must be of `stream` with `partitions` partitions and
/// for `partition`.
pub(crate) fn read(path: &Path, stream: &str, partitions: u32, partition: u32) -> Result<Option<Checkpoint>, Error> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::CheckpointIo { path: path.to_owned(), source }),
    };
    let invalid = |reason: String| Error::CheckpointInvalid { path: path.to_owned(), reason };
    let c: Checkpoint = postcard::from_bytes(&bytes).map_err(|e| invalid(e.to_string()))?;
    if c.format != FORMAT {
        return Err(invalid(format!("format {} (this build reads {FORMAT})", c.format)));
    }
    if c.stream != stream || c.partitions != partitions || c.partition != partition {
        return Err(invalid(format!(
            "it is partition {} of {} in the stream {}, not partition {partition} of {partitions} in {stream}",
            c.partition, c.partitions, c.stream
        )));
    }
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_read_back_and_refuse_other_streams_and_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), 3);
        assert_eq!(read(&p, "S", 8, 3).unwrap(), None);
        let mark = ConsumerMark { created: "2026-12-01 0:00:00.5 +00:00:00".into(), delivered: 9 };
        let c = Checkpoint::new("S", (8, 3), (42, 7), mark, vec![1, 2, 3]);
        write(&p, &c).unwrap();
        assert_eq!(read(&p, "S", 8, 3).unwrap(), Some(c));
        for (s, n, i) in [("T", 8, 3), ("S", 4, 3), ("S", 8, 2)] {
            assert!(matches!(read(&p, s, n, i), Err(Error::CheckpointInvalid { .. })));
        }
        fs::write(&p, b"\xff\xff").unwrap();
        assert!(matches!(read(&p, "S", 8, 3), Err(Error::CheckpointInvalid { .. })));
    }
}
