//! Configuration: a TOML file, overridden by `FERRY_*` environment
//! variables, overridden by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ferry_server::declare::{Declarations, FeedDecl, ReplicationDecl};
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
    /// The name this instance reports to the instances it replicates with
    /// (unset: the host name).
    pub instance_name: Option<String>,
    /// A peer of an incoming replication not seen for this many of its
    /// intervals is shown stale.
    pub peer_stale_intervals: u32,
    /// The URL clients reach this instance at behind a reverse proxy
    /// (`https://example.test/registry`); absolute URLs Ferry emits (npm
    /// tarballs) start with it. Unset: taken from each request.
    pub base_url: Option<String>,
    /// Serve `/metrics` without a key (they name private feeds and
    /// replications). Off by default.
    pub metrics_public: bool,
    /// `tracing` filter, e.g. "info" or "ferry=debug".
    pub log: String,
    /// Seconds a client has to send a request's headers, counted from the
    /// connection's start (first request) or from its first byte (later
    /// requests). Past it the connection is closed.
    pub header_read_timeout_secs: u64,
    /// Seconds a kept-alive connection may sit idle between requests.
    pub keep_alive_timeout_secs: u64,
    /// Seconds a request body may go without sending a byte (answered 408),
    /// and a response may go without the client taking a byte (connection
    /// closed). Transfers that keep moving are never cut, however long.
    pub body_timeout_secs: u64,
    /// Most client connections served at once; `None`: derived from the
    /// descriptor limit (see `listener::default_max_connections`).
    pub max_connections: Option<usize>,
    /// Seconds requests in flight may go on after SIGTERM/SIGINT; the
    /// connections still open then (slow downloads) are closed.
    pub shutdown_grace_secs: u64,
    /// PEM certificate chain to serve HTTPS with (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM bundle of CA certificates trusted, besides the system's, for
    /// outgoing replications.
    pub tls_ca_file: Option<PathBuf>,
    /// PostgreSQL for the metadata instead of SQLite in `data_dir`:
    /// `postgres://USER@HOST:PORT/DATABASE` (libpq's URL form, `sslmode`
    /// and all). The password may stay out of the file: from
    /// `FERRY_DATABASE_URL`, `PGPASSWORD` or `~/.pgpass`. Nodes given the
    /// same database are one instance.
    pub database_url: Option<String>,
    /// Seconds a node's claim to run a replication's executions lasts
    /// unrenewed (nodes sharing a database take over a dead node's
    /// executions after at most this long).
    pub execution_lease_secs: u64,
    /// This node's name among nodes sharing a database; by default
    /// `HOSTNAME:LISTEN` (random when listening on port 0). It must stay
    /// the same across restarts of a node and differ between nodes.
    pub node_name: Option<String>,
    /// Feeds declared as code: created at start (and on SIGHUP, `ferry
    /// config apply`) if missing.
    pub feeds: Vec<FeedDecl>,
    /// Replications declared as code: created or updated in place.
    pub replications: Vec<ReplicationDecl>,
    /// Delete replications this file does not declare.
    pub prune: bool,
    /// Where blobs are kept: `data_dir/blobs` (the default) or an
    /// S3-compatible bucket (`[blob_store] type = "s3"`).
    pub blob_store: BlobStoreConfig,
    /// The file this was read from (to resolve `token_file` and re-read on
    /// SIGHUP).
    #[serde(skip)]
    pub source: Option<PathBuf>,
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
            instance_name: None,
            peer_stale_intervals: 3,
            metrics_public: false,
            base_url: None,
            log: "info".into(),
            header_read_timeout_secs: 30,
            keep_alive_timeout_secs: 75,
            body_timeout_secs: 60,
            max_connections: None,
            shutdown_grace_secs: 30,
            tls_cert: None,
            tls_key: None,
            tls_ca_file: None,
            database_url: None,
            execution_lease_secs: 30,
            node_name: None,
            feeds: Vec::new(),
            replications: Vec::new(),
            prune: false,
            blob_store: BlobStoreConfig::default(),
            source: None,
        }
    }
}

