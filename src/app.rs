//! The assembled server state: configuration, clock, store, hub, registry, auth and counters.

use crate::auth::Authenticator;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::hub::Hub;
use crate::registry::Registry;
use crate::registry::writer::{Writer, WriterThread};
use crate::stats::Stats;
use crate::store::Store;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio_util::sync::CancellationToken;

/// Everything a connection needs, shared.
pub struct App {
    pub config: Arc<Config>,
    pub clock: SharedClock,
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub registry: Arc<Registry>,
    pub auth: Authenticator,
    pub stats: Arc<Stats>,
    pub writer: Writer,
    /// What `/metrics` serves.
    pub metrics: crate::metrics::Metrics,
    /// The newest webhook outbox seq, when webhooks are on.
    pub outbox: Option<tokio::sync::watch::Receiver<u64>>,
    session_ids: AtomicU64,
    /// Turns at CPU-bound request work run off the async threads (LeanCloud `conv/query`'s
    /// matching): half the cores, at least one, so the async threads always keep some. Taken
    /// after the user's own turn ([`App::cpu_work_users`]).
    pub cpu_work: tokio::sync::Semaphore,
    /// One turn per user at that work: a user's further requests wait behind their own, not
    /// in front of other users'.
    pub cpu_work_users: crate::turns::PerUser,
    /// Turns at building an admin export page (a user's data, a conversation's history), at
    /// most [`crate::admin::EXPORTS_AT_ONCE`]: more wait for one.
    pub exports: Arc<tokio::sync::Semaphore>,
    /// Turns at building an admin page that reads the store (history, lists, dead letters),
    /// at most [`crate::admin::PAGES_AT_ONCE`]: more wait for one.
    pub admin_pages: Arc<tokio::sync::Semaphore>,
}

impl App {
    /// Opens the store in `config.data_dir` and starts the writer. `fatal` is cancelled if the
    /// store fails, which shuts the server down.
    pub fn open(
        config: Config,
        clock: SharedClock,
        fatal: CancellationToken,
    ) -> anyhow::Result<(Arc<App>, WriterThread)> {
        Self::open_with(config, clock, fatal, None)
    }

    /// Like [`App::open`], on `store` when given (tests wrap a real store to inject faults).
    pub fn open_with(
        config: Config,
        clock: SharedClock,
        fatal: CancellationToken,
        store: Option<Arc<dyn Store>>,
    ) -> anyhow::Result<(Arc<App>, WriterThread)> {
        config.validate()?;
        let config = Arc::new(config);
        let auth = Authenticator::new(&config, clock.clone())?;
        std::fs::create_dir_all(&config.data_dir)?;
        let store: Arc<dyn Store> = match store {
            Some(s) => s,
            None => crate::store::open(
                &config.store_engine,
                &config.data_dir,
                config.store_cache_bytes,
            )?,
        };
        let Core {
            registry,
            hub,
            stats,
            writer,
            thread,
            outbox,
        } = Core::open(config.clone(), clock.clone(), store.clone(), fatal)?;
        let metrics = crate::metrics::Metrics::new(
            stats.clone(),
            hub.clone(),
            writer.clone(),
            config.max_pending_writes,
        );
        let app = App {
            config,
            clock,
            store,
            hub,
            registry,
            auth,
            stats,
            writer,
            metrics,
            outbox,
            session_ids: AtomicU64::new(1),
            cpu_work: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            ),
            cpu_work_users: crate::turns::PerUser::new(1),
            exports: Arc::new(tokio::sync::Semaphore::new(crate::admin::EXPORTS_AT_ONCE)),
            admin_pages: Arc::new(tokio::sync::Semaphore::new(crate::admin::PAGES_AT_ONCE)),
        };
        Ok((Arc::new(app), thread))
    }

    /// A new session id, unique while the server runs.
    pub fn next_session_id(&self) -> u64 {
        self.session_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// The registry over an open store, with its writer: what a server runs on, and what a
/// command that works on the store with the server stopped (an import) needs.
pub struct Core {
    pub registry: Arc<Registry>,
    pub hub: Arc<Hub>,
    pub stats: Arc<Stats>,
    pub writer: Writer,
    pub thread: WriterThread,
    /// The newest webhook outbox seq, when webhooks are on.
    pub outbox: Option<tokio::sync::watch::Receiver<u64>>,
}

impl Core {
    /// Starts the writer on `store` and builds the registry. `fatal` is cancelled if the store
    /// fails.
    pub fn open(
        config: Arc<Config>,
        clock: SharedClock,
        store: Arc<dyn Store>,
        fatal: CancellationToken,
    ) -> anyhow::Result<Core> {
        let stats = Arc::new(Stats::default());
        let hub = Arc::new(Hub::new(stats.clone()));
        // The webhook outbox is written only while some endpoint is configured.
        let (outbox, outbox_seqs) = if config.webhooks.is_empty() {
            (None, None)
        } else {
            // Delivered events are deleted, so the newest one stored may be older than what
            // an endpoint was given (an empty outbox after a clean stop): continue after both,
            // or new events would get seqs the endpoints count as delivered.
            let mut last = store.last_outbox_seq()?;
            for w in &config.webhooks {
                last = last.max(store.webhook_cursor(&w.name)?);
            }
            let (o, rx) = crate::registry::writer::Outbox::new(last);
            (Some(o), Some(rx))
        };
        let (writer, thread) = Writer::start(
            store.clone(),
            hub.clone(),
            stats.clone(),
            crate::registry::writer::Settings {
                max_pending: config.max_pending_writes,
                max_batch: config.max_commit_batch,
                event_retention: u64::from(config.event_log_retention),
            },
            outbox,
            fatal,
        );
        let mut registry = Registry::new(
            config,
            clock,
            store,
            hub.clone(),
            stats.clone(),
            writer.clone(),
        )?;
        registry.set_pre_send_hook()?;
        let registry = Arc::new(registry);
        Ok(Core {
            outbox: outbox_seqs,
            registry,
            hub,
            stats,
            writer,
            thread,
        })
    }

    /// Lets every queued write commit and be flushed, then stops the writer.
    pub async fn close(self) -> anyhow::Result<()> {
        self.writer.stop();
        self.thread.join().await;
        self.registry.purges_stopped().await;
        if self.writer.has_failed() {
            anyhow::bail!("a store write failed (see the error above)");
        }
        Ok(())
    }
}
