//! The `tidings` binary: thin. Parses arguments, loads configuration, sets up logging and runs
//! the library's server until SIGTERM or Ctrl-C.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use tidings::clock::{Clock, SystemClock};
use tidings::config::Config;

/// mimalloc instead of the system allocator: the hot path allocates small, short-lived buffers
/// (frames, keys, batches) on one thread and frees them on another, where glibc's malloc spent
/// about a tenth of the server's CPU in the chat benchmark.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tidings",
    version,
    about = "Self-hosted real-time messaging gateway"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Override any configuration field: --set field=value (repeatable).
    #[arg(long = "set", global = true, value_name = "FIELD=VALUE")]
    sets: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Address to listen on (config: listen).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory of the embedded store (config: data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Development only: accept the user id itself as login token (config: insecure_dev).
        #[arg(long)]
        insecure_dev: bool,
        /// With --insecure-dev: allow a listen address other machines can reach (config:
        /// insecure_dev_public).
        #[arg(long, requires = "insecure_dev")]
        insecure_dev_public: bool,
        /// Development only: serve the demo pages at /demo/ and /widget/ and mint tokens for
        /// any user at POST /demo/token; a random secret unless one is configured (config: demo).
        #[arg(long)]
        demo: bool,
        /// With --demo: allow a listen address other machines can reach (config: demo_public).
        #[arg(long, requires = "demo")]
        demo_public: bool,
    },
    /// Export or import the store (the server must not be running on the data directory).
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Import conversations and history from another platform into the store in data_dir (the
    /// server must not be running on it).
    Import {
        #[command(subcommand)]
        from: ImportFrom,
    },
    /// Print a new random secret: 32 random bytes as hex, for jwt_hs256_secret and
    /// admin_api_keys, or with --webhook a `whsec_` signing secret for a webhook endpoint.
    Secret {
        /// A webhook signing secret (`whsec_` and base64).
        #[arg(long)]
        webhook: bool,
    },
    /// Print the admin API's OpenAPI 3.1 document (also served at /openapi.json).
    Openapi,
    /// Mint a login token from the configured key (for trying things out and load tests).
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        user: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: i64,
        /// Sign with RS256 (needs jwt_rs256_private_key) instead of HS256.
        #[arg(long)]
        rs256: bool,
    },
}

#[derive(Subcommand)]
enum StoreAction {
    /// Write a portable, engine-neutral dump of the store in data_dir to a file.
    Export {
        #[arg(long)]
        out: PathBuf,
    },
    /// Load a dump into the (new, empty) store in data_dir, with the configured store_engine.
    Import {
        #[arg(long = "in")]
        input: PathBuf,
    },
}

