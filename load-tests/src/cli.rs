//! Command line: one subcommand per scenario, the suite, the reference server and the
//! (hidden) worker mode.

use crate::params::{Params, Scenario, Thresholds};
use crate::{refserver, runner, suite};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "tidings-load", about = "Load generator for tidings")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub params: Params,
    #[command(flatten)]
    pub thresholds: Thresholds,
    /// Write the result as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Label of the server in the results.
    #[arg(long, default_value = "tidings")]
    pub target: String,
    /// No progress line, even on a terminal.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Hold N logged-in sessions; server RSS per session.
    Idle(RunArgs),
    /// One-to-one pairs exchanging messages (closed loop, or --rate).
    Chat(RunArgs),
    /// One group of --group-size online members, --senders of them sending.
    Fanout(RunArgs),
    /// Connect and log in --sessions as fast as possible.
    Storm(RunArgs),
    /// Populate a store, then page through its conversations.
    History(RunArgs),
    /// Create --conversations temporary conversations (a message in each), let them expire.
    Churn(RunArgs),
    /// One user in --conversations groups; --readers connections of theirs read the first
    /// --page of their conversation list, closed loop.
    List(RunArgs),
    /// A mixed load (chat, fan-out, logins, reads, misbehaving clients) on fixed schedules
    /// for --duration-secs: server RSS and disk slopes, losses, errors.
    Soak(RunArgs),
    /// Run every scenario against a fresh release server and the reference server.
    Suite(suite::SuiteArgs),
    /// Run the reference broadcaster (prints `listening addr=...` on stderr).
    RefServe {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// Worker process of a run spread over several processes (internal).
    #[command(hide = true)]
    Worker,
}

/// Exit codes: 0 all checks passed, 1 the run failed, 2 a threshold was missed.
pub async fn main(cli: Cli) -> ExitCode {
    match dispatch(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("tidings-load: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<bool> {
    let (scenario, args) = match cli.command {
        Command::Idle(a) => (Scenario::Idle, a),
        Command::Chat(a) => (Scenario::Chat, a),
        Command::Fanout(a) => (Scenario::Fanout, a),
        Command::Storm(a) => (Scenario::Storm, a),
        Command::History(a) => (Scenario::History, a),
        Command::Churn(a) => (Scenario::Churn, a),
        Command::List(a) => (Scenario::List, a),
        Command::Soak(a) => (Scenario::Soak, a),
        Command::Suite(a) => return suite::run(a).await,
        Command::RefServe { listen } => {
            let addr = refserver::start(&listen).await?;
            eprintln!("reference server listening addr={addr}");
            std::future::pending::<()>().await;
            unreachable!()
        }
        Command::Worker => {
            runner::worker().await?;
            return Ok(true);
        }
    };
    let r = runner::run(
        scenario,
        args.params,
        &args.thresholds,
        &args.target,
        !args.quiet,
    )
    .await?;
    print!("{}", runner::table(&r));
    if let Some(out) = &args.out {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, serde_json::to_string_pretty(&r)?)?;
    }
    Ok(r.ok)
}
