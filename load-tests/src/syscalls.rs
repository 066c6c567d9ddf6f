//! The server's system calls during a run, counted by `perf stat` on the syscall tracepoints
//! (`--syscalls`; needs `perf` and the permission to trace the server: root, or
//! `kernel.perf_event_paranoid` ≤ 1). `/proc` counts only `read`/`write`-family calls in
//! `syscr`/`syscw`, not the `sendto`/`recvfrom` a socket's reads and writes are made of.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};

/// The calls counted; a socket write is one of the first three.
const WRITES: [&str; 3] = ["sendto", "sendmsg", "writev"];
const READS: [&str; 2] = ["recvfrom", "recvmsg"];
const OTHERS: [&str; 4] = ["write", "read", "epoll_wait", "futex"];

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Syscalls {
    /// Calls by name, from the run's go to its end.
    pub counts: BTreeMap<String, u64>,
}

impl Syscalls {
    /// `sendto`, `sendmsg` and `writev`: the calls a socket write is made of (an eventfd
    /// wake-up is a `write`, not counted here).
    pub fn socket_writes(&self) -> u64 {
        WRITES.iter().filter_map(|n| self.counts.get(*n)).sum()
    }
    pub fn socket_reads(&self) -> u64 {
        READS.iter().filter_map(|n| self.counts.get(*n)).sum()
    }
}

/// A running `perf stat` attached to a process.
pub struct Counter {
    child: Child,
    out: tempfile::NamedTempFile,
}

impl Counter {
    /// Starts counting the calls of `pid`; `None` (with a line on stderr) when `perf` cannot.
    pub fn start(pid: u32) -> Option<Counter> {
        let out = tempfile::NamedTempFile::new().ok()?;
        let events: Vec<String> = WRITES
            .iter()
            .chain(&READS)
            .chain(&OTHERS)
            .map(|n| format!("syscalls:sys_enter_{n}"))
            .collect();
        let child = Command::new("perf")
            .args(["stat", "-x", ",", "-o"])
            .arg(out.path())
            .arg("-e")
            .arg(events.join(","))
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(child) => Some(Counter { child, out }),
            Err(e) => {
                eprintln!("--syscalls: cannot run perf ({e}); no syscall counts");
                None
            }
        }
    }

    /// Stops counting (perf prints its counts on SIGINT) and reads them.
    pub fn stop(mut self) -> Option<Syscalls> {
        let interrupted = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !interrupted {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let text = std::fs::read_to_string(self.out.path()).ok()?;
        let counts = parse(&text);
        if counts.is_empty() {
            eprintln!("--syscalls: perf counted nothing (is tracing permitted?)");
            return None;
        }
        Some(Syscalls { counts })
    }
}

/// The counts of `perf stat -x ,` output (`value,unit,event,...` lines; comments and events
/// perf could not count are skipped).
fn parse(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(',');
            let value = f.next()?.trim().parse::<u64>().ok()?;
            let event = f.nth(1)?.trim();
            let name = event.strip_prefix("syscalls:sys_enter_")?;
            Some((name.to_string(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn perf_csv_lines_become_counts_by_call() {
        let text = "# started on Mon Nov 30 14:00:00 2026\n\n\
                    32650,,syscalls:sys_enter_sendto,4000123456,100.00,,\n\
                    <not counted>,,syscalls:sys_enter_sendmsg,0,0.00,,\n\
                    17,,syscalls:sys_enter_writev,4000123456,100.00,,\n\
                    1163,,syscalls:sys_enter_recvfrom,4000123456,100.00,,\n";
        let s = super::Syscalls {
            counts: super::parse(text),
        };
        assert_eq!(s.counts.len(), 3);
        assert_eq!(s.socket_writes(), 32650 + 17);
        assert_eq!(s.socket_reads(), 1163);
    }
}
