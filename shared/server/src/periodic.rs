//! The one way Norn runs "do this every period until stopped": syncing the bucket, reloading
//! runtime overrides, checking client health, cutting heads, shipping blocks.
//!
//! Ticks missed while a round runs long are not made up (`MissedTickBehavior::Delay`): a slow
//! bucket must not turn into a burst of back-to-back syncs. The task ends at the first tick
//! after `stop` is cancelled, never in the middle of a round.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// When a periodic task runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstRun {
    /// At once, then every period (e.g. a bucket sync: serve blocks as soon as possible).
    Immediately,
    /// After one period (e.g. a reload of what was just loaded).
    AfterPeriod,
}

/// A periodic task: what it is called (for logs), how often, and what can wake it early.
pub struct Periodic {
    name: &'static str,
    period: Duration,
    first: FirstRun,
    wake: Option<Arc<Notify>>,
}

impl Periodic {
    /// Every `period`, floored at `min` so a zero or tiny setting cannot spin a core.
    pub fn every(name: &'static str, period: Duration, min: Duration) -> Self {
        Self {
            name,
            period: period.max(min),
            first: FirstRun::AfterPeriod,
            wake: None,
        }
    }

    pub fn first_run(mut self, first: FirstRun) -> Self {
        self.first = first;
        self
    }

    /// Also runs a round whenever `wake` is notified (e.g. the shipper after a cut).
    pub fn woken_by(mut self, wake: Arc<Notify>) -> Self {
        self.wake = Some(wake);
        self
    }

    /// Spawns the task on the current runtime; `round` runs once per tick.
    pub fn spawn<F, Fut>(self, stop: CancellationToken, mut round: F) -> JoinHandle<()>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            if self.first == FirstRun::AfterPeriod {
                tick.tick().await;
            }
            let wake = self.wake.unwrap_or_default();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                    _ = wake.notified() => {}
                }
                round().await;
            }
            tracing::debug!(task = self.name, "periodic task stopped");
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counter() -> (
        Arc<AtomicUsize>,
        impl FnMut() -> std::future::Ready<()> + Send + 'static,
    ) {
        let n = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&n);
        (n, move || {
            c.fetch_add(1, Ordering::SeqCst);
            std::future::ready(())
        })
    }

    #[tokio::test(start_paused = true)]
    async fn immediately_runs_at_once_and_after_period_waits() {
        let stop = CancellationToken::new();
        let (now, f) = counter();
        Periodic::every("a", Duration::from_secs(10), Duration::ZERO)
            .first_run(FirstRun::Immediately)
            .spawn(stop.clone(), f);
        let (later, g) = counter();
        Periodic::every("b", Duration::from_secs(10), Duration::ZERO).spawn(stop.clone(), g);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(now.load(Ordering::SeqCst), 1);
        assert_eq!(later.load(Ordering::SeqCst), 0);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(now.load(Ordering::SeqCst), 2);
        assert_eq!(later.load(Ordering::SeqCst), 1);
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_applies_and_stop_ends_the_task() {
        let stop = CancellationToken::new();
        let (n, f) = counter();
        let task = Periodic::every("c", Duration::ZERO, Duration::from_secs(1))
            .first_run(FirstRun::Immediately)
            .spawn(stop.clone(), f);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(n.load(Ordering::SeqCst), 3, "rounds at 0 s, 1 s and 2 s");
        stop.cancel();
        task.await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_notification_runs_a_round_early() {
        let stop = CancellationToken::new();
        let wake = Arc::new(Notify::new());
        let (n, f) = counter();
        Periodic::every("d", Duration::from_secs(60), Duration::ZERO)
            .woken_by(Arc::clone(&wake))
            .spawn(stop.clone(), f);
        tokio::time::sleep(Duration::from_secs(1)).await;
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(n.load(Ordering::SeqCst), 1);
        stop.cancel();
    }
}