impl Config {
    /// Reads `file` (if given) and applies `FERRY_*` variables on top. The
    /// file may be a pipe (`ferry config apply <(…)`); at most
    /// [`MAX_CONFIG_FILE`] bytes of it are read.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        Self::load_from(file, false)
    }

    /// [`Config::load`] of the file a running server was started with
    /// (on SIGHUP): it must be a regular file now, so that a FIFO or a
    /// device put in its place is refused at once instead of blocking.
    pub fn reload(file: &Path) -> anyhow::Result<Self> {
        Self::load_from(Some(file), true)
    }

    fn load_from(file: Option<&Path>, regular_only: bool) -> anyhow::Result<Self> {
        let mut cfg = match file {
            Some(path) => {
                let text = read_small_file(path, MAX_CONFIG_FILE, regular_only)
                    .with_context(|| format!("reading config {}", path.display()))?;
                // `line` is the reader's own note on each declaration (the
                // API takes it from `config apply`), not a setting: an
                // unknown key's message does not offer it, and the file may
                // not set it.
                let mut cfg: Config = toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}", toml_error(&text, &e).replace(", `line`", "")))
                    .with_context(|| format!("parsing config {}", path.display()))?;
                let (feeds, replications) =
                    (header_lines(&text, "feeds"), header_lines(&text, "replications"));
                let noted = cfg
                    .feeds
                    .iter()
                    .zip(&feeds)
                    .find(|(f, _)| f.line.is_some())
                    .map(|(_, l)| *l)
                    .or_else(|| {
                        cfg.replications
                            .iter()
                            .zip(&replications)
                            .find(|(r, _)| {
                                r.line.is_some() || r.blob_sources.iter().any(|b| b.line.is_some())
                            })
                            .map(|(_, l)| *l)
                    });
                if let Some(at) = noted {
                    anyhow::bail!(
                        "parsing config {}: line {at}: `line` is not a setting (the declaration's line is read from the file)",
                        path.display()
                    );
                }
                for (f, line) in cfg.feeds.iter_mut().zip(feeds) {
                    f.line = Some(line);
                }
                let ends: Vec<u32> = replications.iter().skip(1).copied().chain([u32::MAX]).collect();
                for ((r, line), end) in cfg.replications.iter_mut().zip(replications).zip(ends) {
                    r.line = Some(line);
                    source_lines(&text, line, end, &mut r.blob_sources);
                }
                cfg.source = Some(path.to_path_buf());
                let said = toml::from_str::<toml::Table>(&text).is_ok_and(|t| t.contains_key("data_dir"));
                if said && cfg.data_dir.is_relative() {
                    cfg.data_dir = file_relative_data_dir(path, &cfg.data_dir)?;
                }
                cfg
            }
            None => Config::default(),
        };
        if let Ok(v) = std::env::var("FERRY_NODE_NAME") {
            cfg.node_name = Some(v).filter(|v| !v.is_empty());
        }
        if let Ok(v) = std::env::var("FERRY_EXECUTION_LEASE_SECS") {
            cfg.execution_lease_secs = v
                .parse()
                .with_context(|| format!("FERRY_EXECUTION_LEASE_SECS={v:?}"))?;
        }
        if let Ok(v) = std::env::var("FERRY_DATABASE_URL") {
            cfg.database_url = Some(v).filter(|v| !v.is_empty());
        }
        if let Ok(v) = std::env::var("FERRY_DATA_DIR") {
            cfg.data_dir = v.into();
        }
        cfg.blob_store
            .apply_env(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))?;
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
        if let Ok(v) = std::env::var("FERRY_INSTANCE_NAME") {
            cfg.instance_name = Some(v).filter(|v| !v.is_empty());
        }
        if let Ok(v) = std::env::var("FERRY_PEER_STALE_INTERVALS") {
            cfg.peer_stale_intervals = v
                .parse()
                .with_context(|| format!("FERRY_PEER_STALE_INTERVALS={v:?}"))?;
        }
        if let Ok(v) = std::env::var("FERRY_HEADER_READ_TIMEOUT_SECS") {
            cfg.header_read_timeout_secs = v
                .parse()
                .with_context(|| format!("FERRY_HEADER_READ_TIMEOUT_SECS={v:?}"))?;
        }
        if let Ok(v) = std::env::var("FERRY_KEEP_ALIVE_TIMEOUT_SECS") {
            cfg.keep_alive_timeout_secs = v
                .parse()
                .with_context(|| format!("FERRY_KEEP_ALIVE_TIMEOUT_SECS={v:?}"))?;
        }
        if let Ok(v) = std::env::var("FERRY_BODY_TIMEOUT_SECS") {
            cfg.body_timeout_secs = v
                .parse()
                .with_context(|| format!("FERRY_BODY_TIMEOUT_SECS={v:?}"))?;
        }
        if let Ok(v) = std::env::var("FERRY_MAX_CONNECTIONS") {
            cfg.max_connections = Some(
                v.parse()
                    .with_context(|| format!("FERRY_MAX_CONNECTIONS={v:?}"))?,
            );
        }
        if let Ok(v) = std::env::var("FERRY_SHUTDOWN_GRACE_SECS") {
            cfg.shutdown_grace_secs = v
                .parse()
                .with_context(|| format!("FERRY_SHUTDOWN_GRACE_SECS={v:?}"))?;
        }
        if let Ok(v) = std::env::var("FERRY_TLS_CERT") {
            cfg.tls_cert = Some(v.into());
        }
        if let Ok(v) = std::env::var("FERRY_TLS_KEY") {
            cfg.tls_key = Some(v.into());
        }
        if let Ok(v) = std::env::var("FERRY_TLS_CA_FILE") {
            cfg.tls_ca_file = Some(v.into());
        }
        for (name, secs) in [
            ("header_read_timeout_secs", cfg.header_read_timeout_secs),
            ("keep_alive_timeout_secs", cfg.keep_alive_timeout_secs),
            ("body_timeout_secs", cfg.body_timeout_secs),
        ] {
            if secs == 0 {
                anyhow::bail!("{name} must be at least 1 second");
            }
        }
        if cfg.max_connections == Some(0) {
            anyhow::bail!("max_connections must be at least 1");
        }
        if cfg.tls_cert.is_some() != cfg.tls_key.is_some() {
            anyhow::bail!("tls_cert and tls_key go together: set both (HTTPS) or neither (HTTP)");
        }
        if !(0.0..=1.0).contains(&cfg.fsck_sample) {
            anyhow::bail!("fsck_sample must be between 0 and 1, not {}", cfg.fsck_sample);
        }
        if let Ok(v) = std::env::var("FERRY_BASE_URL") {
            cfg.base_url = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(url) = &cfg.base_url {
            cfg.base_url = Some(ferry_core::validate_base_url(url)?);
        }
        if let Ok(v) = std::env::var("FERRY_METRICS_PUBLIC") {
            cfg.metrics_public = v
                .parse()
                .with_context(|| format!("FERRY_METRICS_PUBLIC={v:?} (true or false)"))?;
        }
        if let Ok(v) = std::env::var("FERRY_LOG") {
            cfg.log = v;
        }
        Ok(cfg)
    }
}

