//! `tidings-load`: see `tidings-load --help` and load-tests/README.md.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = tidings_load::cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(tidings_load::cli::main(cli))
}
