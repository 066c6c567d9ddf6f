//! The single writer: group commit, then delivery.
//!
//! Every write of the server goes through one [`Writer`]. Callers enqueue a [`Job`] (ops that
//! must land atomically, the deliveries that may go out once they are durable, and a reply
//! channel) while holding whatever lock orders them, so the queue order *is* the commit order.
//! A dedicated thread takes all queued jobs (up to `max_commit_batch`), commits them as one
//! batch, flushes once, then completes the replies and hands out the deliveries, in queue order.
//! Acked therefore means durable, and pushes of one conversation leave in seq order.
//!
//! Memory is bounded by a semaphore of `max_pending_writes` permits taken before enqueueing.
//! If the store fails, every queued and later job fails with `WriteError::Unavailable` and the
//! writer asks the server to shut down: state in memory may be ahead of the disk.

use super::LoggedEvent;
use crate::hub::{Delivery, Hub, Recipients};
use crate::protocol::{self, pb};
use crate::stats::Stats;
use crate::store::{Op, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Why a write did not become durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The store failed (now or earlier); the server is going down.
    #[error("store unavailable")]
    Unavailable,
}

/// Work to do in memory once a job has committed, before its deliveries and its ack.
pub type AfterCommit = Box<dyn FnOnce() + Send>;

/// A unit of work for the writer.
pub struct Job {
    pub ops: Vec<Op>,
    /// Runs once the ops are durable (not at all if the commit fails).
    pub after_commit: Option<AfterCommit>,
    pub deliveries: Vec<Delivery>,
    /// Events to append to users' event logs; the writer numbers them in commit order.
    pub events: Vec<LoggedEvent>,
    /// Webhook outbox records no delivery carries (see [`crate::webhooks`]), written after
    /// the ones derived from the deliveries and events (dropped when webhooks are off).
    pub records: Vec<bytes::Bytes>,
    pub done: Option<oneshot::Sender<Result<(), WriteError>>>,
    pub permit: Option<OwnedSemaphorePermit>,
}

enum Cmd {
    Job(Job),
    /// Finish what is queued before this, flush, and stop.
    Stop,
}

/// Sizes of the write pipeline (from config).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Jobs queued before `reserve` waits.
    pub max_pending: usize,
    /// Jobs committed under one flush.
    pub max_batch: usize,
    /// Logged events kept per user.
    pub event_retention: u64,
}

/// Where the writer puts webhook events: the outbox's next seq, and who hears of new ones.
pub struct Outbox {
    next: u64,
    newest: tokio::sync::watch::Sender<u64>,
}

impl Outbox {
    /// An outbox continuing after `last` (the newest seq stored).
    pub fn new(last: u64) -> (Outbox, tokio::sync::watch::Receiver<u64>) {
        let (newest, rx) = tokio::sync::watch::channel(last);
        (
            Outbox {
                next: last + 1,
                newest,
            },
            rx,
        )
    }
}

/// Cheap handle to the writer thread.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Cmd>,
    permits: Arc<Semaphore>,
    failed: Arc<AtomicBool>,
}

/// Joins the writer thread on shutdown (after every `Writer` handle is dropped).
pub struct WriterThread {
    thread: std::thread::JoinHandle<()>,
    dispatcher: Option<tokio::task::JoinHandle<()>>,
}

impl WriterThread {
    /// Waits for the writer to drain its queue, flush and stop, and for the last deliveries
    /// and acks to go out.
    pub async fn join(self) {
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        if let Some(d) = self.dispatcher {
            let _ = d.await;
        }
    }
}

/// Committed jobs, answered, on their way to the dispatcher for their deliveries.
struct Committed {
    jobs: Vec<Job>,
    ok: bool,
}

/// Hands out the deliveries of committed jobs, in order. Runs as a runtime task (so waking a
/// thousand sessions is a local-queue push each, not a cross-thread wake each), while the
/// writer thread goes on to the next commit.
async fn dispatch(mut rx: mpsc::UnboundedReceiver<Committed>, hub: Arc<Hub>) {
    while let Some(c) = rx.recv().await {
        deliver(c, &hub);
    }
}

