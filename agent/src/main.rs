//! `qianzhi`: the agent binary. Parses the command line, sets up logging,
//! loads the config and runs; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use agent::config::{self, Config, LogFormat};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

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
    /// Records kept for a person to fix: list, show, export, retry, discard.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// The outbox: acknowledge the recovery of a damaged outbox.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Database sources: install or remove the change-log triggers.
    Source {
        #[command(subcommand)]
        command: SourceCommand,
    },
    /// Certificates.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Says that an operator has read the report of a damaged outbox's
    /// recovery (and compared what was lost with the hub): /readyz is ready
    /// again. Works while the agent runs.
    Acknowledge,
}

/// Which entries a quarantine command is about.
#[derive(clap::Args)]
struct Filter {
    /// Only entries of this source.
    #[arg(long)]
    source: Option<String>,
    /// Only entries of this resource.
    #[arg(long)]
    resource: Option<String>,
    /// Only entries that broke this rule (a code such as CHECK_DIGIT).
    #[arg(long)]
    rule: Option<String>,
    /// Only these entries (by number).
    ids: Vec<i64>,
}

impl Filter {
    fn into_filter(self) -> agent::outbox::QuarantineFilter {
        agent::outbox::QuarantineFilter {
            ids: self.ids,
            source: self.source,
            resource: self.resource,
            rule: self.rule,
        }
    }
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// One line per entry.
    List {
        #[command(flatten)]
        filter: Filter,
    },
    /// Everything about one entry.
    Show { id: i64 },
    /// A CSV (in the source's encoding) to fix in Excel and drop again.
    Export {
        #[command(flatten)]
        filter: Filter,
        /// utf-8 or gb18030 (default: the source's encoding).
        #[arg(long)]
        encoding: Option<String>,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Normalize entries again after the catalog or mapping was fixed (agent stopped).
    Retry {
        #[command(flatten)]
        filter: Filter,
    },
    /// Drop entries for good, with a reason that is kept (agent stopped).
    Discard {
        #[command(flatten)]
        filter: Filter,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum SourceCommand {
    /// Create the change-log table and the triggers of a source's table.
    Install {
        /// The source's name in the config.
        name: String,
        /// Print the SQL for a DBA to review instead of running it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Drop the triggers of a source's table and its pending changes.
    Uninstall {
        name: String,
        #[arg(long)]
        dry_run: bool,
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
        } => match pki::dev::write_dev(&out, &agencies, &hub_names) {
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
        Command::Outbox {
            command: OutboxCommand::Acknowledge,
        } => {
            let config = match load(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match agent::outbox::Recovery::acknowledge(&config.data_dir) {
                Ok(Some(to)) => {
                    println!("acknowledged: the recovery report is kept as {}", to.display());
                    ExitCode::SUCCESS
                }
                Ok(None) => {
                    println!(
                        "nothing to acknowledge: no damaged outbox was recovered in {}",
                        config.data_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("qianzhi: outbox acknowledge: {}: {e}", config.data_dir.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Source { command } => {
            let config = match load(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let (name, dry_run, install) = match command {
                SourceCommand::Install { name, dry_run } => (name, dry_run, true),
                SourceCommand::Uninstall { name, dry_run } => (name, dry_run, false),
            };
            let Some(source) = config.sources.iter().find(|s| s.name == name) else {
                eprintln!("qianzhi: no source {name:?} in {}", cli.config.display());
                return ExitCode::from(EX_USAGE);
            };
            let sql = match agent::source::db::statements(source, install) {
                Ok(sql) => sql,
                Err(e) => {
                    eprintln!("qianzhi: source {name}: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            if dry_run {
                for s in sql {
                    println!("{s};\n");
                }
                return ExitCode::SUCCESS;
            }
            init_tracing(LogFormat::Text, "warn");
            match runtime().block_on(agent::source::db::apply(source, install)) {
                Ok(()) => {
                    let did = if install { "installed" } else { "removed" };
                    println!(
                        "source {name}: change log {did} on table {}",
                        source.database().map_or("", |d| d.table.as_str())
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("qianzhi: source {name}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Quarantine { command } => {
            let config = match load(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_tracing(LogFormat::Text, "warn");
            match quarantine(&config, command) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("qianzhi: quarantine: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
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
                    for w in f.warnings {
                        println!("WARN  {}: {w}", f.what);
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
            runtime().block_on(run(&cli.config, config))
        }
    }
}

fn quarantine(config: &Config, command: QuarantineCommand) -> anyhow::Result<ExitCode> {
    use agent::quarantine as q;
    match command {
        QuarantineCommand::List { filter } => {
            print!("{}", q::render_list(&q::entries(config, &filter.into_filter())?));
        }
        QuarantineCommand::Show { id } => {
            let filter = agent::outbox::QuarantineFilter {
                ids: vec![id],
                ..Default::default()
            };
            match q::entries(config, &filter)?.first() {
                Some(h) => print!("{}", q::render_show(h)),
                None => anyhow::bail!("no entry #{id}"),
            }
        }
        QuarantineCommand::Export { filter, encoding, out } => {
            let encoding = match encoding.as_deref() {
                None => None,
                Some("utf-8" | "utf8") => Some(agent::config::Encoding::Utf8),
                Some("gb18030" | "gbk") => Some(agent::config::Encoding::Gb18030),
                Some(other) => {
                    eprintln!("qianzhi: --encoding {other:?}: expected utf-8 or gb18030");
                    return Ok(ExitCode::from(EX_USAGE));
                }
            };
            let entries = q::entries(config, &filter.into_filter())?;
            let bytes = q::export_csv(config, &entries, encoding)?;
            match out {
                Some(path) => {
                    std::fs::write(&path, bytes)?;
                    eprintln!("wrote {} entries to {}", entries.len(), path.display());
                }
                None => std::io::Write::write_all(&mut std::io::stdout(), &bytes)?,
            }
        }
        QuarantineCommand::Retry { filter } => {
            let r = q::retry(config, &filter.into_filter())?;
            println!(
                "{} queued for the hub, {} still failing, {} not retryable (fix the file and drop it again)",
                r.queued, r.still_failing, r.not_retryable
            );
        }
        QuarantineCommand::Discard { filter, reason } => {
            let who = std::env::var("SUDO_USER")
                .or_else(|_| std::env::var("USER"))
                .unwrap_or_else(|_| "unknown".into());
            let n = q::discard(config, &filter.into_filter(), &reason, &who)?;
            println!("discarded {n} entries (reason: {reason})");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Red for what needs action, yellow for warnings, green for a healthy link.
fn colour(text: &str) -> String {
    text.lines()
        .map(|l| {
            let code = if l.starts_with("WARNING") {
                "33"
            } else if ["DOWN", "OVERDUE", "ERROR", "FULL"].iter().any(|w| l.contains(w)) {
                "31"
            } else if l.starts_with("link     up") || l == "ready    ok" {
                "32"
            } else {
                return format!("{l}\n");
            };
            format!("\x1b[{code}m{l}\x1b[0m\n")
        })
        .collect()
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

async fn run(path: &std::path::Path, config: Config) -> ExitCode {
    let grace = config.shutdown_grace;
    let token = CancellationToken::new();
    let tasks = TaskTracker::new();
    let running = match agent::start(config, &tasks, token.clone()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("qianzhi: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    agent::systemd::ready(&running.health);
    let shutdown = agent::signal::shutdown();
    tokio::pin!(shutdown);
    let mut reloads = agent::signal::reloads();
    loop {
        tokio::select! {
            () = &mut shutdown => {
                info!("received shutdown signal");
                break;
            }
            () = token.cancelled() => {
                warn!("fatal task error; shutting down");
                break;
            }
            Some(()) = reloads.recv() => reload(path, &running).await,
        }
    }
    agent::systemd::stopping();
    token.cancel();
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        warn!(?grace, "graceful shutdown timed out");
    }
    info!("stopped");
    ExitCode::SUCCESS
}

/// SIGHUP: read and validate the config again, and apply it; a bad config is
/// refused with the reason and the running one stays.
async fn reload(path: &std::path::Path, running: &agent::Running) {
    info!(config = %path.display(), "received SIGHUP: reloading the config");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
    match Config::load(path) {
        Err(e) => {
            error!(error = %e, "config reload refused; the running config stays");
            running.health.set_reload_error(Some(e.to_string()));
        }
        Ok(config) => match running.reload(config).await {
            Ok(summary) => info!(%summary, "config reloaded"),
            Err(e) => error!(error = %e, "config reload refused; the running config stays"),
        },
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
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
            let text = agent::health::render(&s);
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                print!("{}", colour(&text));
            } else {
                print!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qianzhi: unexpected status document: {e}");
            ExitCode::FAILURE
        }
    }
}
