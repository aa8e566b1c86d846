//! A risk worker: the engines of the partitions it owns, each fed by its partition's durable consumer.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::consumer::pull::{self, MessagesError, MessagesErrorKind};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::{ConsumerInfoErrorKind, PublishAckFuture};
use async_nats::jetstream::{self, AckKind, Message};
use futures_util::{FutureExt, StreamExt};
use rampart_risk::{Decision, Engine, Event, RuleSet};
use tokio::sync::watch;

use crate::bus::{BusConfig, DecisionRecord, Envelope, EventId};
use crate::checkpoint::{self, Checkpoint, ConsumerMark};
use crate::error::{Error, nats};

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The bus.
    pub bus: BusConfig,
    /// This worker's index, below `workers`: it owns the partitions `p` with `p % workers == worker`.
    pub worker: u32,
    /// How many workers share the partitions.
    pub workers: u32,
    /// Where the partitions' checkpoint files are (one file per partition, so that a partition can move to another
    /// worker that sees the same directory).
    pub checkpoint_dir: PathBuf,
    /// The most events a partition applies before it waits for their decisions to be stored and acknowledges them.
    pub batch: usize,
    /// A partition checkpoints after this many events (a checkpoint snapshots the partition's whole engine).
    pub checkpoint_every: u64,
    /// A partition with events applied since its checkpoint checkpoints after this long without events.
    pub checkpoint_idle: Duration,
    /// How long JetStream waits for an acknowledgement before delivering an event again.
    pub ack_wait: Duration,
    /// Whether decisions are published to `<prefix>.decisions.<partition>` (they always go to the run's callback).
    pub publish_decisions: bool,
}

impl WorkerConfig {
    /// Worker `worker` of `workers` on `bus`, checkpointing into `checkpoint_dir`, with the default batch (256),
    /// checkpoint interval (10 000 events or 1 s idle), acknowledgement wait (30 s), publishing decisions.
    pub fn new(bus: BusConfig, worker: u32, workers: u32, checkpoint_dir: impl Into<PathBuf>) -> WorkerConfig {
        WorkerConfig {
            bus,
            worker,
            workers,
            checkpoint_dir: checkpoint_dir.into(),
            batch: 256,
            checkpoint_every: 10_000,
            checkpoint_idle: Duration::from_secs(1),
            ack_wait: Duration::from_secs(30),
            publish_decisions: true,
        }
    }

    /// The partitions this worker owns.
    pub fn partitions(&self) -> Vec<u32> {
        (0..self.bus.partitions()).filter(|p| p % self.workers.max(1) == self.worker).collect()
    }

