//! Client input in the log: one wrapper for every string a client controls ([`clean`]), and a
//! per-kind rate limit for lines a client can cause at will ([`Throttle`]).
//!
//! A client string (a token's header, a device tag, an error quoting either) could otherwise
//! end a log line and forge the next one, move the cursor or recolour a terminal with ANSI
//! escapes, reorder what a reader sees with bidi overrides, or write 90 KB per failed login. So
//! it is written escaped and cut short, and lines a client can repeat (a refused login) are
//! limited per second, the rest counted and reported in one line when the second is over.

use std::fmt::{self, Display, Write};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// `value` for a log field: at most `max_chars` characters of it, with line breaks, control
/// and format characters escaped (`\n`, `\r`, `\t`, `\\`, and `\u{…}` for the rest), then
/// `…(N more)` when characters were cut. Nothing is allocated: `value` is formatted straight
/// through the escaper.
pub fn clean<T: Display>(value: T, max_chars: usize) -> Clean<T> {
    Clean { value, max_chars }
}

/// See [`clean`].
pub struct Clean<T> {
    value: T,
    max_chars: usize,
}

impl<T: Display> Display for Clean<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Escaper {
            out: f,
            left: self.max_chars,
            more: 0,
        };
        write!(out, "{}", self.value)?;
        let more = out.more;
        if more > 0 {
            write!(f, "…({more} more)")?;
        }
        Ok(())
    }
}

impl<T: Display> fmt::Debug for Clean<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Display::fmt(self, f)
    }
}

struct Escaper<'a, 'b> {
    out: &'a mut fmt::Formatter<'b>,
    /// Characters still to write.
    left: usize,
    /// Characters cut.
    more: usize,
}

impl Write for Escaper<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if self.left == 0 {
                self.more += 1;
                continue;
            }
            self.left -= 1;
            match c {
                '\n' => self.out.write_str("\\n")?,
                '\r' => self.out.write_str("\\r")?,
                '\t' => self.out.write_str("\\t")?,
                '\\' => self.out.write_str("\\\\")?,
                // Cc (NUL, ESC, DEL, C1 controls), Cf (bidi overrides, zero-width characters)
                // and the line and paragraph separators some viewers break lines at.
                c if c.is_control()
                    || crate::auth::is_format(c)
                    || matches!(c, '\u{2028}' | '\u{2029}') =>
                {
                    write!(self.out, "\\u{{{:x}}}", c as u32)?
                }
                c => self.out.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// A rate limit for one kind of log line: at most `per_sec` lines a second; the rest are
/// counted and reported in one warning (`log lines suppressed kind=… suppressed=N`) when the
/// second is over. The log is the process's, so a throttle is a `static`, one per kind.
pub struct Throttle {
    kind: &'static str,
    window: Mutex<Window>,
}

/// Throttles that have held lines back, for [`flush`].
static HOLDING: Mutex<Vec<&'static Throttle>> = Mutex::new(Vec::new());

/// Reports now what every throttle holds back, instead of at the end of its second: at
/// shutdown, when the process may end before that second does.
pub fn flush() {
    let holding = std::mem::take(&mut *HOLDING.lock().unwrap_or_else(PoisonError::into_inner));
    for t in holding {
        let held = {
            let mut w = t.window.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut w.suppressed)
        };
        if held > 0 {
            t.report(held);
        }
    }
}

struct Window {
    start: Option<Instant>,
    written: u32,
    suppressed: u64,
    /// A task will report `suppressed` at the end of the second.
    report_due: bool,
}

const SECOND: Duration = Duration::from_secs(1);

impl Throttle {
    pub const fn new(kind: &'static str) -> Throttle {
        Throttle {
            kind,
            window: Mutex::new(Window {
                start: None,
                written: 0,
                suppressed: 0,
                report_due: false,
            }),
        }
    }

    /// Whether one more line of this kind may be written now. The first line held back in a
    /// second schedules the report of that second's count (on the current tokio runtime; with
    /// none, the count goes out when the next line is allowed).
    pub fn allow(&'static self, per_sec: u32) -> bool {
        let now = Instant::now();
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if w.start.is_none_or(|s| now.duration_since(s) >= SECOND) {
            let held = std::mem::take(&mut w.suppressed);
            w.start = Some(now);
            w.written = 0;
            if held > 0 {
                self.report(held);
            }
        }
        if w.written < per_sec {
            w.written += 1;
            return true;
        }
        w.suppressed += 1;
        if w.suppressed == 1 {
            let mut holding = HOLDING.lock().unwrap_or_else(PoisonError::into_inner);
            if !holding.iter().any(|t| std::ptr::eq(*t, self)) {
                holding.push(self);
            }
        }
        if !w.report_due
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            w.report_due = true;
            let at = w.start.unwrap_or(now) + SECOND;
            rt.spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                let held = {
                    let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
                    w.report_due = false;
                    std::mem::take(&mut w.suppressed)
                };
                if held > 0 {
                    self.report(held);
                }
            });
        }
        false
    }

    fn report(&self, suppressed: u64) {
        tracing::warn!(kind = self.kind, suppressed, "log lines suppressed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_cuts() {
        assert_eq!(clean("plain id", 128).to_string(), "plain id");
        assert_eq!(
            clean("a\nb\r\tc\\d\x1b[31m\u{202E}\u{2028}é", 128).to_string(),
            "a\\nb\\r\\tc\\\\d\\u{1b}[31m\\u{202e}\\u{2028}é"
        );
        assert_eq!(clean("abcdef", 4).to_string(), "abcd…(2 more)");
        assert_eq!(
            clean(format_args!("{}-{}", "ab", "cd"), 3).to_string(),
            "ab-…(2 more)"
        );
        assert_eq!(clean("", 0).to_string(), "");
    }
}