/// The 1-based lines of the `[[NAME]]` table headers in a TOML text, in
/// order (the k-th is the k-th element of the array of tables).
/// Sets each blob source's line: the first line, after the previous
/// source's, between the replication's header (`from`) and the next one
/// (`to`, exclusive) that holds its URL as a quoted string.
fn source_lines(text: &str, from: u32, to: u32, sources: &mut [ferry_server::declare::BlobSourceDecl]) {
    let mut after = from;
    for s in sources {
        let quoted = [format!("\"{}\"", s.url), format!("'{}'", s.url)];
        let found = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i as u32 + 1, l))
            .filter(|(n, _)| *n >= after && *n < to)
            .find(|(_, l)| quoted.iter().any(|q| l.contains(q.as_str())))
            .map(|(n, _)| n);
        if let Some(n) = found {
            s.line = Some(n);
            after = n;
        }
    }
}

fn header_lines(text: &str, name: &str) -> Vec<u32> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim();
            l.strip_prefix("[[")
                .and_then(|r| r.split(']').next())
                .is_some_and(|inner| inner.trim() == name)
        })
        .map(|(i, _)| i as u32 + 1)
        .collect()
}

/// A relative `data_dir` written in configuration file `file`: relative to
/// the file's directory, as `token_file` is (the default `./ferry-data`,
/// `FERRY_DATA_DIR` and `--data-dir` stay relative to the current
/// directory). A start that would find no instance there, while the same
/// path taken from the current directory (as Ferry read it before) holds
/// one, is refused rather than silently making a new empty instance.
fn file_relative_data_dir(file: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let base = file.parent().unwrap_or(Path::new("."));
    let resolved = base.join(dir);
    let (abs, old) = (std::path::absolute(&resolved)?, std::path::absolute(dir)?);
    if abs != old && !abs.join("ferry.db").exists() && old.join("ferry.db").exists() {
        anyhow::bail!(
            "data_dir {} in {} is relative to the file's directory, {}, which holds no instance; \
             the instance at {} (relative to the current directory) is not used: \
             write its absolute path as data_dir (or move it)",
            dir.display(),
            file.display(),
            abs.display(),
            old.display()
        );
    }
    Ok(resolved)
}