#[derive(Subcommand)]
enum ImportFrom {
    /// LeanCloud: through its REST API (--url), or from exported files (--conversations and
    /// --messages). Conversations keep their LeanCloud ids; see docs/leancloud.md, Import.
    Leancloud {
        /// The app's REST API base URL (https://, or http:// through a proxy).
        #[arg(long, conflicts_with_all = ["conversations", "messages", "reads"])]
        url: Option<String>,
        /// CA certificates (PEM) to trust for an https:// --url besides Mozilla's roots.
        #[arg(long, requires = "url")]
        ca_cert: Option<PathBuf>,
        /// The app id (default: config leancloud_app_id).
        #[arg(long)]
        app_id: Option<String>,
        /// The master key (default: config leancloud_master_key, which keeps it off the
        /// command line).
        #[arg(long)]
        master_key: Option<String>,
        /// `_Conversation` rows: JSON lines, a JSON array, or a REST answer.
        #[arg(long, requires = "messages")]
        conversations: Option<PathBuf>,
        /// Messages as the history API returns them (with `conv-id`), in the same formats.
        #[arg(long, requires = "conversations")]
        messages: Option<PathBuf>,
        /// Read positions: rows of `cid`, `client_id`, `timestamp` (read up to that time).
        #[arg(long, requires = "conversations")]
        reads: Option<PathBuf>,
        /// Import into a running server through its admin API at this URL (e.g.
        /// http://127.0.0.1:7401) instead of opening the store of a stopped one.
        #[arg(long)]
        admin_url: Option<String>,
        /// An admin API key for --admin-url (default: the first of admin_api_keys in the
        /// configuration, which keeps it off the command line).
        #[arg(long, requires = "admin_url")]
        admin_key: Option<String>,
    },
    /// Easemob: its chat-history files (the hourly files of `GET …/chatmessages/{time}`),
    /// into a running server through its admin API. See docs/admin.md, Importing and
    /// exporting history.
    Easemob {
        /// History files (JSON lines or a JSON array), or directories of them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The admin API's URL (default: http://<admin_listen>, https:// with admin_tls).
        #[arg(long)]
        admin_url: Option<String>,
        /// An admin API key (default: the first of admin_api_keys in the configuration, which
        /// keeps it off the command line).
        #[arg(long)]
        admin_key: Option<String>,
        /// CA certificates (PEM) to trust for an https:// --admin-url besides Mozilla's roots.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// Messages per import request (at most the server's import_max_messages).
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
}

/// Runs the command; an error is printed as its message and its causes, one a line, never with
/// a backtrace (an operator reads it; `RUST_BACKTRACE` in the environment does not change it).
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    // mimalloc asks for transparent huge pages for its arenas; memory it gives back and takes
    // again is then faulted in 2 MiB at a time, each zeroed: in the chat benchmark a tenth of
    // the server's CPU went to clearing pages (0.3% with small pages). The flag applies to the
    // whole process, mappings made before it included.
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        print!("{}", tidings::admin::openapi::document());
        return Ok(());
    }
    if let Command::Secret { webhook } = cli.command {
        // Needs no configuration: it is how the configuration gets its secret.
        if webhook {
            println!("{}", tidings::webhooks::new_secret()?);
        } else {
            println!("{}", tidings::auth::new_secret()?);
        }
        return Ok(());
    }
    let mut sets = cli.sets.clone();
    if let Command::Serve {
        listen,
        data_dir,
        insecure_dev,
        insecure_dev_public,
        demo,
        demo_public,
    } = &cli.command
    {
        if let Some(l) = listen {
            sets.push(format!("listen={l}"));
        }
        if let Some(d) = data_dir {
            sets.push(format!("data_dir={}", d.display()));
        }
        if *insecure_dev {
            sets.push("insecure_dev=true".into());
        }
        if *insecure_dev_public {
            sets.push("insecure_dev_public=true".into());
        }
        if *demo {
            sets.push("demo=true".into());
        }
        if *demo_public {
            sets.push("demo_public=true".into());
        }
    }
    let tidings::config::Loaded {
        config,
        ignored_env,
    } = Config::load(cli.config.as_deref(), std::env::vars(), &sets)?;
    if !matches!(cli.command, Command::Serve { .. }) {
        // Only `serve` sets up logging (and logs these there).
        for name in &ignored_env {
            eprintln!("warning: ignoring {name}: {IGNORED}");
        }
    }
    match cli.command {
        Command::Token {
            user,
            ttl_secs,
            rs256,
        } => {
            let token = tidings::auth::mint(&config, &user, ttl_secs, SystemClock.now_ms(), rs256)
                .map_err(|e| match e {
                    tidings::auth::KeyError::NoMethod => anyhow::anyhow!(
                        "minting a token needs jwt_hs256_secret (or jwt_rs256_private_key with --rs256)"
                    ),
                    e => e.into(),
                })?;
            println!("{token}");
            Ok(())
        }
        Command::Serve { .. } => serve(config, &ignored_env),
        Command::Secret { .. } | Command::Openapi => {
            unreachable!("handled before loading the configuration")
        }
        Command::Store { action } => store(&config, action),
        Command::Import { from } => import(config, from),
    }
}

