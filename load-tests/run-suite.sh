#!/usr/bin/env bash
# Builds a fresh release and runs the whole load suite against a fresh `tidings serve`
# (temp data directory) and the reference server. Extra arguments go to `tidings-load suite`
# (for example --quick, --only chat,fanout, --populate-secs 600, --out FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
exec target/release/tidings-load suite --tidings-bin target/release/tidings "$@"
