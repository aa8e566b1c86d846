//! The writer thread: a thread of its own, with its own runtime and its own few database connections, for the
//! group-commit writers on the busiest paths (withdrawal requests, the gates' reads, signed API requests).
//!
//! A group's writer is a chain of round trips, and everything that waits for the group waits for the chain. On the
//! shared runtime, each time an answer from the database arrives the writer's task queues behind every request
//! handler that is ready to run (on a busy two-core machine, about a millisecond a round trip); on a thread of its
//! own it runs as soon as the operating system wakes it. Its connections are made on its runtime, so that their
//! readiness is noticed there too, not by a busy worker of the shared one.
//!
//! Only for PostgreSQL: SQLite's single writer connection is shared by everything that writes, and its driver runs
//! each connection on a thread of its own already.

use std::thread::JoinHandle;

use rampart_store::{Backend, ConnectOptions, Store, StoreError};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A running writer thread. Dropping it stops the thread: writers at work are dropped with it (their transactions
/// roll back, their requests are answered `unavailable`).
pub struct WriterThread {
    handle: Handle,
    store: Store,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for WriterThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterThread").field("backend", &self.store.backend()).finish_non_exhaustive()
    }
}

/// The writer thread's connections: one for each kind of writer that runs on it, and one to spare.
pub const CONNECTIONS: u32 = 4;

impl WriterThread {
    /// A writer thread for `store`, opened at `url`, when it is PostgreSQL; `None` for SQLite.
    pub async fn start_for(store: &Store, url: &str) -> Result<Option<WriterThread>, StoreError> {
        match store.backend() {
            Backend::Postgres => Ok(Some(WriterThread::start(url, CONNECTIONS).await?)),
            Backend::Sqlite => Ok(None),
        }
    }

    /// Starts the thread and connects its `connections` to the database at `url` (which the caller has migrated).
    pub async fn start(url: &str, connections: u32) -> Result<WriterThread, StoreError> {
        let (ready, started) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let url = url.to_owned();
        let thread = std::thread::Builder::new()
            .name("rampart-writer".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready.send(Err(StoreError::unreachable(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let options = ConnectOptions { pool_size_max: connections, ..ConnectOptions::default() };
                    match Store::connect(&url, &options).await {
                        Ok(store) => {
                            if ready.send(Ok((Handle::current(), store))).is_ok() {
                                let _ = stopped.await;
                            }
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                });
            })
            .map_err(StoreError::unreachable)?;
        let (handle, store) = started.await.map_err(|_| {
            StoreError::unreachable(std::io::Error::other("the writer thread stopped while starting"))
        })??;
        Ok(WriterThread { handle, store, stop: Some(stop), thread: Some(thread) })
    }

    /// Where the writers run.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The writers' connections.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        // Not joined: the last state may be dropped on a runtime thread, which must not block. The thread ends
        // once its runtime has dropped what it ran.
        drop(self.thread.take());
    }
}
