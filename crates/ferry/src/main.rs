//! The `ferry` binary: `ferry serve` runs an instance; the other commands
//! talk to a running instance over its management API.

mod client;
mod config;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ferry", version, about = "Package repository server that replicates feeds between instances")]
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
    /// Collect blobs that no item references, now.
    Gc(Conn),
}

/// How to reach a running instance.
#[derive(Args, Clone)]
pub struct Conn {
    #[arg(long, env = "FERRY_URL", default_value = "http://127.0.0.1:8765", global = true)]
    url: String,
    #[arg(long = "api-key", env = "FERRY_API_KEY", global = true, hide_env_values = true)]
    api_key: Option<String>,
}

#[derive(Subcommand)]
enum FeedCmd {
    /// Create a feed.
    Create {
        name: String,
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
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, data_dir, listen } => {
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
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