/// The feeds and replications a configuration file declares, with every
/// `token_file` (relative to the file) and `token_env` resolved into
/// `token`.
///
/// Errors: a token file that cannot be read or is empty, a variable that
/// is unset or empty, or both given; each naming the declaration's line.
pub fn declarations(
    file: &Path,
    feeds: &[FeedDecl],
    replications: &[ReplicationDecl],
    prune: bool,
) -> anyhow::Result<Declarations> {
    let base = file.parent().unwrap_or(Path::new("."));
    let mut out = Declarations {
        prune,
        feeds: feeds.to_vec(),
        replications: Vec::new(),
    };
    for r in replications {
        let mut r = r.clone();
        let at = || {
            let line = r.line.map(|l| format!(" line {l}")).unwrap_or_default();
            format!("{}{line}: replication {}", file.display(), r.name)
        };
        resolve_token(&mut r.token, &mut r.token_file, &mut r.token_env, base).with_context(at)?;
        // NaN and infinities do not survive the JSON that carries this to
        // a running instance (`config apply`): refused here, as the
        // instance refuses any share outside 0..=1.
        if let Some(g) = &r.delete_guard
            && !g.max_share.is_finite()
        {
            anyhow::bail!(
                "{}: the delete guard's share must be between 0 and 1 (got {}); nothing was changed",
                at(),
                g.max_share
            );
        }
        let (name, line) = (r.name.clone(), r.line);
        for b in &mut r.blob_sources {
            let at = || {
                let line = b.line.or(line).map(|l| format!(" line {l}")).unwrap_or_default();
                format!(
                    "{}{line}: replication {name}, blob source {}",
                    file.display(),
                    b.url
                )
            };
            resolve_token(&mut b.token, &mut b.token_file, &mut b.token_env, base).with_context(at)?;
        }
        out.replications.push(r);
    }
    Ok(out)
}

/// Resolves a declaration's secret: a `token_file` (relative to `base`)
/// or a `token_env` becomes `token`; both are then empty.
///
/// Errors: more than one of the three given, or the file or variable
/// cannot give a token ([`read_token_file`], [`read_token_env`]).
fn resolve_token(
    token: &mut Option<String>,
    file: &mut Option<String>,
    env: &mut Option<String>,
    base: &Path,
) -> anyhow::Result<()> {
    if [token.is_some(), file.is_some(), env.is_some()]
        .iter()
        .filter(|g| **g)
        .count()
        > 1
    {
        anyhow::bail!("give one of token, token_file and token_env");
    }
    if let Some(f) = file.take() {
        *token = Some(read_token_file(&base.join(f))?);
    }
    if let Some(var) = env.take() {
        *token = Some(read_token_env(&var)?);
    }
    Ok(())
}

/// Largest configuration file read (bytes): as large as the body of
/// `PUT /api/v1/config` may be, which `ferry config apply` sends it as.
pub const MAX_CONFIG_FILE: u64 = 1 << 20;
/// Largest file a secret is read from (`token_file`,
/// `secret_access_key_file`), in bytes. Such files are regular files
/// (read again on SIGHUP, as the configuration file is; a FIFO or a device
/// in their place is refused instead of holding the reload).
pub const MAX_SECRET_FILE: u64 = 64 << 10;

/// The text of `path`, at most `limit` bytes of UTF-8, read no further
/// than `limit` (a path to `/dev/zero`, a file grown huge by mistake).
/// With `regular_only` it must be a regular file, opened without waiting
/// (`O_NONBLOCK`), so that a FIFO or a device named in its place is
/// refused at once instead of blocking the reader (the server re-reading
/// its file on SIGHUP); otherwise a pipe is read as it comes (`<(…)`).
///
/// Errors: it cannot be opened or read, is a directory (or, with
/// `regular_only`, anything but a regular file), holds more than `limit`
/// bytes, or is not UTF-8.
pub fn read_small_file(path: &Path, limit: u64, regular_only: bool) -> anyhow::Result<String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    if regular_only {
        options.custom_flags(i32::try_from(rustix::fs::OFlags::NONBLOCK.bits()).unwrap_or(0));
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        anyhow::bail!("a directory, not a file");
    }
    if regular_only && !meta.is_file() {
        anyhow::bail!("not a regular file (a FIFO, socket or device)");
    }
    if meta.is_file() && meta.len() > limit {
        anyhow::bail!("{} bytes, more than the {limit} bytes allowed", meta.len());
    }
    let mut bytes = Vec::with_capacity(if meta.is_file() { meta.len() as usize } else { 0 });
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        anyhow::bail!("more than the {limit} bytes allowed");
    }
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("not UTF-8 text"))
}