/// Where committed jobs go: their in-memory work and their acks are done at once, on the
/// writer thread; their deliveries go to the dispatcher task when there is one, else straight
/// to the hub.
///
/// The acks go first so that a connection always gets the ack of its send before the push of
/// any later message of the same conversation (it writes finished replies before pushes). And
/// a sender woken from this thread is scheduled ahead of the sessions the dispatcher wakes (the
/// runtime takes tasks woken from outside it within a few dozen polls), so it sends its next
/// messages while the recipients' sessions are still writing: those then carry more frames per
/// socket write.
///
/// From the after-commit work to the last delivery is one delivery step of the hub: a login
/// that overlaps one may be told in its catch-up of a message whose push then reaches it too,
/// and skips that push (see [`Hub::steps`]).
struct Handout {
    hub: Arc<Hub>,
    dispatcher: Option<mpsc::UnboundedSender<Committed>>,
}

impl Handout {
    fn give(&self, mut c: Committed) {
        self.hub.step_begins();
        answer(&mut c);
        if !c.ok || c.jobs.iter().all(|j| j.deliveries.is_empty()) {
            self.hub.step_ends();
            return;
        }
        match &self.dispatcher {
            Some(tx) => {
                if let Err(mpsc::error::SendError(c)) = tx.send(c) {
                    deliver(c, &self.hub);
                }
            }
            None => deliver(c, &self.hub),
        }
    }
}

/// A commit's in-memory work and acks, in queue order.
fn answer(c: &mut Committed) {
    for job in &mut c.jobs {
        if c.ok
            && let Some(f) = job.after_commit.take()
        {
            f();
        }
        if let Some(done) = job.done.take() {
            let _ = done.send(if c.ok {
                Ok(())
            } else {
                Err(WriteError::Unavailable)
            });
        }
    }
}

/// A commit's deliveries, in queue order; the end of its delivery step.
fn deliver(c: Committed, hub: &Hub) {
    if c.ok {
        hub.deliver_in_order(c.jobs.iter().flat_map(|job| &job.deliveries));
    }
    hub.step_ends();
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("available", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the writer thread.
    pub fn start(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        stats: Arc<Stats>,
        settings: Settings,
        outbox: Option<Outbox>,
        on_failure: CancellationToken,
    ) -> (Writer, WriterThread) {
        let (tx, rx) = mpsc::unbounded_channel();
        let failed = Arc::new(AtomicBool::new(false));
        let f = failed.clone();
        // Inside a runtime, deliveries go through a dispatcher task; otherwise the writer
        // thread hands them out itself.
        let (dispatch_tx, dispatcher) = match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let (dtx, drx) = mpsc::unbounded_channel();
                (Some(dtx), Some(rt.spawn(dispatch(drx, hub.clone()))))
            }
            Err(_) => (None, None),
        };
        let thread = std::thread::Builder::new()
            .name("tidings-writer".into())
            .spawn(move || {
                let handout = Handout {
                    hub,
                    dispatcher: dispatch_tx,
                };
                run(rx, store, handout, stats, settings, outbox, (f, on_failure))
            })
            .expect("spawn writer thread");
        let permits = Arc::new(Semaphore::new(settings.max_pending));
        (
            Writer {
                tx,
                permits,
                failed,
            },
            WriterThread { thread, dispatcher },
        )
    }

    /// Writes queued and not yet committed (of at most `max_pending_writes`).
    pub fn queued(&self, max_pending: usize) -> usize {
        max_pending.saturating_sub(self.permits.available_permits())
    }

    /// Waits for room in the queue. Take the permit *before* taking the lock that orders the
    /// write, then [`Writer::submit`] under that lock.
    pub async fn reserve(&self) -> Result<OwnedSemaphorePermit, WriteError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(WriteError::Unavailable);
        }
        self.permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| WriteError::Unavailable)
    }

    /// Enqueues a job (never blocks). Returns the receiver that completes once it is durable.
    pub fn submit(
        &self,
        permit: OwnedSemaphorePermit,
        ops: Vec<Op>,
        deliveries: Vec<Delivery>,
        events: Vec<LoggedEvent>,
    ) -> oneshot::Receiver<Result<(), WriteError>> {
        self.submit_then(permit, ops, deliveries, events, None)
    }

    /// [`Writer::submit`], with work to do in memory once the ops have committed.
    pub fn submit_then(
        &self,
        permit: OwnedSemaphorePermit,
        ops: Vec<Op>,
        deliveries: Vec<Delivery>,
        events: Vec<LoggedEvent>,
        after_commit: Option<AfterCommit>,
    ) -> oneshot::Receiver<Result<(), WriteError>> {
        self.submit_with_records(permit, ops, deliveries, events, after_commit, Vec::new())
    }

    /// [`Writer::submit_then`], with webhook outbox records of its own.
    pub fn submit_with_records(
        &self,
        permit: OwnedSemaphorePermit,
        ops: Vec<Op>,
        deliveries: Vec<Delivery>,
        events: Vec<LoggedEvent>,
        after_commit: Option<AfterCommit>,
        records: Vec<bytes::Bytes>,
    ) -> oneshot::Receiver<Result<(), WriteError>> {
        let (done, rx) = oneshot::channel();
        let job = Job {
            ops,
            after_commit,
            deliveries,
            events,
            records,
            done: Some(done),
            permit: Some(permit),
        };
        // If the writer has stopped, the job (and its reply sender) is dropped: the caller's
        // `wait` reports Unavailable.
        let _ = self.tx.send(Cmd::Job(job));
        rx
    }

    /// Enqueues a job without a permit, so it does not wait behind the jobs waiting for one.
    /// For a background task that keeps at most one such job queued (it waits for the commit
    /// before it submits the next), which keeps the queue within its bound plus one: the
    /// webhook positions and outbox pruning, which a full queue of sends must not hold up.
    pub fn submit_unmetered(&self, ops: Vec<Op>) -> oneshot::Receiver<Result<(), WriteError>> {
        let (done, rx) = oneshot::channel();
        if self.failed.load(Ordering::Acquire) {
            let _ = done.send(Err(WriteError::Unavailable));
            return rx;
        }
        let job = Job {
            ops,
            after_commit: None,
            deliveries: Vec::new(),
            events: Vec::new(),
            records: Vec::new(),
            done: Some(done),
            permit: None,
        };
        let _ = self.tx.send(Cmd::Job(job));
        rx
    }

    /// Whether a store write failed (the server is then shutting down).
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Asks the writer to stop after everything queued so far; [`WriterThread::join`] waits.
    pub fn stop(&self) {
        let _ = self.tx.send(Cmd::Stop);
    }

    /// Completes once everything enqueued before it is durable.
    pub async fn barrier(&self) -> Result<(), WriteError> {
        let permit = self.reserve().await?;
        self.submit(permit, Vec::new(), Vec::new(), Vec::new())
            .await
            .unwrap_or(Err(WriteError::Unavailable))
    }
}

