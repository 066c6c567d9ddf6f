//! What the machine a suite ran on is like, measured at the start so figures from different
//! machines can be compared: the CPU, and the costs that decide this server's figures (a small
//! socket write, a thread's wake-up, an fsync).

use serde::Serialize;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_bytes: u64,
    pub kernel: String,
    /// One `write()` of 100 bytes to a loopback TCP socket whose peer reads, µs (median of 5
    /// rounds of 2,000).
    pub small_write_us: f64,
    /// Per 100-byte frame when 16 of them go in one `write()`, µs: what batching frames saves.
    pub batched_write_us_per_frame: f64,
    /// A round trip between two threads that each wait for the other (a message each way,
    /// each waking a parked thread), µs (median of 5 rounds of 2,000).
    pub wake_round_trip_us: f64,
    /// A 4 KiB write and `fdatasync` in the temporary directory the servers' stores use, µs.
    pub fsync_p50_us: f64,
    pub fsync_p99_us: f64,
}

impl Machine {
    /// Measures this machine (about two seconds).
    pub fn measure() -> anyhow::Result<Machine> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|v| v.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, v)| v.trim().to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_bytes = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |k| k.trim().to_string());
        let (fsync_p50_us, fsync_p99_us) = fsync_cost()?;
        Ok(Machine {
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_bytes,
            kernel,
            small_write_us: median(|| write_cost(1))?,
            batched_write_us_per_frame: median(|| write_cost(16))?,
            wake_round_trip_us: median(wake_cost)?,
            fsync_p50_us,
            fsync_p99_us,
        })
    }

    /// One line for the suite's output.
    pub fn line(&self) -> String {
        format!(
            "machine: {} ({} CPUs, {:.1} GiB, Linux {}); 100-byte socket write {:.2} µs, \
             16 per write {:.2} µs a frame; thread wake-up round trip {:.1} µs; \
             fsync p50 {:.0} µs, p99 {:.0} µs",
            self.cpu_model,
            self.cpus,
            self.memory_bytes as f64 / f64::from(1u32 << 30),
            self.kernel,
            self.small_write_us,
            self.batched_write_us_per_frame,
            self.wake_round_trip_us,
            self.fsync_p50_us,
            self.fsync_p99_us
        )
    }
}

const ROUNDS: usize = 5;
const PER_ROUND: usize = 2_000;

/// The median of `ROUNDS` measurements: a neighbour's burst spoils one round, not the figure.
fn median(f: impl Fn() -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    let mut v = (0..ROUNDS)
        .map(|_| f())
        .collect::<anyhow::Result<Vec<f64>>>()?;
    v.sort_by(f64::total_cmp);
    Ok(v[ROUNDS / 2])
}

/// µs per 100-byte frame, written `frames` to a `write()` on a loopback connection that a
/// second thread drains.
fn write_cost(frames: usize) -> anyhow::Result<f64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut tx = std::net::TcpStream::connect(listener.local_addr()?)?;
    tx.set_nodelay(true)?;
    let (mut rx, _) = listener.accept()?;
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while rx.read(&mut buf).is_ok_and(|n| n > 0) {}
    });
    let chunk = vec![0x5au8; 100 * frames];
    let writes = PER_ROUND.div_ceil(frames);
    let start = Instant::now();
    for _ in 0..writes {
        tx.write_all(&chunk)?;
    }
    let took = start.elapsed();
    drop(tx);
    let _ = reader.join();
    Ok(took.as_secs_f64() * 1e6 / (writes * frames) as f64)
}

/// µs per round trip between two threads over rendezvous channels, so that each message
/// wakes a waiting thread.
fn wake_cost() -> anyhow::Result<f64> {
    let (ping_tx, ping_rx) = std::sync::mpsc::sync_channel::<u32>(0);
    let (pong_tx, pong_rx) = std::sync::mpsc::sync_channel::<u32>(0);
    let echo = std::thread::spawn(move || {
        while let Ok(v) = ping_rx.recv() {
            if pong_tx.send(v).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    for i in 0..PER_ROUND as u32 {
        ping_tx.send(i)?;
        anyhow::ensure!(pong_rx.recv()? == i, "wake-up probe: out of order");
    }
    let took = start.elapsed();
    drop(ping_tx);
    let _ = echo.join();
    Ok(took.as_secs_f64() * 1e6 / PER_ROUND as f64)
}

/// p50 and p99 of a 4 KiB write and `fdatasync` at the end of a file, 200 times.
fn fsync_cost() -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let mut f = std::fs::File::create(dir.path().join("fsync-probe"))?;
    let page = vec![0xa5u8; 4096];
    let mut took: Vec<Duration> = (0..200)
        .map(|_| {
            let start = Instant::now();
            f.write_all(&page)?;
            f.sync_data()?;
            Ok(start.elapsed())
        })
        .collect::<std::io::Result<_>>()?;
    took.sort();
    let us = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    Ok((us(0.5), us(0.99)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_machine_is_measured() {
        let m = super::Machine::measure().unwrap();
        assert!(m.cpus >= 1 && m.memory_bytes > 0, "{m:?}");
        for v in [
            m.small_write_us,
            m.batched_write_us_per_frame,
            m.wake_round_trip_us,
            m.fsync_p50_us,
        ] {
            assert!(v.is_finite() && v > 0.0, "{m:?}");
        }
        assert!(m.fsync_p99_us >= m.fsync_p50_us);
        assert!(m.line().starts_with("machine: "));
    }
}