/// A TOML error as `line L, column C: what`, without the excerpt of the
/// file the parser's own message quotes: the line may hold a secret (a
/// misspelled `token = "fst_…"`), and messages reach logs.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let what = e.message().trim().replace('\n', "; ");
    match e.span() {
        Some(span) => {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|b| **b == b'\n').count() + 1;
            let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
            format!("TOML parse error at line {line}, column {column}: {what}")
        }
        None => format!("TOML parse error: {what}"),
    }
}

/// A sync token from a `token_file`: its contents, trimmed.
///
/// Errors: the file cannot be read, or holds only white space.
fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let text = read_small_file(path, MAX_SECRET_FILE, true)
        .with_context(|| format!("reading token_file {}", path.display()))?;
    let t = text.trim();
    if t.is_empty() {
        anyhow::bail!("token_file {} is empty", path.display());
    }
    Ok(t.to_string())
}

/// A sync token from the variable a `token_env` names.
///
/// Errors: the variable is unset or empty.
fn read_token_env(var: &str) -> anyhow::Result<String> {
    match std::env::var(var) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => anyhow::bail!("token_env {var} is not set"),
    }
}

impl Config {
    /// This configuration's declarations, secrets resolved (see
    /// [`declarations`]); `None` when it was not read from a file.
    pub fn declarations(&self) -> anyhow::Result<Option<Declarations>> {
        let Some(file) = &self.source else {
            return Ok(None);
        };
        declarations(file, &self.feeds, &self.replications, self.prune).map(Some)
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

    #[test]
    fn blob_store_defaults_to_the_folder_and_takes_s3_settings() {
        let cfg: Config = toml::from_str("").unwrap();
        assert!(matches!(cfg.blob_store, BlobStoreConfig::Fs));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s3-secret"), "s3cr3t\n").unwrap();
        let cfg: Config = toml::from_str(
            r#"
            [blob_store]
            type = "s3"
            endpoint = "http://127.0.0.1:9000"
            bucket = "blobs"
            path_style = true
            allow_http = true
            prefix = "prod/"
            access_key_id = "AKIA1"
            secret_access_key_file = "s3-secret"
            part_size_mib = 16
            "#,
        )
        .unwrap();
        let BlobStoreConfig::S3(s3) = &cfg.blob_store else {
            panic!("not s3: {:?}", cfg.blob_store);
        };
        let resolved = s3.resolve(Some(&dir.path().join("ferry.toml"))).unwrap();
        assert_eq!(resolved.region, "us-east-1");
        assert_eq!(resolved.access_key_id.as_deref(), Some("AKIA1"));
        assert_eq!(resolved.secret_access_key.as_deref(), Some("s3cr3t"));
        assert_eq!(resolved.part_size, 16 << 20);
        assert!(
            !format!("{resolved:?}").contains("s3cr3t"),
            "the secret is never printed"
        );
        assert_eq!(resolved.describe(), "bucket blobs at http://127.0.0.1:9000");
        assert!(
            toml::from_str::<Config>("[blob_store]\ntype = \"s3\"\nbucket = \"b\"\nbuckt = 1").is_err(),
            "typos must not pass silently"
        );
        assert!(toml::from_str::<Config>("[blob_store]\ntype = \"gcs\"").is_err());
    }

    #[test]
    fn blob_store_variables_override_the_file() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        // From nothing: the variables alone make an S3 store.
        let mut b = BlobStoreConfig::Fs;
        b.apply_env(vars(&[
            ("FERRY_BLOB_STORE", "s3"),
            ("FERRY_S3_ENDPOINT", "http://127.0.0.1:9000"),
            ("FERRY_S3_BUCKET", "node-blobs"),
            ("FERRY_S3_PATH_STYLE", "true"),
            ("FERRY_S3_ALLOW_HTTP", "true"),
            ("FERRY_S3_PART_SIZE_MIB", "6"),
        ]))
        .unwrap();
        let BlobStoreConfig::S3(s3) = &b else {
            panic!("{b:?}")
        };
        let r = s3.resolve(None).unwrap();
        assert_eq!(r.describe(), "bucket node-blobs at http://127.0.0.1:9000");
        assert!(r.path_style && r.allow_http);
        assert_eq!((r.region.as_str(), r.part_size), ("us-east-1", 6 << 20));
        // Over a file's bucket: only what is set changes.
        let mut b: Config =
            toml::from_str("[blob_store]\ntype = \"s3\"\nbucket = \"b\"\nprefix = \"p/\"").unwrap();
        b.blob_store
            .apply_env(vars(&[("FERRY_S3_BUCKET", "other")]))
            .unwrap();
        let BlobStoreConfig::S3(s3) = &b.blob_store else {
            panic!()
        };
        assert_eq!((s3.bucket.as_str(), s3.prefix.as_str()), ("other", "p/"));
        // Back to the folder, whatever the file says.
        b.blob_store
            .apply_env(vars(&[("FERRY_BLOB_STORE", "fs")]))
            .unwrap();
        assert!(matches!(b.blob_store, BlobStoreConfig::Fs));
        // Mistakes are named.
        let err = BlobStoreConfig::Fs
            .apply_env(vars(&[("FERRY_S3_BUCKET", "x")]))
            .unwrap_err();
        assert!(err.to_string().contains("FERRY_BLOB_STORE=s3"), "{err}");
        let err = BlobStoreConfig::Fs
            .apply_env(vars(&[("FERRY_BLOB_STORE", "s3")]))
            .unwrap_err();
        assert!(err.to_string().contains("FERRY_S3_BUCKET"), "{err}");
        assert!(
            BlobStoreConfig::Fs
                .apply_env(vars(&[("FERRY_BLOB_STORE", "gcs")]))
                .is_err()
        );
        let err = BlobStoreConfig::Fs
            .apply_env(vars(&[
                ("FERRY_BLOB_STORE", "s3"),
                ("FERRY_S3_BUCKET", "b"),
                ("FERRY_S3_PATH_STYLE", "yes"),
            ]))
            .unwrap_err();
        assert!(err.to_string().contains("FERRY_S3_PATH_STYLE"), "{err}");
    }