/// Awaits a submitted job.
pub async fn wait(rx: oneshot::Receiver<Result<(), WriteError>>) -> Result<(), WriteError> {
    rx.await.unwrap_or(Err(WriteError::Unavailable))
}

fn run(
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    store: Arc<dyn Store>,
    handout: Handout,
    stats: Arc<Stats>,
    settings: Settings,
    mut outbox: Option<Outbox>,
    // Set, and cancelled, when a commit fails.
    (failed, on_failure): (Arc<AtomicBool>, CancellationToken),
) {
    let max_batch = settings.max_batch;
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
    let mut ops: Vec<Op> = Vec::new();
    let mut stopping = false;
    while !stopping {
        match rx.blocking_recv() {
            Some(Cmd::Job(j)) => jobs.push(j),
            Some(Cmd::Stop) | None => break,
        }
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(Cmd::Job(j)) => jobs.push(j),
                Ok(Cmd::Stop) => {
                    stopping = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let ok = !failed.load(Ordering::Acquire) && {
            ops.clear();
            let result = gather(
                &mut jobs,
                &mut ops,
                store.as_ref(),
                settings.event_retention,
                outbox.as_mut().map(|o| &mut o.next),
                &stats,
            )
            .and_then(|()| {
                if ops.is_empty() {
                    Ok(())
                } else {
                    store.commit(&ops).and_then(|()| store.flush())
                }
            });
            match result {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "store write failed; shutting down");
                    failed.store(true, Ordering::Release);
                    on_failure.cancel();
                    false
                }
            }
        };
        if ok {
            if !ops.is_empty() {
                let h = &stats.histograms;
                h.commit_seconds.observe(started.elapsed().as_secs_f64());
                h.commit_ops.observe(ops.len() as f64);
            }
            stats.commits.inc();
            if let Some(o) = &outbox
                && o.next - 1 > *o.newest.borrow()
            {
                o.newest.send_replace(o.next - 1);
            }
            let messages = ops
                .iter()
                .filter(|o| matches!(o, Op::PutMessage { .. }))
                .count();
            stats.messages_committed.add(messages as u64);
        }
        let committed = Committed {
            jobs: std::mem::replace(&mut jobs, Vec::with_capacity(max_batch)),
            ok,
        };
        handout.give(committed);
    }
    rx.close();
    if let Err(e) = store.flush() {
        tracing::error!(error = %e, "final store flush failed");
    }
}

