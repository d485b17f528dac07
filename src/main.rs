//! The `ringlb` command: run the balancer, check a config, or run the demo.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use ringlb::Server;
use ringlb::admin::client;
use ringlb::config::Config;
use ringlb::logging::{self, LogFormat};

/// ringlb: a Layer-4 TCP/UDP load balancer on io_uring, one worker thread per core.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file to run (same as `ringlb run --config FILE`).
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
    /// Log level or filter (e.g. "info", "debug", "ringlb::access=info"); overrides RUST_LOG.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// How log lines are written: `text` (the default) or `json` (one object per line, for
    /// log shippers). Overrides the config's `[runtime] log_format`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the balancer with --config FILE until SIGTERM or SIGINT.
    Run,
    /// Validate --config FILE and print a summary of it; exit non-zero when invalid.
    Check,
    /// Start three echo backends and a balancer on loopback, drive a short load, print results.
    Demo(ringlb::demo::DemoOptions),
    /// Load generator (connect, rr, stream, udp, idle) and echo/sink server (serve).
    Bench(ringlb::loadtool::BenchArgs),
    /// Print the services and backends of a running ringlb (from its admin API).
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Only ask whether it serves (`GET /health`): print the answer, exit 0 when healthy
        /// and 1 otherwise (for keepalived's `track_script`).
        #[arg(long)]
        check: bool,
    },
    /// Print the live connections of a running ringlb (from its admin API).
    Connections {
        #[command(flatten)]
        admin: AdminArgs,
        /// Only this service's connections.
        #[arg(long)]
        service: Option<String>,
        /// At most this many (oldest first).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// Where the admin API of the running ringlb is.
#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// The admin API's address (IP:port). Default: `[admin] listen` of --config FILE, else
    /// 127.0.0.1:9090.
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
}

/// The admin address when neither --admin nor a config's `[admin]` says otherwise.
const DEFAULT_ADMIN: &str = "127.0.0.1:9090";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = cli.log_level.as_deref();
    // `run` reads the config first: its `[runtime] log_format` may choose the format.
    if !matches!(cli.command, Some(Command::Run) | None) {
        logging::init(LogFormat::choose(cli.log_format, None), level);
    }
    let result = match cli.command {
        Some(Command::Check) => return check(cli.config.as_deref()),
        Some(Command::Demo(options)) => ringlb::demo::run(&options),
        Some(Command::Bench(args)) => ringlb::loadtool::run(&args),
        Some(Command::Status { admin, check }) if check => {
            return match admin_target(&admin, cli.config.as_deref()) {
                Ok(target) => {
                    let (healthy, line) = client::check(&target);
                    let _ = writeln!(std::io::stdout(), "{line}");
                    if healthy {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Status { admin, .. }) => admin_target(&admin, cli.config.as_deref())
            .and_then(|t| client::status(&t))
            .map(|table| print!("{table}")),
        Some(Command::Connections {
            admin,
            service,
            limit,
        }) => admin_target(&admin, cli.config.as_deref())
            .and_then(|t| client::connections(&t, service.as_deref(), limit))
            .map(|table| print!("{table}")),
        Some(Command::Run) | None => match cli.config.as_deref() {
            Some(path) => run(path, cli.log_format, level),
            None => Err(anyhow::anyhow!(
                "no config file: use `ringlb run --config FILE` (or `ringlb demo` for a first look)"
            )),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: Option<&Path>) -> ExitCode {
    let Some(path) = path else {
        eprintln!("error: `ringlb check` needs --config FILE");
        return ExitCode::from(2);
    };
    match Config::load(path) {
        Ok(config) => {
            // A closed pipe (`ringlb check ... | head`) is not an error worth a panic.
            let _ = writeln!(std::io::stdout(), "{}", config.summary().trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The admin API to ask: --admin, else the config's `[admin] listen`, else the default.
fn admin_target(args: &AdminArgs, config: Option<&Path>) -> anyhow::Result<client::Target> {
    if let Some(address) = args.admin {
        return Ok(client::Target::new(address));
    }
    if let Some(path) = config {
        let config = Config::load(path)?;
        let Some(admin) = config.admin else {
            anyhow::bail!(
                "{} has no [admin] section: the running ringlb has no admin API to ask",
                path.display()
            );
        };
        return Ok(client::Target::new(admin.listen));
    }
    Ok(client::Target::new(DEFAULT_ADMIN.parse()?))
}

/// `ringlb run`: starts the [`Server`], prints its ready line, then maps signals: SIGHUP
/// reloads, the first SIGTERM or SIGINT drains, a second one closes live connections at once.
fn run(path: &Path, log_format: Option<LogFormat>, level: Option<&str>) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    logging::init(
        LogFormat::choose(log_format, config.runtime.log_format),
        level,
    );
    // Registered before the workers start, so a signal never hits the default handler.
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("cannot install signal handlers")?;
    let workers = config.runtime.workers;
    let mut server = Server::start(config, Some(path))?;
    tracing::info!(config = %path.display(), workers, "ringlb running");
    // A closed or full stdout must not stop the balancer: the line is for whoever reads it.
    let _ = writeln!(std::io::stdout(), "{}", server.ready_line());
    let _ = std::io::stdout().flush();

    // SIGHUP reloads (on this thread: the workers never wait for it); the first SIGTERM or
    // SIGINT drains.
    let first = loop {
        match signals.forever().next() {
            Some(SIGHUP) => {
                tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
                // Logged by reload() either way.
                let _ = server.reload();
            }
            other => break other,
        }
    };
    let drain_timeout = server.drain_timeout();
    tracing::info!(signal = ?first, drain_timeout = ?drain_timeout,
        "shutting down: listeners closed, draining live connections");
    let deadline = Instant::now() + drain_timeout;
    // A second signal during the drain closes live connections at once.
    let shutdown = server.shutdown();
    let handle = signals.handle();
    let second = std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal != SIGHUP {
                tracing::warn!("second signal: closing live connections now");
                shutdown.abort();
                break;
            }
        }
    });
    server.drain_until(deadline);
    // Health checks, then alerts: the last transitions still go out (within the alerts' grace
    // time).
    server.stop();
    handle.close();
    let _ = second.join();
    tracing::info!("ringlb stopped");
    Ok(())
}