    fn check(&self) -> Result<(), Error> {
        if self.workers == 0 || self.worker >= self.workers {
            return Err(Error::Config(format!("worker {} of {}", self.worker, self.workers)));
        }
        if self.workers > self.bus.partitions() {
            return Err(Error::Config(format!(
                "{} workers for {} partitions: some would own none",
                self.workers,
                self.bus.partitions()
            )));
        }
        if self.batch == 0 || self.checkpoint_every == 0 {
            return Err(Error::Config("the batch and the checkpoint interval must be at least 1".into()));
        }
        if self.checkpoint_idle.is_zero() || self.ack_wait.is_zero() {
            return Err(Error::Config(
                "the idle checkpoint delay and the acknowledgement wait must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// An event a worker applied, with its decision, as the run's callback receives it.
#[derive(Clone, Debug)]
pub struct Applied {
    /// The partition.
    pub partition: u32,
    /// The event's sequence in the events stream.
    pub stream_seq: u64,
    /// The event's id.
    pub id: EventId,
    /// The event.
    pub event: Event,
    /// The engine's decision.
    pub decision: Decision,
}

impl Applied {
    /// The decision as published.
    pub fn record(&self) -> DecisionRecord {
        DecisionRecord::new(self.id, &self.event, self.partition, self.stream_seq, &self.decision)
    }
}

/// How a partition's durable consumer was bound when its worker started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Binding {
    /// There was none: it was created (at the checkpoint's position, or at the stream's start).
    #[default]
    Created,
    /// It was exactly at the checkpoint's position (after a clean stop): kept as it was.
    Kept,
    /// It was elsewhere (events acknowledged after the checkpoint, or delivered and never acknowledged, as after a
    /// crash): recreated to start after the checkpoint.
    Replaced,
}

/// Where a partition stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionStatus {
    /// The partition.
    pub partition: u32,
    /// The stream sequence of the last event applied (0: none).
    pub last_seq: u64,
    /// Events applied to the engine, over the partition's life (carried by checkpoints).
    pub applied: u64,
    /// `last_seq` as of the last checkpoint.
    pub checkpoint_seq: u64,
    /// Deliveries of events already applied, acknowledged without applying them again (this worker's life).
    pub duplicates_skipped: u64,
    /// Messages that were not an event envelope, terminated without applying them (this worker's life).
    pub malformed: u64,
    /// How the durable consumer was bound at start.
    pub binding: Binding,
    /// Times an existing durable consumer was recreated to start after `last_seq` (this worker's life, counting a
    /// [`Binding::Replaced`] at start).
    pub repositions: u64,
}

/// What the workers of one process share.
struct Shared {
    js: jetstream::Context,
    config: WorkerConfig,
    events: jetstream::stream::Stream,
}

/// One owned partition.
struct Partition {
    status: PartitionStatus,
    engine: Engine,
    consumer: PullConsumer,
    /// The open pull (none after a reposition, until the next wait).
    messages: Option<pull::Stream>,
    /// The highest consumer (delivery) sequence seen from the current consumer.
    max_dseq: u64,
    /// Set while a batch is between its first evaluation and its last acknowledgement.
    in_batch: bool,
    since_checkpoint: u64,
}

/// Why the pull must be reopened or the consumer recreated after a batch.
enum Trouble {
    /// The pull ended or reported an error: open a new one (deliveries it lost show up as a gap).
    Reopen,
    /// The consumer is gone: recreate it after `last_seq`.
    Reposition,
}

/// A risk worker: for each partition it owns, an engine fed in stream order by the partition's durable consumer.
///
/// See the crate documentation for the guarantees and why they hold.
pub struct Worker {
    shared: Shared,
    partitions: Vec<Partition>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.shared.config;
        f.debug_struct("Worker")
            .field("stream", &c.bus.stream())
            .field("worker", &c.worker)
            .field("workers", &c.workers)
            .field("partitions", &self.status())
            .finish()
    }
}

impl Worker {
    /// Starts worker `config.worker`: creates the streams if needed, restores each owned partition's engine from its
    /// checkpoint (a new engine with `rules` if it has none), and positions the partition's durable consumer just
    /// after the checkpoint.
    pub async fn start(js: jetstream::Context, config: WorkerConfig, rules: Arc<RuleSet>) -> Result<Worker, Error> {
        config.check()?;
        config.bus.ensure_streams(&js).await?;
        let events = js.get_stream(config.bus.stream()).await.map_err(nats("opening the events stream"))?;
        let first_seq =
            events.get_info().await.map_err(nats("reading the events stream's state"))?.state.first_sequence;
        let dir = config.checkpoint_dir.clone();
        tokio::fs::create_dir_all(&dir).await.map_err(|source| Error::CheckpointIo { path: dir.clone(), source })?;
        let shared = Shared { js, config, events };
        let mut partitions = Vec::new();
        for partition in shared.config.partitions() {
            let path = checkpoint::path(&dir, partition);
            let (stream, count) = (shared.config.bus.stream().to_owned(), shared.config.bus.partitions());
            let read_path = path.clone();
            let saved = tokio::task::spawn_blocking(move || checkpoint::read(&read_path, &stream, count, partition))
                .await
                .map_err(|e| Error::CheckpointIo { path: path.clone(), source: std::io::Error::other(e) })??;
            let (engine, last_seq, applied, mark) = match saved {
                Some(c) => {
                    let engine = Engine::restore(rules.clone(), &c.engine)
                        .map_err(|e| Error::CheckpointInvalid { path: path.clone(), reason: e.to_string() })?;
                    (engine, c.last_seq, c.applied, Some(c.consumer))
                }
                None => (Engine::new(rules.clone()), 0, 0, None),
            };
            // Only the stream knows whether events after the checkpoint were discarded; it cannot say whether they
            // were this partition's, so any discarded sequence after the checkpoint refuses the resume.
            if last_seq > 0 && first_seq > last_seq + 1 {
                return Err(Error::CheckpointBehindStream { partition, checkpoint: last_seq, first: first_seq });
            }
            let (consumer, max_dseq, binding) = position(&shared, partition, last_seq, mark.as_ref()).await?;
            tracing::info!(partition, last_seq, ?binding, "risk partition resumed");
            partitions.push(Partition {
                status: PartitionStatus {
                    partition,
                    last_seq,
                    applied,
                    checkpoint_seq: last_seq,
                    binding,
                    repositions: u64::from(binding == Binding::Replaced),
                    ..PartitionStatus::default()
                },
                engine,
                consumer,
                messages: None,
                max_dseq,
                in_batch: false,
                since_checkpoint: 0,
            });
        }
        Ok(Worker { shared, partitions })
    }

    /// The configuration.
    pub fn config(&self) -> &WorkerConfig {
        &self.shared.config
    }

    /// Where each owned partition stands.
    pub fn status(&self) -> Vec<PartitionStatus> {
        self.partitions.iter().map(|p| p.status).collect()
    }

    /// The engine of an owned partition.
    pub fn engine(&self, partition: u32) -> Option<&Engine> {
        self.partitions.iter().find(|p| p.status.partition == partition).map(|p| &p.engine)
    }

    /// Applies events as they arrive, calling `on_decision` with each decision, until `shutdown` completes; then
    /// every partition finishes its batch and checkpoints.
    ///
    /// `on_decision` is called after the engine applied the event and before the event is acknowledged: after a
    /// crash it may be called again for the same event, with the same decision. An error stops every partition; if
    /// it came in the middle of a batch (or the run future is dropped there), the worker is spent and later calls
    /// return [`Error::Interrupted`]: start a new one from the checkpoints.
    pub async fn run<F, S>(&mut self, on_decision: F, shutdown: S) -> Result<(), Error>
    where
        F: Fn(&Applied) + Sync,
        S: Future<Output = ()>,
    {
        self.check_whole()?;
        let (stop, stopped) = watch::channel(false);
        let shared = &self.shared;
        let on_decision = &on_decision;
        let loops = futures_util::future::try_join_all(
            self.partitions.iter_mut().map(|p| run_partition(p, shared, on_decision, stopped.clone())),
        );
        tokio::pin!(loops, shutdown);
        tokio::select! {
            result = &mut loops => result.map(drop),
            () = &mut shutdown => {
                // The loops stop between batches, never inside one.
                let _ = stop.send(true);
                loops.await.map(drop)
            }
        }
    }

    /// Writes every owned partition's checkpoint (its engine's snapshot with the sequence of its last applied event).
    pub async fn checkpoint(&mut self) -> Result<Vec<PartitionStatus>, Error> {
        self.check_whole()?;
        for p in &mut self.partitions {
            p.checkpoint(&self.shared).await?;
        }
        Ok(self.status())
    }

    fn check_whole(&self) -> Result<(), Error> {
        if self.partitions.iter().any(|p| p.in_batch) { Err(Error::Interrupted) } else { Ok(()) }
    }
}

/// How long a partition waits before reopening a pull that failed.
const REOPEN_PAUSE: Duration = Duration::from_millis(250);

/// The durable consumer's name for `partition`.
fn durable_name(partition: u32) -> String {
    format!("risk-p{partition}")
}

/// Binds the partition's durable consumer so that its next delivery is the partition's first event after `last_seq`.
///
/// The durable consumer is kept when it is the one the checkpoint `mark`s and has delivered nothing since, all of it
/// acknowledged (a clean stop); otherwise (or without a mark) it is recreated to start after `last_seq`. Delivery
/// sequences are what can tell: every delivery, first or again, takes the next one, whereas the stream positions a
/// filtered consumer reports run ahead to the end of the stream, past other partitions' events.
/// Its own position cannot simply be trusted: events acknowledged after the last checkpoint are not in the
/// restored engine and would never be delivered again, and events delivered to a dead worker but never acknowledged
/// would come back only after the acknowledgement wait, behind newer ones, out of order. (A pull left waiting by a
/// previous worker may still take a delivery from a kept consumer; the delivery sequence check then sees the jump and
/// repositions.)
///
/// Returns the consumer, the highest delivery sequence it has used, and how it was bound.
async fn position(
    shared: &Shared,
    partition: u32,
    last_seq: u64,
    mark: Option<&ConsumerMark>,
) -> Result<(PullConsumer, u64, Binding), Error> {
    let name = durable_name(partition);
    let filter = shared.config.bus.events_subject(partition);
    let binding = match shared.events.consumer_info(&name).await {
        Ok(info)
            if mark.is_some_and(|m| {
                m.created == info.created.to_string()
                    && info.delivered.consumer_sequence == m.delivered
                    && info.ack_floor.consumer_sequence == m.delivered
            }) && info.num_ack_pending == 0
                && info.config.filter_subject == filter
                && info.config.ack_policy == AckPolicy::Explicit
                && info.config.ack_wait == shared.config.ack_wait =>
        {
            let consumer = shared
                .events
                .get_consumer(&name)
                .await
                .map_err(|source| Error::Nats { context: format!("binding the consumer {name}"), source })?;
            return Ok((consumer, info.delivered.consumer_sequence, Binding::Kept));
        }
        Ok(_) => {
            shared.events.delete_consumer(&name).await.map_err(nats(format!("deleting the consumer {name}")))?;
            Binding::Replaced
        }
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => Binding::Created,
        Err(e) => return Err(nats(format!("reading the consumer {name}"))(e)),
    };
    let config = pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!("rampart risk partition {partition}")),
        deliver_policy: if last_seq == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence { start_sequence: last_seq + 1 }
        },
        ack_policy: AckPolicy::Explicit,
        ack_wait: shared.config.ack_wait,
        filter_subject: filter,
        // A whole batch is unacknowledged while its decisions are stored, and the pull keeps the next one coming.
        max_ack_pending: i64::try_from(shared.config.batch.saturating_mul(4).max(1_000)).unwrap_or(i64::MAX),
        ..pull::Config::default()
    };
    let consumer =
        shared.events.create_consumer(config).await.map_err(nats(format!("creating the consumer {name}")))?;
    Ok((consumer, 0, binding))
}

