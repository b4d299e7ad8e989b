//! Configuration: a TOML file, overridden by `FERRY_*` environment
//! variables, overridden by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Largest upload accepted, in bytes.
    pub max_upload_bytes: u64,
    /// Seconds between background garbage collections (0: never).
    pub gc_interval_secs: u64,
    /// How long tombstones are kept, in seconds (a replication cursor older
    /// than that triggers a full comparison).
    pub tombstone_retention_secs: u64,
    /// Seconds between background integrity checks of stored blobs
    /// (0: never); each re-hashes a random `fsck_sample` share of them.
    pub fsck_interval_secs: u64,
    /// Share of stored blobs each background check re-hashes (0.0 to 1.0).
    pub fsck_sample: f64,
    /// How far ahead of this clock a replicated stamp may be, in seconds.
    pub max_clock_skew_secs: u64,
    /// `tracing` filter, e.g. "info" or "ferry=debug".
    pub log: String,
    /// Feeds declared as code: created at start if missing.
    pub feeds: Vec<FeedDecl>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedDecl {
    pub name: String,
    #[serde(rename = "type")]
    pub feed_type: String,
    #[serde(default)]
    pub private: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./ferry-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8765)),
            max_upload_bytes: 4 << 30,
            gc_interval_secs: 3600,
            tombstone_retention_secs: 30 * 86_400,
            fsck_interval_secs: 86_400,
            fsck_sample: 0.05,
            max_clock_skew_secs: 300,
            log: "info".into(),
            feeds: Vec::new(),
        }
    }
}

impl Config {
    /// Reads `file` (if given) and applies `FERRY_*` variables on top.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut cfg = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?
            }
            None => Config::default(),
        };
        if let Ok(v) = std::env::var("FERRY_DATA_DIR") {
            cfg.data_dir = v.into();
        }
        if let Ok(v) = std::env::var("FERRY_LISTEN") {
            cfg.listen = v
                .parse()
                .with_context(|| format!("FERRY_LISTEN={v:?} is not an address"))?;
        }
        if let Ok(v) = std::env::var("FERRY_MAX_UPLOAD_BYTES") {
            cfg.max_upload_bytes = v
                .parse()
                .with_context(|| format!("FERRY_MAX_UPLOAD_BYTES={v:?}"))?;
        }
        if let Ok(v) = std::env::var("FERRY_GC_INTERVAL_SECS") {
            cfg.gc_interval_secs = v
                .parse()
                .with_context(|| format!("FERRY_GC_INTERVAL_SECS={v:?}"))?;
        }
        if let Ok(v) = std::env::var("FERRY_TOMBSTONE_RETENTION_SECS") {
            cfg.tombstone_retention_secs = v
                .parse()
                .with_context(|| format!("FERRY_TOMBSTONE_RETENTION_SECS={v:?}"))?;
        }
        if let Ok(v) = std::env::var("FERRY_FSCK_INTERVAL_SECS") {
            cfg.fsck_interval_secs = v
                .parse()
                .with_context(|| format!("FERRY_FSCK_INTERVAL_SECS={v:?}"))?;
        }
        if let Ok(v) = std::env::var("FERRY_FSCK_SAMPLE") {
            cfg.fsck_sample = v.parse().with_context(|| format!("FERRY_FSCK_SAMPLE={v:?}"))?;
        }
        if let Ok(v) = std::env::var("FERRY_MAX_CLOCK_SKEW_SECS") {
            cfg.max_clock_skew_secs = v
                .parse()
                .with_context(|| format!("FERRY_MAX_CLOCK_SKEW_SECS={v:?}"))?;
        }
        if !(0.0..=1.0).contains(&cfg.fsck_sample) {
            anyhow::bail!("fsck_sample must be between 0 and 1, not {}", cfg.fsck_sample);
        }
        if let Ok(v) = std::env::var("FERRY_LOG") {
            cfg.log = v;
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let cfg: Config = toml::from_str(
            r#"
            data_dir = "/srv/ferry"
            listen = "0.0.0.0:9000"
            max_upload_bytes = 1000
            [[feeds]]
            name = "npm-main"
            type = "npm"
            private = true
            "#,
        )
        .unwrap();
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(cfg.feeds[0].name, "npm-main");
        assert!(cfg.feeds[0].private);
        assert!(
            toml::from_str::<Config>("lisen = 1").is_err(),
            "typos must not pass silently"
        );
    }
}
