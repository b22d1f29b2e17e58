//! The threads queries are parsed, planned and evaluated on: long-lived, each with a stack of
//! [`QUERY_THREAD_STACK_BYTES`] (see [`crate::guard`] for why that stack), reused from one
//! query to the next.
//!
//! Starting a thread per query cost about 46 µs (mapping and unmapping a 64 MiB stack, the
//! clone, the first touches of its pages), a quarter of a small query's whole cost. A thread
//! that finishes a query now waits for the next one instead, up to `max_idle` of them at once
//! (the querier keeps as many as `--querier.max-concurrent`, the most queries it runs at
//! once). A query that finds no idle thread starts one, so the pool never makes a query wait
//! and never bounds how many run: admission does that. A thread idle for a minute exits, so
//! the stack pages a deep query touched are given back eventually, and idle threads end as
//! soon as the engine that owns them is dropped.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use crate::error::{PromqlError, Result};
use crate::guard::QUERY_THREAD_STACK_BYTES;

/// Idle threads kept when the engine's options do not say (the querier's default
/// `max_concurrent`).
pub const DEFAULT_IDLE_QUERY_THREADS: usize = 20;

/// How long an idle thread waits for a query before it exits.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A pool of query threads. Clones share it.
#[derive(Clone)]
pub(crate) struct QueryThreads {
    /// Queries running now on any of the threads (see [`Self::busy`]).
    busy: Arc<AtomicUsize>,
    pool: Arc<Pool>,
}

struct Pool {
    /// Threads waiting for a query, the most recently idle last: it is taken first, as its
    /// stack and caches are the warmest.
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    next_id: AtomicU64,
}

/// An idle thread: its id and where to hand it a query.
struct Idle {
    id: u64,
    tx: mpsc::SyncSender<Job>,
}

impl std::fmt::Debug for QueryThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryThreads")
            .field("busy", &self.busy())
            .field("idle", &self.pool.lock_idle().len())
            .field("max_idle", &self.pool.max_idle)
            .finish()
    }
}

impl Default for QueryThreads {
    fn default() -> Self {
        Self::new(DEFAULT_IDLE_QUERY_THREADS)
    }
}

impl Pool {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // The list stays consistent whatever panicked while holding it (push, pop, remove).
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl QueryThreads {
    /// A pool that keeps at most `max_idle` threads waiting between queries.
    pub fn new(max_idle: usize) -> Self {
        Self {
            busy: Arc::default(),
            pool: Arc::new(Pool {
                idle: Mutex::new(Vec::new()),
                max_idle,
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// Queries running now: a cancelled or timed-out query counts until its evaluation has
    /// noticed and stopped.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    /// Query threads started so far (each runs jobs until it idles out).
    #[cfg(test)]
    pub(crate) fn started(&self) -> u64 {
        self.pool.next_id.load(Ordering::Relaxed)
    }

    /// Runs `f` on an idle query thread, or on a new one if none is idle. `f` counts in
    /// [`Self::busy`] from now until it returns (or panics, which ends its thread).
    pub fn run<F>(&self, f: F) -> Result<()>
    where
        F: FnOnce() + Send + 'static,
    {
        /// Uncounts the query however it ends, a panic or never running included.
        struct Busy(Arc<AtomicUsize>);
        impl Drop for Busy {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.busy.fetch_add(1, Ordering::Relaxed);
        let busy = Busy(Arc::clone(&self.busy));
        let mut job: Job = Box::new(move || {
            let _busy = busy;
            f()
        });
        loop {
            let Some(idle) = self.pool.lock_idle().pop() else {
                break;
            };
            match idle.tx.send(job) {
                Ok(()) => return Ok(()),
                // That thread has just exited; try the next.
                Err(mpsc::SendError(back)) => job = back,
            }
        }
        let id = self.pool.next_id.fetch_add(1, Ordering::Relaxed);
        let pool = Arc::downgrade(&self.pool);
        std::thread::Builder::new()
            .name("norn-promql".into())
            .stack_size(QUERY_THREAD_STACK_BYTES)
            .spawn(move || serve(pool, id, job))
            .map(drop)
            .map_err(|e| PromqlError::Unavailable(format!("cannot start a query thread: {e}")))
    }
}

/// A query thread's life: run `job`, then wait idle for the next one until the pool is full,
/// the thread has idled for [`IDLE_TIMEOUT`], or the pool is gone.
fn serve(pool: Weak<Pool>, id: u64, mut job: Job) {
    loop {
        job();
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let Some(p) = pool.upgrade() else { return };
            let mut idle = p.lock_idle();
            if idle.len() >= p.max_idle {
                return;
            }
            idle.push(Idle { id, tx });
        }
        job = loop {
            match rx.recv_timeout(IDLE_TIMEOUT) {
                Ok(next) => break next,
                // The pool (and with it this thread's sender) was dropped.
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    let Some(p) = pool.upgrade() else { return };
                    let mut idle = p.lock_idle();
                    if let Some(i) = idle.iter().position(|w| w.id == id) {
                        idle.remove(i);
                        return;
                    }
                    // Taken from the list just now: its query is on the way.
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let t0 = std::time::Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn thread_id_on(pool: &QueryThreads) -> std::thread::ThreadId {
        let (tx, rx) = mpsc::channel();
        pool.run(move || tx.send(std::thread::current().id()).unwrap())
            .unwrap();
        rx.recv().unwrap()
    }

    #[test]
    fn a_finished_thread_runs_the_next_query() {
        let pool = QueryThreads::new(2);
        let first = thread_id_on(&pool);
        wait_until("the thread to go idle", || pool.pool.lock_idle().len() == 1);
        assert_eq!(thread_id_on(&pool), first);
        wait_until("no query running", || pool.busy() == 0);
    }

    #[test]
    fn busy_threads_do_not_make_a_query_wait() {
        let pool = QueryThreads::new(1);
        let (release_tx, release_rx) = mpsc::channel::<()>();
        pool.run(move || {
            let _ = release_rx.recv();
        })
        .unwrap();
        assert_eq!(pool.busy(), 1);
        // The only thread is busy: the next query gets a thread of its own at once.
        let other = thread_id_on(&pool);
        assert_ne!(other, std::thread::current().id());
        release_tx.send(()).unwrap();
        wait_until("both queries done", || pool.busy() == 0);
        // At most one thread is kept.
        wait_until("one idle thread", || pool.pool.lock_idle().len() == 1);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(pool.pool.lock_idle().len(), 1);
    }

    #[test]
    fn a_panicking_query_is_uncounted_and_the_pool_goes_on() {
        let pool = QueryThreads::new(1);
        pool.run(|| panic!("boom")).unwrap();
        wait_until("the panicked query uncounted", || pool.busy() == 0);
        thread_id_on(&pool);
        wait_until("no query running", || pool.busy() == 0);
    }

    #[test]
    fn idle_threads_end_with_the_pool() {
        /// Signals when the thread it lives on exits (thread-local destructors run then).
        struct OnExit(mpsc::Sender<()>);
        impl Drop for OnExit {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        thread_local!(static EXIT: std::cell::RefCell<Option<OnExit>> = const { std::cell::RefCell::new(None) });
        let pool = QueryThreads::new(1);
        let (tx, rx) = mpsc::channel::<()>();
        pool.run(move || EXIT.with(|e| *e.borrow_mut() = Some(OnExit(tx))))
            .unwrap();
        wait_until("the thread to go idle", || pool.pool.lock_idle().len() == 1);
        assert!(rx.try_recv().is_err(), "the idle thread is still there");
        drop(pool);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the idle thread exits once its pool is dropped");
    }
}