/// Sorts one item of the pull into the batch or the trouble.
fn sort_item(item: Option<Result<Message, MessagesError>>, batch: &mut Vec<Message>, trouble: &mut Option<Trouble>) {
    match item {
        Some(Ok(m)) => batch.push(m),
        Some(Err(e)) if e.kind() == MessagesErrorKind::ConsumerDeleted => {
            tracing::warn!("risk consumer deleted under the worker; recreating it");
            *trouble = Some(Trouble::Reposition);
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, "risk event pull failed; reopening it");
            *trouble = Some(Trouble::Reopen);
        }
        None => *trouble = Some(Trouble::Reopen),
    }
}

/// One partition's loop: wait for events, apply a batch, repeat; checkpoint when due and when stopping.
async fn run_partition<F>(
    part: &mut Partition,
    shared: &Shared,
    on_decision: &F,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), Error>
where
    F: Fn(&Applied) + Sync,
{
    let config = &shared.config;
    let mut pause = false;
    loop {
        if *stopped.borrow() {
            break;
        }
        if pause {
            // A pull that just failed would likely fail again at once (a server restarting, a connection being
            // re-established): a short pause keeps the loop from spinning on it.
            pause = false;
            tokio::select! {
                biased;
                _ = stopped.changed() => break,
                () = tokio::time::sleep(REOPEN_PAUSE) => {}
            }
        }
        if part.messages.is_none() {
            let messages = part
                .consumer
                .stream()
                .max_messages_per_batch(config.batch)
                .heartbeat(Duration::from_secs(5))
                .messages()
                .await
                .map_err(nats("pulling risk events"))?;
            part.messages = Some(messages);
        }
        let Some(messages) = part.messages.as_mut() else { continue };
        let first = tokio::select! {
            biased;
            _ = stopped.changed() => break,
            item = tokio::time::timeout(config.checkpoint_idle, messages.next()) => item,
        };
        let Ok(first) = first else {
            // Idle: a good moment to save what was applied since the last checkpoint.
            if part.since_checkpoint > 0 {
                part.checkpoint(shared).await?;
            }
            continue;
        };
        let mut batch = Vec::new();
        let mut trouble = None;
        sort_item(first, &mut batch, &mut trouble);
        // Whatever else has already arrived joins the batch, so that its decisions are stored with one wait.
        while trouble.is_none() && batch.len() < config.batch {
            match messages.next().now_or_never() {
                Some(item) => sort_item(item, &mut batch, &mut trouble),
                None => break,
            }
        }
        let gap = part.apply(shared, batch, on_decision).await?;
        match (gap, trouble) {
            (true, _) | (_, Some(Trouble::Reposition)) => part.reposition(shared).await?,
            (false, Some(Trouble::Reopen)) => {
                part.messages = None;
                pause = true;
            }
            (false, None) => {}
        }
        if part.since_checkpoint >= config.checkpoint_every {
            part.checkpoint(shared).await?;
        }
    }
    if part.since_checkpoint > 0 {
        part.checkpoint(shared).await?;
    }
    Ok(())
}

