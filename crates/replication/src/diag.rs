//! The diagnostic log of category "replication": what the incoming side
//! did for its peers. Its minimum level can be changed while running.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Debug = 0,
    Info = 1,
    Warn = 2,
    Error = 3,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s.to_ascii_lowercase().as_str() {
            "debug" => Some(Level::Debug),
            "info" => Some(Level::Info),
            "warn" | "warning" => Some(Level::Warn),
            "error" => Some(Level::Error),
            _ => None,
        }
    }
    fn from_u8(v: u8) -> Level {
        match v {
            0 => Level::Debug,
            1 => Level::Info,
            2 => Level::Warn,
            _ => Level::Error,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DiagLine {
    pub time: String,
    pub level: Level,
    pub category: &'static str,
    pub message: String,
}

/// The incoming side's log. Its lines are written on peers' requests, so
/// what a peer can make it write is bounded ([`Limiter`]): the same line
/// once a minute, and at most [`PER_SECOND`] lines a second.
pub struct DiagLog {
    min: AtomicU8,
    lines: Mutex<VecDeque<DiagLine>>,
    limiter: Mutex<Limiter>,
}

const KEEP: usize = 2000;
/// A line repeated within this many milliseconds is counted, not written.
const REPEAT_WINDOW_MS: i64 = 60_000;
/// Most lines written per second; past it they are counted and one line
/// says how many were not written.
pub const PER_SECOND: u32 = 10;
/// Most distinct recent lines remembered for [`REPEAT_WINDOW_MS`].
const REMEMBERED: usize = 1024;

/// What [`DiagLog::log`] has written lately.
#[derive(Default)]
struct Limiter {
    /// By line (hashed): when it was last written, and repeats since.
    recent: std::collections::HashMap<u64, (i64, u64)>,
    /// Start (ms) of the current second, lines written and not in it.
    second: i64,
    written: u32,
    dropped: u64,
}

/// Whether to write a line (with how often it was left out before it),
/// and a line saying how many the last second left out.
struct Verdict {
    write: Option<u64>,
    dropped_before: u64,
}

impl Limiter {
    fn admit(&mut self, line: &str, now: i64) -> Verdict {
        let mut dropped_before = 0;
        if now - self.second >= 1000 {
            dropped_before = std::mem::take(&mut self.dropped);
            self.second = now;
            self.written = 0;
        }
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            line.hash(&mut h);
            h.finish()
        };
        if let Some((last, repeats)) = self.recent.get_mut(&key)
            && now - *last < REPEAT_WINDOW_MS
        {
            *repeats += 1;
            return Verdict {
                write: None,
                dropped_before,
            };
        }
        if self.written >= PER_SECOND {
            self.dropped += 1;
            return Verdict {
                write: None,
                dropped_before,
            };
        }
        if self.recent.len() >= REMEMBERED {
            self.recent.retain(|_, (last, _)| now - *last < REPEAT_WINDOW_MS);
            if self.recent.len() >= REMEMBERED {
                self.recent.clear();
            }
        }
        let repeats = self.recent.insert(key, (now, 0)).map_or(0, |(_, r)| r);
        self.written += 1;
        Verdict {
            write: Some(repeats),
            dropped_before,
        }
    }
}

impl Default for DiagLog {
    fn default() -> Self {
        Self {
            min: AtomicU8::new(Level::Info as u8),
            lines: Mutex::new(VecDeque::new()),
            limiter: Mutex::new(Limiter::default()),
        }
    }
}

impl DiagLog {
    pub fn min_level(&self) -> Level {
        Level::from_u8(self.min.load(Ordering::Relaxed))
    }
    pub fn set_min_level(&self, l: Level) {
        self.min.store(l as u8, Ordering::Relaxed);
    }

    /// Writes `message` at `level` (to the server's log and the recent
    /// lines), unless below the minimum level, or the same line was
    /// written less than a minute ago, or [`PER_SECOND`] lines were
    /// already written this second: those are counted, and the next line
    /// written says how many were left out.
    pub fn log(&self, level: Level, message: impl Into<String>) {
        if level < self.min_level() {
            return;
        }
        let message = message.into();
        let now = ferry_store::now_millis();
        let verdict = match self.limiter.lock() {
            Ok(mut l) => l.admit(&message, now),
            Err(_) => Verdict {
                write: Some(0),
                dropped_before: 0,
            },
        };
        if verdict.dropped_before > 0 {
            self.write(
                Level::Warn,
                format!(
                    "{} replication log lines were not written in the last second (more than {PER_SECOND})",
                    verdict.dropped_before
                ),
            );
        }
        match verdict.write {
            None => {}
            Some(0) => self.write(level, message),
            Some(n) => self.write(
                level,
                format!("{message} (also {n} times since it was last written, not written again)"),
            ),
        }
    }

    fn write(&self, level: Level, message: String) {
        match level {
            Level::Debug => tracing::debug!(target: "replication", "{message}"),
            Level::Info => tracing::info!(target: "replication", "{message}"),
            Level::Warn => tracing::warn!(target: "replication", "{message}"),
            Level::Error => tracing::error!(target: "replication", "{message}"),
        }
        if let Ok(mut lines) = self.lines.lock() {
            if lines.len() >= KEEP {
                lines.pop_front();
            }
            lines.push_back(DiagLine {
                time: ferry_core::rfc3339(ferry_store::now_millis()),
                level,
                category: "replication",
                message,
            });
        }
    }

    /// The newest `limit` lines, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<DiagLine> {
        self.lines
            .lock()
            .map(|l| l.iter().rev().take(limit).rev().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_changes_at_run_time() {
        let d = DiagLog::default();
        d.log(Level::Debug, "hidden");
        d.log(Level::Info, "shown");
        d.set_min_level(Level::Debug);
        d.log(Level::Debug, "now shown");
        let msgs: Vec<_> = d.recent(10).into_iter().map(|l| l.message).collect();
        assert_eq!(msgs, vec!["shown", "now shown"]);
    }
}

#[cfg(test)]
mod flood_tests {
    use super::*;

    #[test]
    fn a_peer_cannot_flood_the_log() {
        let mut l = Limiter::default();
        let t = 1_000_000;
        // The same line: once a minute, then with how often it came.
        assert_eq!(l.admit("same", t).write, Some(0));
        for i in 1..=100 {
            assert_eq!(l.admit("same", t + i * 10).write, None);
        }
        assert_eq!(l.admit("same", t + REPEAT_WINDOW_MS).write, Some(100));
        // Distinct lines: PER_SECOND a second, the rest counted and said
        // with the next second's first line.
        let s = t + 2 * REPEAT_WINDOW_MS;
        let written = (0..200)
            .filter(|i| l.admit(&format!("line {i}"), s).write.is_some())
            .count();
        assert_eq!(written, PER_SECOND as usize);
        let next = l.admit("later", s + 1000);
        assert_eq!(next.dropped_before, 200 - u64::from(PER_SECOND));
        assert_eq!(next.write, Some(0));
    }
}