    /// A file that does not parse is refused naming the line and column,
    /// never quoting it: the line may hold a secret (a misspelled or
    /// malformed `token = "fst_…"`), and the message reaches logs.
    #[test]
    fn a_parse_error_names_the_line_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ferry.toml");
        let secret = "fst_0123456789abcdef_s3cr3ts3cr3ts3cr3ts3cr3t";
        let head = "[[replications]]\nname = \"r\"\nfeeds = [\"a\"]\noutgoing = \"http://hub:8765\"\nmode = \"pull\"\n";
        for (bad, what) in [
            (format!("tokn = \"{secret}\"\n"), "unknown field `tokn`"),
            (format!("token = {secret}\n"), "line 6"),
            (format!("token = [\"{secret}\"]\n"), "invalid type"),
        ] {
            std::fs::write(&file, format!("{head}{bad}")).unwrap();
            let e = format!("{:#}", Config::load(Some(&file)).unwrap_err());
            assert!(e.contains("line 6") && e.contains(what), "{e}");
            assert!(!e.contains("s3cr3t"), "the secret is quoted: {e}");
        }
    }

    /// The size limit holds for any kind of file; `reload` (SIGHUP)
    /// refuses what is not a regular file, `load` reads a pipe.
    #[test]
    fn config_files_are_read_within_limits() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ferry.toml");
        std::fs::write(&file, format!("{}\n", "# pad\n".repeat(200_000))).unwrap();
        let e = format!("{:#}", Config::load(Some(&file)).unwrap_err());
        assert!(e.contains("bytes allowed"), "{e}");
        let zero = std::path::Path::new("/dev/zero");
        let e = format!("{:#}", Config::load(Some(zero)).unwrap_err());
        assert!(e.contains("more than the 1048576 bytes allowed"), "{e}");
        let e = format!("{:#}", Config::reload(zero).unwrap_err());
        assert!(e.contains("not a regular file"), "{e}");
        let e = format!("{:#}", Config::load(Some(dir.path())).unwrap_err());
        assert!(e.contains("a directory"), "{e}");
    }

    /// `line` is the reader's note, not a setting: the file may not set
    /// it, and an unknown key's message does not offer it.
    #[test]
    fn the_line_note_is_not_a_setting() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ferry.toml");
        let load = |text: &str| {
            std::fs::write(&file, text).unwrap();
            format!("{:#}", Config::load(Some(&file)).unwrap_err())
        };
        let e = load("[[feeds]]\nname = \"files\"\ntype = \"assets\"\nprivat = true\n");
        assert!(
            e.contains("unknown field `privat`") && e.contains("`private`"),
            "{e}"
        );
        assert!(!e.contains("`line`"), "{e}");
        let e = load(
            "[[feeds]]\nname = \"a\"\ntype = \"assets\"\n\n[[feeds]]\nname = \"b\"\ntype = \"npm\"\nline = 1\n",
        );
        assert!(e.contains("line 5: `line` is not a setting"), "{e}");
        let e = load(
            "[[replications]]\nname = \"r\"\nfeeds = [\"a\"]\noutgoing = \"http://hub:8765\"\nmode = \"pull\"\n\
             [[replications.blob_sources]]\nurl = \"http://cache:8765\"\nline = 2\n",
        );
        assert!(e.contains("line 1: `line` is not a setting"), "{e}");
    }

    #[test]
    fn blob_source_tokens_come_from_files_and_variables_never_the_export() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spoke.toml");
        std::fs::write(dir.path().join("cache.token"), "fst_cache\n").unwrap();
        let cfg: Config = toml::from_str(
            r#"
            [[replications]]
            name = "from-hub"
            feeds = ["files"]
            outgoing = "http://hub:8765"
            token = "fst_hub"
            mode = "pull"

            [[replications.blob_sources]]
            url = "http://cache:8765"
            token_file = "cache.token"

            [[replications.blob_sources]]
            url = "http://neighbour:8765"
            token_env = "FERRY_TEST_NEIGHBOUR_TOKEN_UNSET"
            "#,
        )
        .unwrap();
        let err = declarations(&file, &cfg.feeds, &cfg.replications, false).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("blob source http://neighbour:8765")
                && text.contains("FERRY_TEST_NEIGHBOUR_TOKEN_UNSET"),
            "{text}"
        );
        let mut one = cfg.replications.clone();
        one[0].blob_sources.truncate(1);
        let d = declarations(&file, &cfg.feeds, &one, false).unwrap();
        let b = &d.replications[0].blob_sources[0];
        assert_eq!(
            (b.token.as_deref(), b.token_file.as_deref()),
            (Some("fst_cache"), None)
        );
        one[0].blob_sources[0].token = Some("fst_also".into());
        let both = declarations(&file, &cfg.feeds, &one, false).unwrap_err();
        assert!(format!("{both:#}").contains("one of token, token_file and token_env"));
    }

    #[test]
    fn parses_limits_and_tls() {
        let cfg: Config = toml::from_str(
            r#"
            header_read_timeout_secs = 5
            keep_alive_timeout_secs = 10
            body_timeout_secs = 20
            max_connections = 100
            shutdown_grace_secs = 5
            tls_cert = "/etc/ferry/cert.pem"
            tls_key = "/etc/ferry/key.pem"
            tls_ca_file = "/etc/ferry/ca.pem"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.header_read_timeout_secs, 5);
        assert_eq!(cfg.keep_alive_timeout_secs, 10);
        assert_eq!(cfg.body_timeout_secs, 20);
        assert_eq!(cfg.max_connections, Some(100));
        assert_eq!(cfg.shutdown_grace_secs, 5);
        assert_eq!(cfg.tls_ca_file.as_deref(), Some(Path::new("/etc/ferry/ca.pem")));
        let d = Config::default();
        assert_eq!(
            (
                d.header_read_timeout_secs,
                d.keep_alive_timeout_secs,
                d.body_timeout_secs
            ),
            (30, 75, 60)
        );
        assert_eq!(d.max_connections, None, "derived from the open-file limit");
        assert_eq!(d.shutdown_grace_secs, 30);
    }
}