impl Partition {
    /// Applies a batch in delivery order: each new event is evaluated and its decision handed over and published;
    /// then the decisions are awaited, then the events acknowledged. Returns whether a delivery was missed (the rest
    /// of the batch is then left unacknowledged, for the consumer to be repositioned).
    async fn apply<F>(&mut self, shared: &Shared, batch: Vec<Message>, on_decision: &F) -> Result<bool, Error>
    where
        F: Fn(&Applied) + Sync,
    {
        if batch.is_empty() {
            return Ok(false);
        }
        let partition = self.status.partition;
        self.in_batch = true;
        let mut stored: Vec<PublishAckFuture> = Vec::new();
        let mut done: Vec<(Message, AckKind)> = Vec::new();
        let mut gap = false;
        for m in batch {
            let Ok(info) = m.info() else {
                tracing::warn!(partition, "risk event without delivery information; repositioning");
                gap = true;
                break;
            };
            let (seq, dseq) = (info.stream_sequence, info.consumer_sequence);
            // Deliveries of the current consumer are numbered 1, 2, 3...; a jump means one was lost (a dropped
            // connection, a pull left by a previous worker), and applying past it would reorder the user's events.
            // A number already seen is a redelivery, which must be of an event already applied.
            if dseq > self.max_dseq + 1 || (dseq <= self.max_dseq && seq > self.status.last_seq) {
                tracing::warn!(partition, seq, dseq, max_dseq = self.max_dseq, "risk delivery missed; repositioning");
                gap = true;
                break;
            }
            self.max_dseq = self.max_dseq.max(dseq);
            if seq <= self.status.last_seq {
                // Already applied (a redelivery after a lost acknowledgement, or before the checkpoint): applying it
                // again would count it twice.
                self.status.duplicates_skipped += 1;
                done.push((m, AckKind::Ack));
                continue;
            }
            let envelope: Envelope = match serde_json::from_slice(&m.payload) {
                Ok(e) => e,
                Err(e) => {
                    // Not ours to score and never will be: every worker skips it the same way, so engines agree.
                    tracing::error!(partition, seq, error = %e, "risk message is not an event envelope; terminated");
                    self.status.last_seq = seq;
                    self.status.malformed += 1;
                    self.since_checkpoint += 1;
                    done.push((m, AckKind::Term));
                    continue;
                }
            };
            // The engine and the position move together, with no await in between: whatever is checkpointed later,
            // its snapshot contains exactly the events up to its sequence.
            let decision = self.engine.evaluate(&envelope.event);
            self.status.last_seq = seq;
            self.status.applied += 1;
            self.since_checkpoint += 1;
            let applied = Applied { partition, stream_seq: seq, id: envelope.id, event: envelope.event, decision };
            on_decision(&applied);
            if shared.config.publish_decisions {
                let mut headers = HeaderMap::new();
                // The decisions stream drops the copy that a re-evaluation after a crash publishes again.
                headers.insert(NATS_MESSAGE_ID, applied.id.to_string());
                let payload = serde_json::to_vec(&applied.record())?;
                let ack = shared
                    .js
                    .publish_with_headers(shared.config.bus.decisions_subject(partition), headers, payload.into())
                    .await
                    .map_err(nats("publishing a decision"))?;
                stored.push(ack);
            }
            done.push((m, AckKind::Ack));
        }
        // Decisions are stored before their events are acknowledged and before any checkpoint covers them, so a
        // decision is never lost: until then, a crash makes a new worker evaluate the event again.
        for ack in stored {
            ack.await.map_err(nats("storing a decision"))?;
        }
        // The last acknowledgement of a batch waits for the server's confirmation, which comes after the earlier
        // ones (same connection, same consumer): when a batch ends, the consumer's acknowledged position is current,
        // so that after a clean stop the next worker keeps the consumer as it is.
        let last = done.len().saturating_sub(1);
        for (i, (m, kind)) in done.into_iter().enumerate() {
            let acked = if i == last { m.double_ack_with(kind).await } else { m.ack_with(kind).await };
            acked.map_err(|source| Error::Nats { context: "acknowledging an event".into(), source })?;
        }
        self.in_batch = false;
        Ok(gap)
    }

