//! Load generator for tidings: scenarios over the real protocol, HDR latency histograms,
//! server CPU and memory from /proc, worker processes past one process's descriptor limit,
//! a reference broadcaster, and the whole suite; native or LeanCloud dialect.

pub mod cli;
pub mod hist;
pub mod hookrecv;
pub mod lc;
pub mod live;
pub mod machine;
pub mod params;
pub mod procstat;
pub mod raw;
pub mod refserver;
pub mod runner;
pub mod scenario;
pub mod soak;
pub mod suite;
pub mod syscalls;
