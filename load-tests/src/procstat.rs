//! The server's CPU time, memory, context switches and disk writes, read from
//! `/proc/<pid>/stat`, `/proc/<pid>/status`, its threads' `/proc/<pid>/task/<tid>/status` and
//! `/proc/<pid>/io`.

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Linux reports utime/stime in USER_HZ, which is 100 on every architecture Linux supports
/// for user space (the ABI fixes it, whatever the kernel's internal HZ).
const USER_HZ: f64 = 100.0;

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// User plus system CPU seconds since the process started.
    pub cpu_secs: f64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// Context switches of all the process's threads since they started (voluntary: a thread
    /// waited; involuntary: it was preempted).
    #[serde(default)]
    pub ctx_switches: u64,
    /// Bytes the process caused to be written to storage since it started (`write_bytes` of
    /// `/proc/<pid>/io`: page-cache writes as they are dirtied, whether or not they have reached
    /// the disk yet; 0 where it cannot be read, or on a file system without a block device).
    #[serde(default)]
    pub disk_write_bytes: u64,
}

/// Reads one sample of process `pid`.
pub fn sample(pid: u32) -> anyhow::Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces: parse after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i - 3)
            .ok_or_else(|| anyhow::anyhow!("short /proc/{pid}/stat"))?
            .parse::<u64>()? as f64)
    };
    let cpu_secs = (ticks(14)? + ticks(15)?) / USER_HZ;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Ok(Sample {
        cpu_secs,
        rss_bytes: rss_kb * 1024,
        ctx_switches: ctx_switches(pid),
        disk_write_bytes: std::fs::read_to_string(format!("/proc/{pid}/io"))
            .ok()
            .and_then(|io| write_bytes_of(&io))
            .unwrap_or(0),
    })
}

/// The `write_bytes` line of a `/proc/<pid>/io`.
fn write_bytes_of(io: &str) -> Option<u64> {
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Voluntary and involuntary context switches summed over the threads of `pid` (threads that
/// have ended are not counted).
fn ctx_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// Samples a process in the background (every 200 ms) and keeps the peak RSS.
pub struct Monitor {
    pid: u32,
    peak: Arc<Mutex<u64>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Monitor {
    pub fn start(pid: u32) -> Monitor {
        let peak = Arc::new(Mutex::new(sample(pid).map(|s| s.rss_bytes).unwrap_or(0)));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let p = peak.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                match sample(pid) {
                    Ok(s) => {
                        let mut peak = p.lock().unwrap();
                        *peak = (*peak).max(s.rss_bytes);
                    }
                    Err(_) => break,
                }
            }
        });
        Monitor { pid, peak, stop }
    }

    pub fn now(&self) -> Sample {
        let s = sample(self.pid).unwrap_or_default();
        let mut peak = self.peak.lock().unwrap();
        *peak = (*peak).max(s.rss_bytes);
        s
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn peak_rss(&self) -> u64 {
        *self.peak.lock().unwrap()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_process() {
        let s = super::sample(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0);
        assert!(s.cpu_secs >= 0.0);
    }

    #[test]
    fn finds_the_bytes_written_to_storage() {
        let io = "rchar: 4221\nwchar: 812\nsyscr: 9\nsyscw: 3\nread_bytes: 0\n\
                  write_bytes: 1589248\ncancelled_write_bytes: 4096\n";
        assert_eq!(super::write_bytes_of(io), Some(1_589_248));
        assert_eq!(super::write_bytes_of("rchar: 1\n"), None);
    }
}