/// Moves every job's ops into `ops`, numbering logged events per user in queue order, adding
/// their deliveries to the job that produced them, and dropping each user's events older than
/// the newest `retention`.
fn gather(
    jobs: &mut [Job],
    ops: &mut Vec<Op>,
    store: &dyn Store,
    retention: u64,
    mut outbox: Option<&mut u64>,
    stats: &Stats,
) -> Result<(), crate::store::StoreError> {
    let mut last: std::collections::HashMap<crate::store::UserId, u64> = Default::default();
    for job in jobs.iter_mut() {
        ops.append(&mut job.ops);
        // Webhook events, in the same commit as the change they report.
        if let Some(next) = outbox.as_deref_mut() {
            let own = std::mem::take(&mut job.records);
            for record in crate::webhooks::records_of(&job.events, &job.deliveries)
                .into_iter()
                .chain(own)
            {
                stats
                    .webhook_outbox_bytes
                    .fetch_add(record.len() as u64, Ordering::Relaxed);
                stats.webhook_events_written.add(1);
                ops.push(Op::PutOutbox { seq: *next, record });
                *next += 1;
            }
        }
        for logged in job.events.drain(..) {
            let mut event = logged.copy();
            let LoggedEvent {
                user,
                except_session,
                ..
            } = logged;
            let seq = match last.get(&user) {
                Some(s) => s + 1,
                None => store.last_user_event_seq(&user)? + 1,
            };
            last.insert(user.clone(), seq);
            event.user_seq = seq;
            job.deliveries.push(Delivery {
                to: Recipients::User(user.clone()),
                frame: protocol::push(pb::server_frame::Body::ConversationEvent(event.clone())),
                user_seq: seq,
                except_session,
            });
            if seq > retention {
                ops.push(Op::DeleteUserEvent {
                    user: user.clone(),
                    seq: seq - retention,
                });
            }
            ops.push(Op::PutUserEvent { user, seq, event });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Kick, SessionHandle};
    use crate::store::UserId;
    use std::sync::Mutex;

    fn job(after_commit: Option<AfterCommit>, deliveries: Vec<Delivery>) -> Job {
        Job {
            ops: Vec::new(),
            after_commit,
            deliveries,
            events: Vec::new(),
            records: Vec::new(),
            done: None,
            permit: None,
        }
    }

    /// A commit's acks are all completed before any of its pushes is queued: the rule that puts
    /// a `SendAck` before the push of any later message of its conversation on one connection
    /// (a connection writes the replies that are ready before the pushes). A second job's
    /// after-commit work looks, while the commit is handed out, at what the recipient's outbox
    /// and the first job's ack channel hold.
    #[test]
    fn a_commits_acks_are_completed_before_its_pushes_are_queued() {
        let hub = Arc::new(Hub::new(Arc::new(Stats::default())));
        let (outbox, session) = crate::outbox::channel(8);
        let bob = UserId::from("bob");
        let handle = SessionHandle {
            id: 1,
            device: None,
            outbox,
            kick: Arc::new(Kick::default()),
            shared: false,
            login_at: 0,
            jti: None,
        };
        hub.register(&bob, handle, 8);
        let (done, acked) = oneshot::channel();
        let push = Delivery {
            to: Recipients::User(bob),
            frame: protocol::replaced(),
            user_seq: 0,
            except_session: 0,
        };
        let mut message = job(None, vec![push]);
        message.done = Some(done);

        let watched = Arc::new(Mutex::new((session, acked)));
        let seen = Arc::new(Mutex::new(None));
        let (w, s) = (watched.clone(), seen.clone());
        let probe = job(
            Some(Box::new(move || {
                let (session, acked) = &mut *w.lock().unwrap();
                let queued = !session.is_empty();
                let answered = acked.try_recv().is_ok();
                *s.lock().unwrap() = Some((answered, queued));
            })),
            Vec::new(),
        );
        let committed = Committed {
            jobs: vec![message, probe],
            ok: true,
        };
        let handout = Handout {
            hub: hub.clone(),
            dispatcher: None,
        };
        handout.give(committed);

        assert_eq!(
            *seen.lock().unwrap(),
            Some((true, false)),
            "(the first job was answered, its push was queued) while the commit was handed out"
        );
        let (session, _) = &mut *watched.lock().unwrap();
        assert!(!session.is_empty(), "the push is queued in the end");
    }
}
