//! The bus against the NATS server (127.0.0.1:4222 with JetStream, or `RAMPART_NATS_URL`): two workers decide what one
//! engine decides, and a worker that crashes in the middle of a batch is replaced without losing an event or applying
//! one twice. Each test makes its own streams and deletes them at the end.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use rampart_risk::{Decision, Event, Outcome};
use rampart_riskbus::{
    Applied, Binding, BusConfig, DecisionRecord, Error, EventId, PartitionStatus, Publisher, Worker, WorkerConfig,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use common::*;

/// The longest any step may take before the test fails rather than hangs.
const STEP: Duration = Duration::from_secs(90);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {STEP:?}"),
    }
}

/// Runs `body` on `bus`, then deletes the bus's streams whether it passed or not.
async fn with_bus<F, Fut>(bus: BusConfig, body: F)
where
    F: FnOnce(BusConfig) -> Fut,
    Fut: Future<Output = ()>,
{
    let js = connect().await;
    let result = AssertUnwindSafe(body(bus.clone())).catch_unwind().await;
    let deleted = tokio::time::timeout(STEP, bus.delete_streams(&js)).await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    deleted.expect("deleting the test streams in time").expect("deleting the test streams");
}

/// Starts worker `i` of `w` in its own task on its own connection; it reports its partitions' status once started,
/// sends every decision to `out` tagged with `phase`, and runs until `stop` turns true. `crash_at`: panic right after
/// handing over that many decisions, as a process dies between evaluating an event and acknowledging it.
fn spawn_worker(
    config: WorkerConfig,
    phase: &'static str,
    out: mpsc::UnboundedSender<(&'static str, Applied)>,
    started: oneshot::Sender<Vec<PartitionStatus>>,
    mut stop: watch::Receiver<bool>,
    crash_at: Option<usize>,
) -> JoinHandle<Result<Worker, Error>> {
    tokio::spawn(async move {
        let js = connect().await;
        let mut worker = Worker::start(js, config, rules()).await?;
        let _ = started.send(worker.status());
        let seen = AtomicUsize::new(0);
        let on_decision = move |a: &Applied| {
            let _ = out.send((phase, a.clone()));
            if crash_at == Some(seen.fetch_add(1, Ordering::SeqCst) + 1) {
                panic!("simulated crash after evaluating event {} (stream sequence {})", a.id, a.stream_seq);
            }
        };
        worker
            .run(on_decision, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await?;
        Ok(worker)
    })
}

/// Publishes `events`, checking that none was a duplicate; returns each partition's last stream sequence.
async fn publish(publisher: &Publisher, events: &[(EventId, Event)], last_seq: &mut [u64]) {
    for (id, e) in events {
        let p = publisher.publish(*id, e).await.expect("publishing an event");
        assert!(!p.duplicate, "event {id} stored as a duplicate");
        last_seq[p.partition as usize] = p.stream_seq;
    }
}

/// Reads every decision stored in the decisions stream.
async fn stored_decisions(bus: &BusConfig) -> Vec<DecisionRecord> {
    let js = connect().await;
    let stream = js.get_stream(bus.decisions_stream()).await.expect("the decisions stream");
    let state = stream.get_info().await.expect("its state").state;
    let mut records = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        let m = stream.get_raw_message(seq).await.expect("a stored decision");
        records.push(serde_json::from_slice(&m.payload).expect("a decision record"));
    }
    records
}

fn print_summary(label: &str, decisions: &HashMap<EventId, Decision>) {
    eprintln!("{label}: {} decisions, outcomes {:?}", decisions.len(), outcomes(decisions.values()));
    eprintln!("{label}: rules {:?}", rules_hit(decisions.values()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_decide_what_a_single_engine_decides() {
    with_bus(fresh_bus("TWO", 8), |bus| async move {
        let dir = tempfile::tempdir().unwrap();
        let events = history(bus.partitions());
        let n = events.len();
        let single = single_engine(&events);
        let (per_partition, snapshots) = engine_per_partition(&events, &bus);
        // The premise of the comparison: no address, device or destination is shared across partitions.
        assert_eq!(single, per_partition);
        print_summary("single engine", &single);
        let not_allowed = single.values().filter(|d| d.outcome != Outcome::Allow).count();
        assert!(not_allowed >= 100, "only {not_allowed} decisions that are not allow");
        for o in [Outcome::Challenge, Outcome::Hold, Outcome::Freeze, Outcome::Block] {
            assert!(single.values().any(|d| d.outcome == o), "no {o:?} decision");
        }

        let publisher = Publisher::new(connect().await, bus.clone()).await.unwrap();
        let mut last_seq = vec![0; bus.partitions() as usize];
        let t = Instant::now();
        within("publishing", publish(&publisher, &events, &mut last_seq)).await;
        eprintln!("published {n} events in {:?}", t.elapsed());
        // A publisher retrying with the same ids stores nothing new.
        for (id, e) in events.iter().step_by(997) {
            let again = within("republishing", publisher.publish(*id, e)).await.unwrap();
            assert!(again.duplicate && again.stream_seq <= n as u64, "{id}: {again:?}");
        }

        let (out, mut decisions) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(false);
        let t = Instant::now();
        let mut workers = Vec::new();
        for i in 0..2 {
            let (started, _) = oneshot::channel();
            let config = WorkerConfig::new(bus.clone(), i, 2, dir.path());
            workers.push(spawn_worker(config, "run", out.clone(), started, stopped.clone(), None));
        }
        let mut got: HashMap<EventId, Vec<Applied>> = HashMap::new();
        within("the workers' decisions", async {
            while got.len() < n {
                let (_, a) = decisions.recv().await.expect("the workers are running");
                got.entry(a.id).or_default().push(a);
            }
        })
        .await;
        eprintln!("two workers decided {n} events in {:?}", t.elapsed());
        stop.send(true).unwrap();
        let mut statuses = Vec::new();
        for (i, handle) in workers.into_iter().enumerate() {
            let worker = within("stopping a worker", handle).await.expect("the worker task").expect("the worker");
            for s in worker.status() {
                let engine = worker.engine(s.partition).unwrap();
                assert!(engine.snapshot() == snapshots[s.partition as usize], "partition {}'s engine", s.partition);
                assert_eq!(s.last_seq, last_seq[s.partition as usize]);
                assert_eq!(s.checkpoint_seq, s.last_seq, "the stop checkpoints");
                assert_eq!(s.partition % 2, i as u32);
                assert_eq!((s.binding, s.repositions, s.duplicates_skipped), (Binding::Created, 0, 0));
                statuses.push(s);
            }
        }
        eprintln!("partitions: {statuses:?}");
        assert_eq!(statuses.iter().map(|s| s.applied).sum::<u64>(), n as u64);

        // Every event decided once, exactly as the single engine decided it.
        let by_id: HashMap<EventId, &Event> = events.iter().map(|(id, e)| (*id, e)).collect();
        for (id, applied) in &got {
            assert_eq!(applied.len(), 1, "{id} decided {} times", applied.len());
            let a = &applied[0];
            assert_eq!(&a.event, by_id[id], "{id} arrived changed");
            assert_eq!(a.partition, bus.partition_of(a.event.user));
            assert_eq!(a.decision, single[id], "{id}: the bus decided otherwise than the single engine");
        }
        let per_worker: Vec<usize> = (0..2).map(|i| got.values().filter(|a| a[0].partition % 2 == i).count()).collect();
        eprintln!("decisions per worker: {per_worker:?}");
        assert!(per_worker.iter().all(|&c| c > n / 4), "the load is shared: {per_worker:?}");

        // And the decisions stream holds each decision once, as the engine made it.
        let stored = within("reading the decisions stream", stored_decisions(&bus)).await;
        assert_eq!(stored.len(), n);
        for r in &stored {
            let a = &got[&r.event][0];
            assert_eq!(r, &a.record());
            assert_eq!(r.outcome, single[&r.event].outcome);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_crashes_is_replaced_without_losing_or_repeating_an_event() {
    let bus = fresh_bus("CRASH", 8).with_duplicate_window(Duration::from_secs(600));
    with_bus(bus, |bus| async move {
        let dir = tempfile::tempdir().unwrap();
        let events = history(bus.partitions());
        let n = events.len();
        let single = single_engine(&events);
        let (_, snapshots) = engine_per_partition(&events, &bus);
        let half = n / 2;
        let owned_by_0 = |e: &Event| bus.partition_of(e.user) % 2 == 0;
        let publisher = Publisher::new(connect().await, bus.clone()).await.unwrap();
        let mut last_seq = vec![0; bus.partitions() as usize];
        within("publishing the first half", publish(&publisher, &events[..half], &mut last_seq)).await;

        let (out, mut decisions) = mpsc::unbounded_channel();
        let mut log: Vec<(&'static str, Applied)> = Vec::new();
        let small = |mut c: WorkerConfig| {
            // Small batches and frequent checkpoints, so that the crash falls between checkpoints mid-stream.
            c.batch = 32;
            c.checkpoint_every = 97;
            c
        };

        // Worker 1 runs throughout; worker 0 is started, stopped, restarted, crashes and is replaced.
        let (stop_1, stopped_1) = watch::channel(false);
        let (started, _) = oneshot::channel();
        let config_1 = small(WorkerConfig::new(bus.clone(), 1, 2, dir.path()));
        let worker_1 = spawn_worker(config_1, "worker 1", out.clone(), started, stopped_1, None);

        // A: worker 0 decides its share of the first half and stops, checkpointing.
        let first_share = events[..half].iter().filter(|(_, e)| owned_by_0(e)).count();
        let (stop, stopped) = watch::channel(false);
        let (started, _) = oneshot::channel();
        let a = spawn_worker(
            small(WorkerConfig::new(bus.clone(), 0, 2, dir.path())),
            "A",
            out.clone(),
            started,
            stopped,
            None,
        );
        within("phase A", async {
            while log.iter().filter(|(p, _)| *p == "A").count() < first_share {
                log.push(decisions.recv().await.unwrap());
            }
        })
        .await;
        stop.send(true).unwrap();
        let a = within("stopping A", a).await.unwrap().unwrap();
        let after_a = a.status();
        drop(a);
        eprintln!("A stopped at {after_a:?}");

        // B: the second half is published while a new worker 0 resumes, and it crashes in the middle of a batch.
        let rest_share = events[half..].iter().filter(|(_, e)| owned_by_0(e)).count();
        let crash_at = rest_share / 2;
        let (_stop_b, stopped) = watch::channel(false);
        let (started, started_b) = oneshot::channel();
        let config_b = small(WorkerConfig::new(bus.clone(), 0, 2, dir.path()));
        let b = spawn_worker(config_b, "B", out.clone(), started, stopped, Some(crash_at));
        let before_b = within("B starting", started_b).await.unwrap();
        eprintln!("B resumes at {before_b:?}");
        // A stopped cleanly: its durable consumers are exactly at its checkpoints, and B carries on with them.
        assert!(before_b.iter().all(|s| s.binding == Binding::Kept), "{before_b:?}");
        assert_eq!(
            before_b.iter().map(|s| s.last_seq).collect::<Vec<_>>(),
            after_a.iter().map(|s| s.last_seq).collect::<Vec<_>>(),
            "B resumes where A stopped"
        );
        within("publishing the second half", publish(&publisher, &events[half..], &mut last_seq)).await;
        let crashed = within("B crashing", b).await.expect_err("B was to crash");
        assert!(crashed.is_panic());
        while let Ok(item) = decisions.try_recv() {
            log.push(item);
        }
        let (_, crash) = log.iter().rev().find(|(p, _)| *p == "B").cloned().expect("B decided something");
        let b_count = log.iter().filter(|(p, _)| *p == "B").count();
        assert_eq!(b_count, crash_at);
        // The crashing event was evaluated and never acknowledged: JetStream still counts it as pending.
        let js = connect().await;
        let stream = js.get_stream(bus.stream()).await.unwrap();
        let info = stream.consumer_info(format!("risk-p{}", crash.partition)).await.unwrap();
        eprintln!(
            "B crashed after {b_count} decisions, at event {} (partition {}, sequence {}); its consumer: {} pending \
             acknowledgement, acknowledged up to sequence {}",
            crash.id, crash.partition, crash.stream_seq, info.num_ack_pending, info.ack_floor.stream_sequence
        );
        assert!(info.num_ack_pending >= 1);
        assert!(info.ack_floor.stream_sequence < crash.stream_seq);

        // C: a new worker 0 resumes from the checkpoints and the durable consumers and finishes.
        let (stop, stopped) = watch::channel(false);
        let (started, started_c) = oneshot::channel();
        let config_c = small(WorkerConfig::new(bus.clone(), 0, 2, dir.path()));
        let c = spawn_worker(config_c, "C", out.clone(), started, stopped, None);
        let before_c = within("C starting", started_c).await.unwrap();
        eprintln!("C resumes at {before_c:?}");
        let crash_partition = before_c.iter().find(|s| s.partition == crash.partition).unwrap();
        assert!(crash_partition.last_seq < crash.stream_seq, "the checkpoint predates the crashing event");
        assert_eq!(crash_partition.binding, Binding::Replaced, "the consumer is repositioned after the checkpoint");
        let mut reached: BTreeMap<u32, u64> = before_c.iter().map(|s| (s.partition, s.last_seq)).collect();
        within("phase C", async {
            while reached.iter().any(|(p, seq)| *seq < last_seq[*p as usize]) {
                let item = decisions.recv().await.unwrap();
                if item.0 == "C" {
                    let seq = reached.get_mut(&item.1.partition).unwrap();
                    *seq = (*seq).max(item.1.stream_seq);
                }
                log.push(item);
            }
        })
        .await;
        stop.send(true).unwrap();
        let c = within("stopping C", c).await.unwrap().unwrap();

        // Worker 1 finishes its share.
        let share_1 = n - events.iter().filter(|(_, e)| owned_by_0(e)).count();
        within("worker 1", async {
            while log.iter().filter(|(p, _)| *p == "worker 1").count() < share_1 {
                log.push(decisions.recv().await.unwrap());
            }
        })
        .await;
        stop_1.send(true).unwrap();
        let worker_1 = within("stopping worker 1", worker_1).await.unwrap().unwrap();
        while let Ok(item) = decisions.try_recv() {
            log.push(item);
        }

        // Every event was decided, and every decision of an event (there are several for those evaluated again after
        // the crash) is the single engine's.
        let mut times: HashMap<EventId, usize> = HashMap::new();
        for (phase, a) in &log {
            assert_eq!(a.decision, single[&a.id], "{phase}: {} decided otherwise than the single engine", a.id);
            *times.entry(a.id).or_default() += 1;
        }
        assert_eq!(times.len(), n, "every event decided");
        let again: HashSet<EventId> = times.iter().filter(|(_, t)| **t > 1).map(|(id, _)| *id).collect();
        assert!(again.contains(&crash.id), "the crashing event is evaluated again");
        assert!(log.iter().all(|(p, a)| *p == "C" || *p == "B" || !again.contains(&a.id)));
        let per_phase: Vec<(&str, usize)> =
            ["A", "B", "C", "worker 1"].into_iter().map(|p| (p, log.iter().filter(|(q, _)| *q == p).count())).collect();
        eprintln!("decisions per phase: {per_phase:?}; {} events evaluated twice (B, then C)", again.len());

        // Nothing was applied twice: the engines' final states are the reference engines', byte for byte, and
        // their event counts are their partitions' event counts.
        for worker in [&c, &worker_1] {
            for s in worker.status() {
                let p = s.partition;
                assert!(worker.engine(p).unwrap().snapshot() == snapshots[p as usize], "partition {p}'s engine");
                let events_in_p = events.iter().filter(|(_, e)| bus.partition_of(e.user) == p).count() as u64;
                assert_eq!(s.applied, events_in_p, "partition {p}: {s:?}");
                assert_eq!(s.last_seq, last_seq[p as usize]);
            }
        }
        eprintln!("C finished at {:?}", c.status());

        // The decisions stream kept one copy of each decision: the re-evaluations' copies were duplicates.
        let stored = within("reading the decisions stream", stored_decisions(&bus)).await;
        assert_eq!(stored.len(), n);
        assert_eq!(stored.iter().map(|r| r.event).collect::<HashSet<_>>().len(), n);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_taken_by_a_stray_pull_is_noticed_and_fetched_again() {
    with_bus(fresh_bus("STRAY", 2), |bus| async move {
        let dir = tempfile::tempdir().unwrap();
        let events: Vec<(EventId, Event)> = history(bus.partitions()).into_iter().take(1_500).collect();
        let single = single_engine(&events);
        let (_, snapshots) = engine_per_partition(&events, &bus);
        let publisher = Publisher::new(connect().await, bus.clone()).await.unwrap();
        let mut last_seq = vec![0; 2];
        within("publishing", publish(&publisher, &events[..500], &mut last_seq)).await;
        let (out, mut decisions) = mpsc::unbounded_channel();
        let mut log = Vec::new();

        // A first worker decides the first 500 events and stops cleanly.
        let (stop, stopped) = watch::channel(false);
        let (started, _) = oneshot::channel();
        let first = spawn_worker(
            WorkerConfig::new(bus.clone(), 0, 1, dir.path()),
            "first",
            out.clone(),
            started,
            stopped,
            None,
        );
        within("the first worker", async {
            while log.len() < 500 {
                log.push(decisions.recv().await.unwrap());
            }
        })
        .await;
        stop.send(true).unwrap();
        within("stopping the first worker", first).await.unwrap().unwrap();

        // A pull request that nobody will act on waits on partition 0's consumer, as one left by a worker that hangs.
        let stray = async_nats::connect(nats_url()).await.unwrap();
        let inbox = stray.new_inbox();
        let mut stray_sub = stray.subscribe(inbox.clone()).await.unwrap();
        let next = format!("$JS.API.CONSUMER.MSG.NEXT.{}.risk-p0", bus.stream());
        stray.publish_with_reply(next, inbox, r#"{"batch":2,"expires":60000000000}"#.into()).await.unwrap();
        stray.flush().await.unwrap();

        // The next worker keeps the consumers (the stray pull is invisible in their state), and the stray pull takes
        // partition 0's first new event: the worker sees the jump in delivery sequences.
        let (stop, stopped) = watch::channel(false);
        let (started, started_rx) = oneshot::channel();
        let second = spawn_worker(
            WorkerConfig::new(bus.clone(), 0, 1, dir.path()),
            "second",
            out.clone(),
            started,
            stopped,
            None,
        );
        let at_start = within("the second worker starting", started_rx).await.unwrap();
        assert!(at_start.iter().all(|s| s.binding == Binding::Kept), "{at_start:?}");
        within("publishing", publish(&publisher, &events[500..], &mut last_seq)).await;
        // It takes at least the first (the server serves waiting pulls in turn, so the worker may get the second, see
        // the jump, recreate the consumer, and the stray pull is then told 409, consumer deleted).
        let m = within("the stray pull", stray_sub.next()).await.unwrap();
        assert!(m.status.is_none(), "the stray pull got {:?}", m.status);
        let mut reached = [0u64; 2];
        within("the second worker", async {
            while reached.iter().zip(&last_seq).any(|(r, l)| r < l) {
                let item = decisions.recv().await.unwrap();
                reached[item.1.partition as usize] = item.1.stream_seq;
                log.push(item);
            }
        })
        .await;
        stop.send(true).unwrap();
        let second = within("stopping the second worker", second).await.unwrap().unwrap();
        let status = second.status();
        eprintln!("after the stray pull: {status:?}");
        assert_eq!(status[0].repositions, 1, "partition 0 repositioned after the jump");
        assert_eq!(status[1].repositions, 0);

        // Every event decided once, in order, as the single engine decided it.
        assert_eq!(log.len(), events.len());
        for (phase, a) in &log {
            assert_eq!(a.decision, single[&a.id], "{phase}: {}", a.id);
        }
        assert_eq!(log.iter().map(|(_, a)| a.id).collect::<HashSet<_>>().len(), events.len());
        for s in &status {
            assert!(second.engine(s.partition).unwrap().snapshot() == snapshots[s.partition as usize]);
        }
    })
    .await;
}
