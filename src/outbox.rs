//! A connection's outbox: the bounded queue the hub puts pushes into and the connection's task
//! takes them from, a burst at a time.
//!
//! A queue under a lock rather than a channel: a push is one uncontended lock and a `push_back`,
//! and it wakes the connection's task only when the queue was empty (the task drains it before
//! it sleeps again, so a push into a queue that holds something needs no wake-up). The task
//! takes a whole burst under one lock. An idle connection's outbox allocates nothing.

use crate::hub::Outgoing;
use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

/// Capacity an emptied queue keeps; a larger one is given back (a burst of a thousand frames
/// should not stay allocated on an idle connection).
const KEPT_CAPACITY: usize = 64;

/// Creates an outbox holding at most `capacity` pushes.
pub fn channel(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            items: VecDeque::new(),
            closed: false,
        }),
        waker: AtomicWaker::new(),
        capacity: capacity.max(1),
    });
    (Sender(shared.clone()), Receiver(shared))
}

struct Shared {
    queue: Mutex<Queue>,
    /// The connection's task, when it waits for a push.
    waker: AtomicWaker,
    capacity: usize,
}

struct Queue {
    items: VecDeque<Outgoing>,
    /// The receiving task is gone: pushes are refused.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding it; a poisoned queue is still a valid queue.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a push was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError {
    /// The outbox holds its capacity: the connection is a slow consumer.
    Full,
    /// The connection's task has ended.
    Closed,
}

/// The hub's end: any number of clones, never waiting.
#[derive(Clone)]
pub struct Sender(Arc<Shared>);

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("outbox::Sender").finish_non_exhaustive()
    }
}

impl Sender {
    /// Queues a push, or says why it could not.
    pub fn try_send(&self, out: Outgoing) -> Result<(), TrySendError> {
        let was_empty = {
            let mut q = self.0.lock();
            if q.closed {
                return Err(TrySendError::Closed);
            }
            if q.items.len() >= self.0.capacity {
                return Err(TrySendError::Full);
            }
            q.items.push_back(out);
            q.items.len() == 1
        };
        if was_empty {
            self.0.waker.wake();
        }
        Ok(())
    }
}

/// The connection task's end.
pub struct Receiver(Arc<Shared>);

impl Receiver {
    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.0.lock().items.is_empty()
    }

    /// Moves up to `max` queued pushes, oldest first, into `into`, without waiting. Returns how
    /// many.
    pub fn try_recv_many(&mut self, into: &mut Vec<Outgoing>, max: usize) -> usize {
        let mut q = self.0.lock();
        let n = q.items.len().min(max);
        into.reserve(n);
        for _ in 0..n {
            into.extend(q.items.pop_front());
        }
        if q.items.is_empty() && q.items.capacity() > KEPT_CAPACITY {
            q.items.shrink_to(KEPT_CAPACITY);
        }
        n
    }

    /// Like [`Receiver::try_recv_many`], waiting until at least one push is queued.
    pub fn recv_many<'a>(
        &'a mut self,
        into: &'a mut Vec<Outgoing>,
        max: usize,
    ) -> impl Future<Output = usize> + 'a {
        std::future::poll_fn(move |cx| {
            let n = self.try_recv_many(into, max);
            if n > 0 {
                return Poll::Ready(n);
            }
            self.0.waker.register(cx.waker());
            // A push between the first look and the registration woke no one: look again.
            match self.try_recv_many(into, max) {
                0 => Poll::Pending,
                n => Poll::Ready(n),
            }
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut q = self.0.lock();
        q.closed = true;
        q.items = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Wake, Waker};

    fn out(n: u64) -> Outgoing {
        Outgoing {
            push: crate::protocol::replaced(),
            session: n,
            user_seq: 0,
        }
    }

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn pushes_come_out_in_order_in_bursts_and_a_full_outbox_refuses() {
        let (tx, mut rx) = channel(3);
        for n in 1..=3 {
            tx.try_send(out(n)).unwrap();
        }
        assert_eq!(tx.try_send(out(4)), Err(TrySendError::Full));
        let mut got = Vec::new();
        assert_eq!(rx.try_recv_many(&mut got, 2), 2);
        assert_eq!(rx.try_recv_many(&mut got, 2), 1);
        assert_eq!(rx.try_recv_many(&mut got, 2), 0);
        let order: Vec<u64> = got.iter().map(|o| o.session).collect();
        assert_eq!(order, [1, 2, 3]);
        drop(rx);
        assert_eq!(tx.try_send(out(5)), Err(TrySendError::Closed));
    }

    #[test]
    fn a_waiting_task_is_woken_once_per_burst_and_never_misses_a_push() {
        let (tx, mut rx) = channel(8);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut got = Vec::new();
        {
            let mut wait = std::pin::pin!(rx.recv_many(&mut got, 8));
            assert!(wait.as_mut().poll(&mut cx).is_pending());
            tx.try_send(out(1)).unwrap();
            tx.try_send(out(2)).unwrap();
            assert_eq!(
                count.0.load(Ordering::SeqCst),
                1,
                "woken by the first push only"
            );
            assert_eq!(wait.as_mut().poll(&mut cx), Poll::Ready(2));
        }
        // A burst cut at `max` leaves the rest, found without a wake-up.
        tx.try_send(out(3)).unwrap();
        tx.try_send(out(4)).unwrap();
        for _ in 0..2 {
            let mut wait = std::pin::pin!(rx.recv_many(&mut got, 1));
            assert_eq!(wait.as_mut().poll(&mut cx), Poll::Ready(1));
        }
        let order: Vec<u64> = got.iter().map(|o| o.session).collect();
        assert_eq!(order, [1, 2, 3, 4]);
    }
}
