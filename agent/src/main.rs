//! `qianzhi`: the agent binary. Parses the command line, sets up logging,
//! loads the config and runs; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use agent::config::{self, Config, LogFormat};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Exit codes (sysexits.h).
const EX_USAGE: u8 = 64;
const EX_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(name = "qianzhi", version, about = "Qianzhi (前置): front-end exchange agent")]
struct Cli {
    /// The config file.
    #[arg(long, short, global = true, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent until SIGTERM or SIGINT.
    Run,
    /// Validate the config, the folders and a TLS handshake with the hub.
    Check,
    /// Show the running agent's status, read from its health port.
    Status {
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
        /// The health port to ask (default: from the config, else 127.0.0.1:9720).
        #[arg(long)]
        addr: Option<String>,
    },
    /// Certificates.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Make a development CA, a hub certificate and agency certificates.
    Dev {
        #[arg(long)]
        out: PathBuf,
        /// Agency codes to issue client certificates for.
        #[arg(long = "agency", required = true)]
        agencies: Vec<String>,
        /// DNS names or IP addresses of the hub.
        #[arg(long = "hub-name", default_values = ["localhost", "127.0.0.1"])]
        hub_names: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(EX_USAGE),
            };
        }
    };
    match cli.command {
        Command::Pki {
            command:
                PkiCommand::Dev {
                    out,
                    agencies,
                    hub_names,
                },
        } => match agent::pki::write_dev(&out, &agencies, &hub_names) {
            Ok(files) => {
                for f in files {
                    println!("wrote {}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("qianzhi: pki dev: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Status { json, addr } => status(&cli.config, json, addr),
        Command::Check => {
            let config = match load(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            runtime().block_on(async {
                let mut ok = true;
                for f in agent::check::run(&config).await {
                    match f.outcome {
                        Ok(()) => println!("ok    {}", f.what),
                        Err(e) => {
                            ok = false;
                            println!("FAIL  {}: {e}", f.what);
                        }
                    }
                }
                if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
            })
        }
        Command::Run => {
            let config = match load(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_tracing(config.log_format, &config.log_level);
            runtime().block_on(run(config))
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("qianzhi: config error: {e}");
        ExitCode::from(EX_CONFIG)
    })
}

fn runtime() -> tokio::runtime::Runtime {
    // Building a runtime fails only when the OS refuses threads; nothing
    // can run then.
    #[allow(clippy::expect_used)]
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("qianzhi")
        .build()
        .expect("cannot start the async runtime")
}

fn init_tracing(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
    }
}

async fn run(config: Config) -> ExitCode {
    let grace = config.shutdown_grace;
    let token = CancellationToken::new();
    let tasks = TaskTracker::new();
    if let Err(e) = agent::start(config, &tasks, token.clone()).await {
        eprintln!("qianzhi: cannot start: {e}");
        return ExitCode::FAILURE;
    }
    tokio::select! {
        () = agent::signal::shutdown() => info!("received shutdown signal"),
        () = token.cancelled() => warn!("fatal task error; shutting down"),
    }
    token.cancel();
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        warn!(?grace, "graceful shutdown timed out");
    }
    info!("stopped");
    ExitCode::SUCCESS
}

/// `qianzhi status`: one GET of /status on the local health port.
fn status(config_path: &std::path::Path, json: bool, addr: Option<String>) -> ExitCode {
    let addr = addr.unwrap_or_else(|| {
        Config::load(config_path).map_or_else(|_| "127.0.0.1:9720".to_owned(), |c| c.health_listen.to_string())
    });
    let body = match agent::health::fetch(&addr, "/status") {
        Ok(b) => b,
        Err(e) => {
            eprintln!("qianzhi: cannot read status from {addr}: {e} (is the agent running?)");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    match serde_json::from_str::<agent::health::Status>(&body) {
        Ok(s) => {
            print!("{}", agent::health::render(&s));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qianzhi: unexpected status document: {e}");
            ExitCode::FAILURE
        }
    }
}
