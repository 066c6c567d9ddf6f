//! Live counters and the progress line (only when stderr is a terminal).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Live {
    pub sessions: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
    pub pages: AtomicU64,
    pub errors: AtomicU64,
}

/// Prints a progress line every second while it lives, if stderr is a terminal.
pub struct Progress {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Progress {
    pub fn start(label: String, live: Arc<Live>, enabled: bool) -> Progress {
        if !enabled || !std::io::stderr().is_terminal() {
            return Progress { stop: None };
        }
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last = (0, 0);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut rx => break,
                }
                let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
                let (acked, delivered) = (g(&live.acked), g(&live.delivered));
                eprint!(
                    "\r\x1b[K{label} {:6.1}s sessions={} sent={} acked={} (+{}/s) delivered={} (+{}/s) pages={} errors={}",
                    start.elapsed().as_secs_f64(),
                    g(&live.sessions),
                    g(&live.sent),
                    acked,
                    acked - last.0,
                    delivered,
                    delivered - last.1,
                    g(&live.pages),
                    g(&live.errors),
                );
                let _ = std::io::stderr().flush();
                last = (acked, delivered);
            }
            eprint!("\r\x1b[K");
        });
        Progress { stop: Some(tx) }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
