//! Injected time. Timestamps, token expiry and (later) TTLs read a `Clock`, so tests can drive
//! time instead of waiting for it.

use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use tokio::sync::Notify;

/// A source of wall-clock milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Now, in ms since the epoch.
    fn now_ms(&self) -> i64;
    /// Completes once `now_ms() >= deadline_ms`.
    fn sleep_until(&self, deadline_ms: i64) -> BoxFuture<'static, ()>;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    fn sleep_until(&self, deadline_ms: i64) -> BoxFuture<'static, ()> {
        let wait = (deadline_ms - self.now_ms()).max(0) as u64;
        Box::pin(tokio::time::sleep(std::time::Duration::from_millis(wait)))
    }
}

/// A clock that moves only when told to (tests). Moving it wakes its sleepers.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<ManualInner>);

#[derive(Debug)]
struct ManualInner {
    now: AtomicI64,
    moved: Notify,
}

impl ManualClock {
    /// Starts at `ms`.
    pub fn new(ms: i64) -> Self {
        ManualClock(Arc::new(ManualInner {
            now: AtomicI64::new(ms),
            moved: Notify::new(),
        }))
    }
    /// Moves forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.0.now.fetch_add(ms, Ordering::SeqCst);
        self.0.moved.notify_waiters();
    }
    /// Jumps to `ms`.
    pub fn set(&self, ms: i64) {
        self.0.now.store(ms, Ordering::SeqCst);
        self.0.moved.notify_waiters();
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.now.load(Ordering::SeqCst)
    }

    fn sleep_until(&self, deadline_ms: i64) -> BoxFuture<'static, ()> {
        let inner = self.0.clone();
        Box::pin(async move {
            loop {
                let moved = inner.moved.notified();
                if inner.now.load(Ordering::SeqCst) >= deadline_ms {
                    return;
                }
                moved.await;
            }
        })
    }
}

/// The shared clock handle.
pub type SharedClock = Arc<dyn Clock>;
