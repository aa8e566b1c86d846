//! Group commit: concurrent requests that each need a short write transaction hand their item to a queue, and one
//! transaction writes everything queued at once. On a database shared by two cores the cost of a transaction is
//! mostly its round trips and its commit, not its rows, so a hundred requests written together cost little more
//! than one. A request waits for its own batch's commit before it answers, so nothing is acknowledged that a crash
//! could lose.
//!
//! No task runs while the queue is empty: the request that finds no writer at work spawns one, which drains the
//! queue batch by batch and ends. The writer is a task of its own, not the request's future, so that a client
//! hanging up cannot stop it with other requests' items in hand.
//!
//! The busiest kinds' writers run on the writer thread when there is one ([`crate::writer`]), out of the queue of
//! request handlers ready to run.
//!
//! A kind may allow more than one writer ([`Batch::WRITERS`]): while one transaction waits for the database, the
//! next batch is already being written. Items with the same key are never in two transactions at once, whichever
//! writer holds them.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::AppState;
use crate::error::ApiError;

/// A kind of item written in groups.
pub(crate) trait Batch: Send + Sync + 'static {
    /// What a request hands over.
    type Item: Clone + Send + 'static;
    /// What it gets back.
    type Out: Send + 'static;
    /// The most items one transaction writes.
    const MAX: usize;
    /// What the metrics and logs call it.
    const NAME: &'static str;
    /// Transactions written at once, at most.
    const WRITERS: usize = 1;
    /// Whether its writers run on the writer thread when the state has one ([`crate::writer`]); `write` then uses
    /// [`AppState::writer_store`], the thread's own connections.
    const OWN_THREAD: bool = false;
    /// The queue, in the state.
    fn queue(state: &AppState) -> &GroupCommit<Self>;
    /// Items with the same key never share a batch (a customer's withdrawals: each is checked against the ones
    /// before it); `None` for none.
    fn key(_item: &Self::Item) -> Option<i64> {
        None
    }
    /// Writes a batch in one transaction; the answers in the items' order.
    fn write(state: &AppState, items: Vec<Self::Item>)
    -> impl Future<Output = Result<Vec<Self::Out>, ApiError>> + Send;
}

type Waiting<B> = (<B as Batch>::Item, oneshot::Sender<Result<<B as Batch>::Out, ApiError>>);

struct Queue<B: Batch + ?Sized> {
    waiting: VecDeque<Waiting<B>>,
    /// Writers at work.
    writers: usize,
    /// The keys of the items being written.
    in_flight: HashSet<i64>,
}

/// The queue of one kind of item.
pub(crate) struct GroupCommit<B: Batch + ?Sized> {
    queue: Mutex<Queue<B>>,
}

impl<B: Batch> Default for GroupCommit<B> {
    fn default() -> Self {
        GroupCommit { queue: Mutex::new(Queue { waiting: VecDeque::new(), writers: 0, in_flight: HashSet::new() }) }
    }
}

impl<B: Batch> GroupCommit<B> {
    /// Queues `item`, starts a writer if none is at work, and waits for the item's answer.
    pub(crate) async fn submit(state: &AppState, item: B::Item) -> Result<B::Out, ApiError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = B::queue(state).queue.lock().expect("a group-commit queue is never poisoned");
            q.waiting.push_back((item, tx));
            let start = q.writers < B::WRITERS;
            if start {
                q.writers += 1;
            }
            start
        };
        if start {
            let state = state.clone();
            let writer = B::OWN_THREAD.then(|| state.writer_thread().map(|w| w.handle().clone())).flatten();
            let drain = async move { Self::drain(&state).await };
            match writer {
                Some(thread) => drop(thread.spawn(drain)),
                None => drop(tokio::spawn(drain)),
            }
        }
        rx.await.map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the writer stopped before answering: send the request again",
            )
        })?
    }

    /// Releases the keys of the batch just written (`done`) and takes the next one: up to [`Batch::MAX`] items in
    /// queue order, skipping (and leaving queued, in order) those whose key is already in it or in another writer's
    /// batch; stops the writer when nothing it may take waits (another writer takes what it skipped).
    fn next(&self, done: &[i64]) -> Vec<Waiting<B>> {
        let mut q = self.queue.lock().expect("a group-commit queue is never poisoned");
        for k in done {
            q.in_flight.remove(k);
        }
        let mut batch = Vec::new();
        let mut left = VecDeque::new();
        while let Some(w) = q.waiting.pop_front() {
            if batch.len() == B::MAX {
                q.waiting.push_front(w);
                break;
            }
            match B::key(&w.0) {
                Some(k) if !q.in_flight.insert(k) => left.push_back(w),
                _ => batch.push(w),
            }
        }
        while let Some(w) = left.pop_back() {
            q.waiting.push_front(w);
        }
        if batch.is_empty() {
            q.writers -= 1;
        }
        batch
    }

    async fn drain(state: &AppState) {
        let this = B::queue(state);
        let mut done = Vec::new();
        loop {
            let batch = this.next(&done);
            if batch.is_empty() {
                return;
            }
            let (items, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            done = items.iter().filter_map(B::key).collect();
            // A batch that fails as a whole wrote nothing: its items are written again one by one, so that one
            // bad item (or a deadlock) fails only its own request.
            let copies = (items.len() > 1).then(|| items.clone());
            let (len, started) = (items.len(), std::time::Instant::now());
            let written = B::write(state, items).await;
            let took = started.elapsed();
            metrics::histogram!("group_commit_items", "kind" => B::NAME).record(len as f64);
            metrics::histogram!("group_commit_seconds", "kind" => B::NAME).record(took.as_secs_f64());
            tracing::debug!(
                kind = B::NAME,
                items = len,
                us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                "group commit"
            );
            match (written, copies) {
                (Ok(outs), _) => {
                    for (answer, out) in answers.into_iter().zip(outs) {
                        let _ = answer.send(Ok(out));
                    }
                }
                (Err(e), Some(items)) => {
                    tracing::warn!(
                        code = e.code(),
                        error = e.message(),
                        "a group commit failed; its items are written one by one"
                    );
                    for (item, answer) in items.into_iter().zip(answers) {
                        let out = B::write(state, vec![item]).await.and_then(|mut outs| {
                            outs.pop().ok_or_else(|| ApiError::internal("a batch of one answered nothing"))
                        });
                        let _ = answer.send(out);
                    }
                }
                (Err(e), None) => {
                    if let Some(answer) = answers.into_iter().next() {
                        let _ = answer.send(Err(e));
                    }
                }
            }
        }
    }
}