/// The `[blob_store]` table: `type = "fs"` (the default, `data_dir/blobs`)
/// or `type = "s3"` with the bucket's settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BlobStoreConfig {
    #[default]
    Fs,
    S3(S3Settings),
}

/// An S3-compatible bucket for blobs. Credentials come from
/// `access_key_id`/`secret_access_key_file` when given, else from the usual
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`
/// variables; a secret never has to be in this file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// The S3 API's URL (`https://s3.example.net`, `http://127.0.0.1:9000`);
    /// unset for AWS itself (by region).
    pub endpoint: Option<String>,
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style requests (`endpoint/bucket/key`), which most
    /// self-hosted servers need.
    #[serde(default)]
    pub path_style: bool,
    /// Prepended to every object key (`ferry/`).
    #[serde(default)]
    pub prefix: String,
    /// Allow an `http://` endpoint.
    #[serde(default)]
    pub allow_http: bool,
    pub access_key_id: Option<String>,
    /// A file holding the secret access key (relative to this file).
    pub secret_access_key_file: Option<PathBuf>,
    /// Multipart part size in MiB (at least 5; default 8).
    pub part_size_mib: Option<usize>,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// The variables that override `[blob_store]`, with the S3 setting each
/// sets (see [`BlobStoreConfig::apply_env`]).
pub const S3_ENV: [&str; 7] = [
    "FERRY_S3_ENDPOINT",
    "FERRY_S3_BUCKET",
    "FERRY_S3_REGION",
    "FERRY_S3_PATH_STYLE",
    "FERRY_S3_PREFIX",
    "FERRY_S3_ALLOW_HTTP",
    "FERRY_S3_PART_SIZE_MIB",
];