fn store(config: &Config, action: StoreAction) -> anyhow::Result<()> {
    use tidings::store::dump;
    let opening = || {
        format!(
            "opening the {} store in {}",
            config.store_engine,
            config.data_dir.display()
        )
    };
    let open = || {
        tidings::store::open(
            &config.store_engine,
            &config.data_dir,
            config.store_cache_bytes,
        )
        .with_context(opening)
    };
    match action {
        StoreAction::Export { out } => {
            if !config.data_dir.exists() {
                anyhow::bail!("{} does not exist", config.data_dir.display());
            }
            let store = open()?;
            let file = std::fs::File::create(&out)
                .with_context(|| format!("creating {}", out.display()))?;
            let mut w = std::io::BufWriter::new(file);
            let n = dump::export(store.as_ref(), &mut w)?;
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            eprintln!(
                "exported {n} entries from {} ({}) to {}",
                config.data_dir.display(),
                config.store_engine,
                out.display()
            );
        }
        StoreAction::Import { input } => {
            let file = std::fs::File::open(&input)
                .with_context(|| format!("opening {}", input.display()))?;
            std::fs::create_dir_all(&config.data_dir)?;
            let store = tidings::store::open_for_import(
                &config.store_engine,
                &config.data_dir,
                config.store_cache_bytes,
            )
            .with_context(opening)?;
            let n = match dump::import(store.as_ref(), &mut std::io::BufReader::new(file)) {
                Ok(n) => n,
                Err(e) if store.importing().unwrap_or(true) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "the import into {} did not finish; the store there is marked as \
                         unfinished and will not be served: import a whole dump into it again",
                        config.data_dir.display()
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            eprintln!(
                "imported {n} entries into {} ({})",
                config.data_dir.display(),
                config.store_engine
            );
        }
    }
    Ok(())
}

/// Why an environment variable was ignored.
fn import(mut config: Config, from: ImportFrom) -> anyhow::Result<()> {
    use tidings::import::leancloud::{self, Source};
    let (url, ca_cert, app_id, master_key, conversations, messages, reads, admin) = match from {
        ImportFrom::Leancloud {
            url,
            ca_cert,
            app_id,
            master_key,
            conversations,
            messages,
            reads,
            admin_url,
            admin_key,
        } => (
            url,
            ca_cert,
            app_id,
            master_key,
            conversations,
            messages,
            reads,
            admin_url.map(|u| (u, admin_key)),
        ),
        ImportFrom::Easemob {
            files,
            admin_url,
            admin_key,
            ca_cert,
            batch,
        } => return import_easemob(&config, files, admin_url, admin_key, ca_cert, batch),
    };
    let source = match (url, conversations, messages) {
        (Some(base), None, None) => Source::Rest {
            base,
            ca_cert,
            app_id: app_id
                .or(config.leancloud_app_id.clone())
                .context("--app-id (or leancloud_app_id) is needed with --url")?,
            master_key: master_key
                .or(config.leancloud_master_key.clone())
                .context("--master-key (or leancloud_master_key) is needed with --url")?,
        },
        (None, Some(conversations), Some(messages)) => Source::Files {
            conversations,
            messages,
            reads,
        },
        _ => anyhow::bail!("give --url, or --conversations and --messages"),
    };
    let report = |s: leancloud::Summary, started: std::time::Instant| {
        for (id, why) in &s.failed {
            eprintln!("not imported: {id}: {why}");
        }
        eprintln!(
            "imported {} conversations ({} were there already), {} messages ({} were there \
             already), {} read positions; {} not imported; took {} ms",
            s.conversations,
            s.existing,
            s.messages,
            s.skipped_messages,
            s.reads,
            s.failed.len(),
            started.elapsed().as_millis()
        );
    };
    if let Some((url, key)) = admin {
        // A running server: through its admin API, which runs the same registry calls.
        let key = key
            .or_else(|| config.admin_api_keys.first().cloned())
            .context("--admin-key (or admin_api_keys in the configuration) is needed")?;
        let sink = leancloud::Sink::Admin(leancloud::Admin::new(&url, &key, None)?);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(async {
            let started = std::time::Instant::now();
            let s = leancloud::run(&sink, &source, &mut |line| eprintln!("{line}")).await?;
            report(s, started);
            Ok(())
        });
    }
    config.validate()?;
    // Imported history is not news: it reaches no webhook.
    config.webhooks.clear();
    std::fs::create_dir_all(&config.data_dir)?;
    let store = tidings::store::open(
        &config.store_engine,
        &config.data_dir,
        config.store_cache_bytes,
    )
    .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let started = std::time::Instant::now();
        let core = tidings::app::Core::open(
            Arc::new(config),
            Arc::new(SystemClock),
            store,
            tokio_util::sync::CancellationToken::new(),
        )?;
        let sink = leancloud::Sink::Store(&core.registry);
        let result = leancloud::run(&sink, &source, &mut |line| eprintln!("{line}")).await;
        core.close().await?;
        report(result?, started);
        Ok(())
    })
}

