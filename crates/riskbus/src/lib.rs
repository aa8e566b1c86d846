//! The risk engine's scale-out over NATS JetStream: when one machine is not enough, events are partitioned by user,
//! several workers share the partitions, and a restarted worker resumes where its partitions stopped.
//!
//! # Layout
//!
//! A bus ([`BusConfig`]) has `P` partitions, fixed for the life of its streams. A [`Publisher`] sends each event, in an
//! [`Envelope`] with its [`EventId`], to `<prefix>.events.<p>` where `p` = [`partition_of`] its user, in the stream
//! `<stream>`; the id is also the message's `Nats-Msg-Id`, so a publisher that retries within the duplicate window
//! stores it once. Worker `i` of `W` ([`Worker`]) owns the partitions `p` with `p % W == i`. For each it keeps an
//! [`Engine`](rampart_risk::Engine) of its own and a durable pull consumer `risk-p<p>` (explicit acknowledgements,
//! filtered on the partition's subject), and it publishes each decision ([`DecisionRecord`]) to
//! `<prefix>.decisions.<p>` in the stream `<stream>_DECISIONS`, with the event's id as `Nats-Msg-Id`, as well as
//! handing it to the run's callback ([`Applied`]).
//!
//! # Why the decisions are a single engine's
//!
//! The engine is deterministic: the same events in the same order give the same decisions and the same state. All the
//! events of a user are in one partition, and JetStream delivers a partition's events to its consumer in stream
//! order, which is the order they were published in. Each partition has its own engine, so what a partition decides
//! depends only on its own events, never on how many workers there are, which worker owns it, or how the partitions'
//! deliveries interleave: two workers decide exactly what one worker owning all partitions decides.
//!
//! That one worker equals one engine fed every event in order for everything the engine keeps per user (profiles,
//! per-user velocity). The engine also counts per address, device, destination and API key across users; a
//! partition's engine counts only its own users there. Where such a key is shared by users of different partitions (a
//! credential-stuffing address trying many accounts, a device or a withdrawal address shared by accounts that hash to
//! different partitions), the cross-user rules see a partition's share of the activity, not all of it. Catching those
//! across partitions needs a second keying (events also partitioned by address, device and destination, feeding
//! counters back), which this crate does not do.
//!
//! # Why no event is lost or applied twice
//!
//! Delivery is at least once; application is exactly once, because a partition's position moves with its engine:
//!
//! - Each partition records the stream sequence of the last event applied (`last_seq`), and advances it in the same
//!   step (no await in between) as the engine evaluates the event. A delivery with a sequence at or below `last_seq` is
//!   acknowledged and skipped: its event is in the engine already.
//! - A checkpoint stores the engine's snapshot and `last_seq` together, in one file per partition written atomically
//!   (temporary file, fsync, rename). So the state restored is exactly "every event of the partition up to `last_seq`,
//!   none after".
//! - At start, the partition's durable consumer is positioned at the first event after the checkpoint's `last_seq`.
//!   Its own position is not trusted: events acknowledged after the last checkpoint are not in the restored engine but
//!   would never be delivered again, and events delivered to the dead worker and never acknowledged would come back
//!   only after the acknowledgement wait, behind newer events (reordering the user's history). So the consumer is kept
//!   only when it is the very consumer the checkpoint was taken with (same creation time) and has delivered nothing
//!   since, all of it acknowledged (a clean stop); otherwise it is deleted and recreated to start at `last_seq + 1`.
//!   Delivery sequences tell this, because every delivery, first or repeated, takes the next one; the stream positions
//!   a filtered consumer reports cannot, because they run ahead to the end of the stream, past other partitions'
//!   events.
//! - While running, deliveries of one consumer carry consecutive delivery sequences. A jump means a delivery was lost
//!   (a dropped connection, a pull left by a previous worker); applying past it would reorder a user's events, so the
//!   worker stops the batch there and repositions the consumer after `last_seq` in the same way.
//! - A crash anywhere (after evaluating and before acknowledging; after acknowledging and before checkpointing) leaves
//!   the checkpoint at some `last_seq`; the new worker restores that engine and gets every later event again, in order.
//!   Re-evaluating them from that state gives the same decisions as the first time (the engine is deterministic), so
//!   the callback may see a decision twice but never two different decisions for one event, and the copies published
//!   to the decisions stream are dropped as duplicates within its duplicate window.
//! - Decisions are stored in the decisions stream before their events are acknowledged and before a checkpoint covers
//!   them, so no decision is lost either.
//!
//! # What the operator must keep true
//!
//! - One live owner per partition: two workers owning a partition would each reposition the other's consumer.
//!   Assignment is static (`W` and `i`); moving partitions between machines needs their checkpoint files.
//! - The events stream keeps events longer than the oldest checkpoint is old; otherwise a worker refuses to resume
//!   ([`Error::CheckpointBehindStream`]) rather than skip events.
//! - One user's events are published in their order by one publisher at a time (their order is the engine's input).
//!   A retry after the duplicate window stores a second copy, which is a second event to the engine.
//! - The partition count never changes for a stream: a new count is a new stream, with engines rebuilt by replay.

mod bus;
mod checkpoint;
mod error;
mod publisher;
mod worker;

pub use bus::{BusConfig, DecisionRecord, Envelope, EventId, MAX_PARTITIONS, partition_of};
pub use error::Error;
pub use publisher::{Published, Publisher};
pub use worker::{Applied, Binding, PartitionStatus, Worker, WorkerConfig};
