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

pub struct DiagLog {
    min: AtomicU8,
    lines: Mutex<VecDeque<DiagLine>>,
}

const KEEP: usize = 2000;

impl Default for DiagLog {
    fn default() -> Self {
        Self {
            min: AtomicU8::new(Level::Info as u8),
            lines: Mutex::new(VecDeque::new()),
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

    pub fn log(&self, level: Level, message: impl Into<String>) {
        if level < self.min_level() {
            return;
        }
        let message = message.into();
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