/// `tidings import easemob`: through the admin API of a running server.
fn import_easemob(
    config: &Config,
    files: Vec<PathBuf>,
    admin_url: Option<String>,
    admin_key: Option<String>,
    ca_cert: Option<PathBuf>,
    batch: usize,
) -> anyhow::Result<()> {
    use tidings::import::easemob;
    let url = match admin_url {
        Some(u) => u,
        None if config.admin_listen.is_empty() => {
            anyhow::bail!("admin_listen is empty: give --admin-url")
        }
        None => format!(
            "{}://{}",
            if config.admin_tls { "https" } else { "http" },
            config.admin_listen
        ),
    };
    let key = admin_key
        .or_else(|| config.admin_api_keys.first().cloned())
        .context("--admin-key (or admin_api_keys in the configuration) is needed")?;
    let target = easemob::Target {
        url,
        key,
        ca_cert,
        batch,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let started = std::time::Instant::now();
        let s = easemob::run(&target, &files, &mut |line| eprintln!("{line}")).await?;
        for (id, why) in &s.failed {
            eprintln!("not imported: {id}: {why}");
        }
        eprintln!(
            "read {} records; imported {} conversations ({} were there already), {} messages \
             ({} were there already); {} not imported; took {} ms",
            s.records,
            s.conversations,
            s.existing,
            s.messages,
            s.skipped_messages,
            s.failed.len(),
            started.elapsed().as_millis()
        );
        Ok(())
    })
}

const IGNORED: &str = "a TIDINGS_ variable that names no configuration field";

fn serve(config: Config, ignored_env: &[String]) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TIDINGS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    for name in ignored_env {
        tracing::warn!(variable = %name, "ignoring {IGNORED}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime_workers())
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // The handlers go in before the server listens: a SIGTERM that comes as soon as the
        // listening line is out (a supervisor, a test) must drain like any other, not find the
        // default action (the process killed, exit by signal) because the task that installs
        // them has not run yet. The same holds for SIGHUP, whose default action also ends the
        // process.
        let stop = StopSignals::install()?;
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let server = tidings::server::start(config, Arc::new(SystemClock)).await?;
        // SIGHUP reloads the TLS certificate (and never stops the server).
        #[cfg(unix)]
        {
            let tls = server.tls();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    match tls.as_ref().map(|t| t.reload()) {
                        None => tracing::info!("SIGHUP: TLS is off, nothing to reload"),
                        Some(Ok(())) => tracing::info!("TLS certificate reloaded"),
                        Some(Err(e)) => tracing::error!(
                            error = %e,
                            "TLS certificate not reloaded; keeping the previous one"
                        ),
                    }
                }
            });
        }
        let token = server.shutdown_token();
        tokio::spawn(async move {
            stop.wait().await;
            // Drain first: if the log's reader is gone, logging may fail, and the signal must
            // still stop the server.
            token.cancel();
            tracing::info!("signal received; draining");
        });
        server.wait().await
    })
}

/// SIGTERM and SIGINT (Ctrl-C), caught from the moment they are installed.
struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<StopSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(StopSignals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    /// The first of them.
    async fn wait(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