    /// Recreates the consumer to deliver from the first event after `last_seq`.
    async fn reposition(&mut self, shared: &Shared) -> Result<(), Error> {
        // The old pull goes first, so that it takes nothing from the new consumer.
        self.messages = None;
        let (consumer, max_dseq, _) = position(shared, self.status.partition, self.status.last_seq, None).await?;
        self.consumer = consumer;
        self.max_dseq = max_dseq;
        self.status.repositions += 1;
        Ok(())
    }

    /// Writes the checkpoint: the engine's snapshot and `last_seq`, which always agree.
    async fn checkpoint(&mut self, shared: &Shared) -> Result<(), Error> {
        if self.in_batch {
            return Err(Error::Interrupted);
        }
        let bus = &shared.config.bus;
        let s = self.status;
        // Every delivery up to `max_dseq` has been dealt with (a batch is over), and none after it.
        let mark = ConsumerMark { created: self.consumer.cached_info().created.to_string(), delivered: self.max_dseq };
        let c = Checkpoint::new(
            bus.stream(),
            (bus.partitions(), s.partition),
            (s.last_seq, s.applied),
            mark,
            self.engine.snapshot(),
        );
        let path = checkpoint::path(&shared.config.checkpoint_dir, s.partition);
        let write_path = path.clone();
        tokio::task::spawn_blocking(move || checkpoint::write(&write_path, &c))
            .await
            .map_err(|e| Error::CheckpointIo { path, source: std::io::Error::other(e) })??;
        self.status.checkpoint_seq = s.last_seq;
        self.since_checkpoint = 0;
        Ok(())
    }
}
