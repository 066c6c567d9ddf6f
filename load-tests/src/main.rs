//! `tidings-load`: see `tidings-load --help` and load-tests/README.md.

use clap::Parser;

/// The same allocator as the `tidings` binary, so the generator takes no more of the shared
/// cores than it must, and the reference server (`ref-serve`) runs on what tidings runs on.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = tidings_load::cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(tidings_load::cli::main(cli))
}
