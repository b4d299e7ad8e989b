//! The `ferry` binary: `ferry serve` runs an instance; the other commands
//! talk to a running instance over its management API.

/// `println!` for client commands: output to a reader that went away
/// (`ferry feed list | head -1`) is dropped quietly (see [`out`]); any
/// other write error is returned (`?`).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))?
    };
}

/// `eprintln!` that never panics: a message to a closed standard error is
/// lost.
macro_rules! esay {
    ($($arg:tt)*) => {
        $crate::out::eline(format_args!($($arg)*))
    };
}

/// jemalloc as the process's allocator: a cached index request (npm
/// packument, PyPI simple page) allocates and frees a few dozen small
/// objects, and under `wrk` the C library's allocator took about a tenth
/// of the server's samples; with jemalloc the same binary answered 11–17%
/// more such requests per second (bench/README, "Allocator"), while the
/// upload-memory budgets (`e2e_upload_memory`) still hold.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod client;
mod config;
mod listener;
mod serve;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Package repository server that replicates feeds between instances"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an instance.
    Serve {
        #[arg(long, env = "FERRY_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Manage feeds.
    #[command(subcommand)]
    Feed(FeedCmd),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Collect blobs that no item references, now (a blob stays at least an
    /// hour after it was stored, so that an upload or replication can name
    /// it in an item first).
    Gc(Conn),
    /// Re-hash stored blobs and report missing or corrupt ones; exit
    /// non-zero while any is damaged.
    Fsck {
        /// Fetch verified copies of damaged blobs from replication peers
        /// (the other side of outgoing replications of any mode).
        #[arg(long)]
        repair: bool,
        /// Check only this share of blobs, chosen at random (0.0 to 1.0).
        #[arg(long, default_value_t = 1.0, value_parser = parse_sample, allow_hyphen_values = true)]
        sample: f64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Replicate feeds between instances.
    #[command(subcommand)]
    Replication(ReplCmd),
    /// Air-gap bundles: a feed's changes in a file, for instances without a network path.
    #[command(subcommand)]
    Bundle(BundleCmd),
    /// Configuration as code: feeds and replications declared in a TOML file.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Packages of rpm feeds.
    #[command(subcommand)]
    Rpm(RpmCmd),
    /// This instance's identity.
    #[command(subcommand)]
    Instance(InstanceCmd),
}

#[derive(Subcommand)]
pub enum InstanceCmd {
    /// Print the instance id (and the one the next start takes, if renewed).
    Show {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Give this instance a new random id, taken at its next start: for a
    /// copy of another instance's data directory (a cloned machine, a
    /// backup restored beside its original), which must not speak as that
    /// instance.
    NewId {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum RpmCmd {
    /// Delete one package of an rpm feed (as `DELETE /rpm/FEED/package/NAME/EVR/ARCH`).
    Delete {
        feed: String,
        name: String,
        /// `[EPOCH:]VERSION-RELEASE`, e.g. `1.0-1` or `2:1.0-1.el9`.
        evr: String,
        arch: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Apply FILE's [[feeds]] and [[replications]] to a running instance:
    /// what is declared is created or updated; what is not is left alone
    /// unless the file says prune = true. Nothing changes if any
    /// declaration cannot be applied (the error names its line).
    Apply {
        file: std::path::PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print the running feeds and replications as such a file (outgoing
    /// tokens as token_env = "FERRY_TOKEN_<NAME>", never the secret).
    Export {
        #[command(flatten)]
        conn: Conn,
    },
    /// Make a new sync token offline: the token for the outgoing side's
    /// token_file, and the accept_tokens entry for the incoming side's file.
    Token,
}

#[derive(Subcommand)]
pub enum BundleCmd {
    /// Write the feed's changes after --since (default: everything) to a file.
    Export {
        feed: String,
        /// A change-log position: the previous bundle's `until`.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        since: i64,
        #[arg(long)]
        out: std::path::PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// Apply a bundle to a feed; importing twice is harmless.
    Import {
        feed: String,
        file: std::path::PathBuf,
        /// Apply the bundle even if it deletes more than the delete guard
        /// allows (over 10% and over 100 of the feed's items).
        #[arg(long)]
        confirm_deletes: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum ReplCmd {
    /// Configure a replication on this instance.
    Create {
        name: String,
        /// LOCAL[=REMOTE] feed pair (repeatable).
        #[arg(long = "feed", required = true)]
        feeds: Vec<String>,
        /// The other instance connects here with a sync token.
        #[arg(long, conflicts_with = "outgoing", required_unless_present = "outgoing")]
        incoming: bool,
        /// Connect to the other instance at this base URL.
        #[arg(long, requires = "token")]
        outgoing: Option<String>,
        /// Sync token generated on the other (incoming) instance.
        #[arg(long)]
        token: Option<String>,
        #[arg(long, value_parser = ["mirror", "pull", "push", "custom"])]
        mode: String,
        #[arg(long)]
        pull_missing: bool,
        #[arg(long)]
        push_missing: bool,
        #[arg(long)]
        delete_local: bool,
        #[arg(long)]
        delete_remote: bool,
        #[arg(long = "include")]
        include: Vec<String>,
        #[arg(long = "exclude")]
        exclude: Vec<String>,
        /// Seconds between scheduled executions (default 60).
        #[arg(long)]
        interval: Option<u64>,
        /// Carry download counts with items.
        #[arg(long)]
        carry_downloads: bool,
        /// Cap blob transfers at this many bytes per second.
        #[arg(long)]
        bandwidth_limit: Option<u64>,
        /// Pulling: blobs up to this many bytes travel inline with the
        /// pages of changes (default 65536; 0 turns it off).
        #[arg(long)]
        inline_max_bytes: Option<u64>,
        #[command(flatten)]
        sources: BlobSourceArgs,
        #[command(flatten)]
        conn: Conn,
    },
    /// Change a replication's URL, token, filters, interval, download counts
    /// or bandwidth cap (mode, feeds and direction stay; a narrower filter
    /// never deletes anything).
    Update {
        name: String,
        /// Outgoing: the other instance's new base URL.
        #[arg(long)]
        outgoing: Option<String>,
        /// Outgoing: a new sync token generated on the other instance.
        #[arg(long)]
        token: Option<String>,
        /// Replace the include filters (repeatable).
        #[arg(long = "include")]
        include: Vec<String>,
        /// Replace the exclude filters (repeatable).
        #[arg(long = "exclude")]
        exclude: Vec<String>,
        /// Remove every include and exclude filter.
        #[arg(long, conflicts_with_all = ["include", "exclude"])]
        no_filters: bool,
        /// Seconds between scheduled executions.
        #[arg(long)]
        interval: Option<u64>,
        /// Carry download counts with items (true or false).
        #[arg(long)]
        carry_downloads: Option<bool>,
        /// Cap blob transfers at this many bytes per second; 0 removes the cap.
        #[arg(long)]
        bandwidth_limit: Option<u64>,
        /// Pulling: blobs up to this many bytes travel inline with the
        /// pages of changes; 0 turns it off.
        #[arg(long)]
        inline_max_bytes: Option<u64>,
        #[command(flatten)]
        sources: BlobSourceArgs,
        /// Remove every blob source.
        #[arg(long, conflicts_with = "blob_sources")]
        no_blob_sources: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Generate a sync token for an incoming replication (printed once).
    Token {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke one sync token of an incoming replication.
    Revoke {
        name: String,
        token_id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Start an execution now.
    Run {
        name: String,
        /// Wait for the execution to end; exit non-zero if it failed.
        #[arg(long)]
        wait: bool,
        /// Go ahead with deletions the guard stopped.
        #[arg(long)]
        confirm_deletes: bool,
        /// Compare every item instead of reading changes since the cursor.
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop the running execution (it ends with outcome `stopped`; the
    /// replication stays scheduled and goes on from there next time).
    Stop {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List replications with their state, last execution, lag and next run.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a replication's executions, newest first.
    Executions {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show the instances that connect to an incoming replication: name,
    /// versions, address, last contact, lag per feed, last error, stale.
    Peers {
        name: String,
        #[arg(long)]
        json: bool,
        /// Forget this instance (by id) instead of listing: a spoke that
        /// will not come back. It is listed again if it connects again.
        #[arg(long, value_name = "INSTANCE")]
        forget: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show what an execution would copy and delete, changing nothing.
    Plan {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Exit 0 iff every feed pair holds the same state on both ends.
    Verify {
        name: String,
        /// Repair drift with a full comparison, then verify again. On this
        /// side of a pull (a replica), repair puts back the other side's
        /// version of everything changed or deleted only here.
        #[arg(long)]
        repair: bool,
        /// With --repair on a replica: also delete items that exist only
        /// here (reported, not deleted, without this).
        #[arg(long, requires = "repair")]
        confirm_deletes: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a replication (items stay).
    Delete {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show the incoming side's replication log; --level changes its minimum level.
    Log {
        #[arg(long)]
        level: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Blob sources of an outgoing replication: other instances (a site
/// cache, a neighbouring spoke) asked first for the blobs it pulls.
#[derive(Args, Clone, Default)]
pub struct BlobSourceArgs {
    /// Another instance to take blobs from before the other side
    /// (repeatable, asked in order); each needs a --blob-source-token.
    #[arg(long = "blob-source", value_name = "URL")]
    blob_sources: Vec<String>,
    /// A sync token of an incoming replication on the blob source named
    /// at the same position.
    #[arg(long = "blob-source-token", value_name = "TOKEN")]
    blob_source_tokens: Vec<String>,
}

impl BlobSourceArgs {
    /// The sources as the API takes them (`[{url, token}]`); `None` when
    /// none were named.
    ///
    /// Errors: a different number of URLs and tokens.
    pub fn to_json(&self) -> anyhow::Result<Option<serde_json::Value>> {
        if self.blob_sources.len() != self.blob_source_tokens.len() {
            anyhow::bail!(
                "{} --blob-source and {} --blob-source-token given: name one token per source, in the same order",
                self.blob_sources.len(),
                self.blob_source_tokens.len()
            );
        }
        if self.blob_sources.is_empty() {
            return Ok(None);
        }
        Ok(Some(serde_json::Value::Array(
            self.blob_sources
                .iter()
                .zip(&self.blob_source_tokens)
                .map(|(url, token)| serde_json::json!({ "url": url, "token": token }))
                .collect(),
        )))
    }
}

/// How to reach a running instance.
#[derive(Args, Clone)]
pub struct Conn {
    #[arg(
        long,
        env = "FERRY_URL",
        default_value = "http://127.0.0.1:8765",
        global = true
    )]
    url: String,
    #[arg(
        long = "api-key",
        env = "FERRY_API_KEY",
        global = true,
        hide_env_values = true
    )]
    api_key: Option<String>,
    /// PEM bundle of CA certificates trusted, besides the system's, for an
    /// https:// URL.
    #[arg(long = "tls-ca-file", env = "FERRY_TLS_CA_FILE", global = true)]
    tls_ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum FeedCmd {
    /// Create a feed.
    Create {
        name: String,
        /// assets, npm, pypi, oci, cargo, nuget, debian or rpm.
        #[arg(long = "type")]
        feed_type: String,
        #[arg(long)]
        private: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List feeds.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a feed and everything in it.
    Delete {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// The feed's signing key (debian and rpm feeds): import one, export the public part.
    #[command(subcommand)]
    Key(FeedKeyCmd),
}

#[derive(Subcommand)]
pub enum FeedKeyCmd {
    /// Replace the feed's signing key by an armored OpenPGP secret key read
    /// from FILE ("-": standard input), so every instance of a fleet signs
    /// with one key.
    Import {
        feed: String,
        file: std::path::PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print the feed's armored public signing key (dnf's gpgkey as is; for apt's signed-by:
    /// `gpg --dearmor`, or fetch /debian/FEED/key.gpg).
    Export {
        feed: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create an API key; prints its secret once.
    Create {
        name: String,
        #[arg(long, default_value = "read", value_parser = ["read", "write", "admin"])]
        permission: String,
        /// Limit the key to these feeds (repeatable); default: every feed.
        #[arg(long = "feed")]
        feeds: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List API keys (never their secrets).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke an API key.
    Delete {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Threads for blocking work (file and database access, hashing):
    // tokio's default of 512 unless FERRY_BLOCKING_THREADS says otherwise.
    let blocking = std::env::var("FERRY_BLOCKING_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(512);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(blocking)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            esay!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Tasks cut by the end of `serve` (connections closed past the grace
    // period) are dropped; blocking work still running is not waited for
    // long.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            esay!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

/// Standard output and error that a closed pipe does not turn into a panic,
/// and that another party's words cannot take over a terminal through.
///
/// Rust ignores SIGPIPE, so writing to a pipe whose reader has exited
/// (`ferry replication list | head -0`) fails with EPIPE, and `println!`
/// panics on that. Here the first EPIPE marks standard output as gone:
/// later output is dropped and the command goes on to its own exit status
/// (so `verify` still exits non-zero when feeds differ, saying why on
/// standard error). Messages to a closed standard error are dropped.
///
/// Lines print names and messages that came from a server, and through it
/// from other instances and clients (a peer's reported name, an error a
/// hub answered, a package's description): control characters other than
/// line breaks and tabs are shown as `?`, so an escape sequence in them
/// cannot move the cursor, retitle the window or hide what is printed.
pub mod out {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};

    static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

    /// `args` formatted, with control characters other than `\n` and `\t`
    /// (ESC, CR, BEL, DEL, the C1 range) replaced by `?`.
    pub fn printable(args: std::fmt::Arguments<'_>) -> String {
        let text = args.to_string();
        if !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return text;
        }
        text.chars()
            .map(|c| {
                if c.is_control() && c != '\n' && c != '\t' {
                    '?'
                } else {
                    c
                }
            })
            .collect()
    }

    /// Writes one line to standard output.
    ///
    /// Errors: a write error other than EPIPE (a full disk behind `>`).
    pub fn line(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
        if STDOUT_GONE.load(Ordering::Relaxed) {
            return Ok(());
        }
        let text = printable(args);
        let mut stdout = std::io::stdout().lock();
        match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                STDOUT_GONE.store(true, Ordering::Relaxed);
                Ok(())
            }
            r => r.map_err(|e| anyhow::anyhow!("writing to standard output: {e}")),
        }
    }

    /// Writes one line to standard error; failures are ignored.
    pub fn eline(args: std::fmt::Arguments<'_>) {
        let _ = writeln!(std::io::stderr().lock(), "{}", printable(args));
    }

    #[cfg(test)]
    mod tests {
        /// A hub's error text, a peer's name: shown, not obeyed.
        #[test]
        fn escape_sequences_are_shown_not_obeyed() {
            let hostile = "\u{1b}]0;owned\u{7}\u{1b}[2Jx\u{9b}31m\rover\u{7f}";
            let got = super::printable(format_args!("last error: {hostile}\n\tnext"));
            assert_eq!(got, "last error: ?]0;owned??[2Jx?31m?over?\n\tnext");
            let plain = "name\twith tab, ünïcode";
            assert_eq!(super::printable(format_args!("{plain}")), plain);
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            data_dir,
            listen,
        } => {
            let mut cfg = config::Config::load(config.as_deref())?;
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if let Some(l) = listen {
                cfg.listen = l;
            }
            init_logging(&cfg.log);
            serve::run(cfg).await
        }
        Command::Feed(cmd) => client::feed(cmd).await,
        Command::Key(cmd) => client::key(cmd).await,
        Command::Gc(conn) => client::gc(conn).await,
        Command::Fsck {
            repair,
            sample,
            json,
            conn,
        } => client::fsck(conn, repair, sample, json).await,
        Command::Replication(cmd) => client::replication(cmd).await,
        Command::Bundle(cmd) => client::bundle(cmd).await,
        Command::Config(cmd) => client::config(cmd).await,
        Command::Rpm(cmd) => client::rpm(cmd).await,
        Command::Instance(cmd) => client::instance(cmd).await,
    }
}

/// `fsck --sample`: a finite number from 0 to 1 (not NaN, inf or -1).
fn parse_sample(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("--sample must be a number from 0 to 1, not {s:?}")),
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}