impl BlobStoreConfig {
    /// Applies the environment over the file's `[blob_store]`:
    /// `FERRY_BLOB_STORE` (`fs` or `s3`) picks the type (`s3` keeps the
    /// file's bucket settings, if any), and `FERRY_S3_ENDPOINT`,
    /// `FERRY_S3_BUCKET`, `FERRY_S3_REGION`, `FERRY_S3_PATH_STYLE`,
    /// `FERRY_S3_PREFIX`, `FERRY_S3_ALLOW_HTTP` and
    /// `FERRY_S3_PART_SIZE_MIB` override the bucket's settings one by one.
    /// `env` looks a variable up (None when unset or empty).
    ///
    /// Errors: an unknown type, an unparsable value, `FERRY_S3_*` set while
    /// the blob store is the folder, or an S3 store without a bucket.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        match env("FERRY_BLOB_STORE").as_deref() {
            None => {}
            Some("fs") => *self = BlobStoreConfig::Fs,
            Some("s3") => {
                if matches!(self, BlobStoreConfig::Fs) {
                    *self = BlobStoreConfig::S3(S3Settings {
                        endpoint: None,
                        bucket: String::new(),
                        region: default_region(),
                        path_style: false,
                        prefix: String::new(),
                        allow_http: false,
                        access_key_id: None,
                        secret_access_key_file: None,
                        part_size_mib: None,
                    });
                }
            }
            Some(other) => anyhow::bail!("FERRY_BLOB_STORE={other:?}: expected fs or s3"),
        }
        let s3 = match self {
            BlobStoreConfig::S3(s3) => s3,
            BlobStoreConfig::Fs => {
                if let Some(k) = S3_ENV.iter().find(|k| env(k).is_some()) {
                    anyhow::bail!(
                        "{k} is set but blobs are kept in the data directory: set FERRY_BLOB_STORE=s3 \
                         (or [blob_store] type = \"s3\") to keep them in a bucket"
                    );
                }
                return Ok(());
            }
        };
        let flag = |k: &str, v: String| -> anyhow::Result<bool> {
            v.parse().with_context(|| format!("{k}={v:?} (true or false)"))
        };
        if let Some(v) = env("FERRY_S3_ENDPOINT") {
            s3.endpoint = Some(v);
        }
        if let Some(v) = env("FERRY_S3_BUCKET") {
            s3.bucket = v;
        }
        if let Some(v) = env("FERRY_S3_REGION") {
            s3.region = v;
        }
        if let Some(v) = env("FERRY_S3_PATH_STYLE") {
            s3.path_style = flag("FERRY_S3_PATH_STYLE", v)?;
        }
        if let Some(v) = env("FERRY_S3_PREFIX") {
            s3.prefix = v;
        }
        if let Some(v) = env("FERRY_S3_ALLOW_HTTP") {
            s3.allow_http = flag("FERRY_S3_ALLOW_HTTP", v)?;
        }
        if let Some(v) = env("FERRY_S3_PART_SIZE_MIB") {
            s3.part_size_mib = Some(
                v.parse()
                    .with_context(|| format!("FERRY_S3_PART_SIZE_MIB={v:?}"))?,
            );
        }
        if s3.bucket.is_empty() {
            anyhow::bail!("the S3 blob store needs a bucket: [blob_store] bucket or FERRY_S3_BUCKET");
        }
        Ok(())
    }
}

impl S3Settings {
    /// The store's configuration, credentials resolved (`source`: the
    /// configuration file, for a relative `secret_access_key_file`).
    pub fn resolve(&self, source: Option<&Path>) -> anyhow::Result<ferry_store::S3Config> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let secret = match &self.secret_access_key_file {
            Some(f) => {
                let path = match source.and_then(Path::parent) {
                    Some(dir) if f.is_relative() => dir.join(f),
                    _ => f.clone(),
                };
                let text = read_small_file(&path, MAX_SECRET_FILE, true).with_context(|| {
                    format!("reading blob_store.secret_access_key_file {}", path.display())
                })?;
                Some(text.trim().to_string())
            }
            None => env("AWS_SECRET_ACCESS_KEY"),
        };
        Ok(ferry_store::S3Config {
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            path_style: self.path_style,
            prefix: self.prefix.clone(),
            allow_http: self.allow_http,
            access_key_id: self.access_key_id.clone().or_else(|| env("AWS_ACCESS_KEY_ID")),
            secret_access_key: secret,
            session_token: env("AWS_SESSION_TOKEN"),
            part_size: self.part_size_mib.unwrap_or(0) << 20,
        })
    }
}
