//! The `ringlb` command: run the balancer, check a config, or run the demo.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use ringlb::config::Config;
use ringlb::control::alerts::Alerts;
use ringlb::control::health::HealthChecker;
use ringlb::control::{ConnectionBudget, Shutdown, Snapshot};
use ringlb::dataplane::DataPlane;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    let result = match cli.command {
        Some(Command::Check) => return check(cli.config.as_deref()),
        Some(Command::Demo(options)) => ringlb::demo::run(&options),
        Some(Command::Bench(args)) => ringlb::loadtool::run(&args),
        Some(Command::Run) | None => match cli.config.as_deref() {
            Some(path) => run(path),
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

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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

fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    // Registered before the workers start, so a signal never hits the default handler.
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("cannot install signal handlers")?;
    let shutdown = Arc::new(Shutdown::new());
    let budget = Arc::new(ConnectionBudget::for_config(&config));
    // Before anything can make a transition, so none goes unannounced.
    let alerts = Alerts::start(&config.alerts.webhooks).context("cannot start alerts")?;
    let snapshot = Snapshot::from_config(&config, &budget).into_shared();
    let dataplane = DataPlane::start(&config, snapshot.clone(), shutdown.clone())?;
    // Probes run on their own thread (the control plane), never on a worker.
    let health = HealthChecker::start(&snapshot.load()).context("cannot start health checks")?;
    tracing::info!(config = %path.display(), workers = config.runtime.workers, "ringlb running");

    let first = signals.forever().next();
    tracing::info!(signal = ?first, drain_timeout = ?config.runtime.drain_timeout,
        "shutting down: listeners closed, draining live connections");
    let deadline = Instant::now() + config.runtime.drain_timeout;
    // A second signal during the drain closes live connections at once.
    let handle = signals.handle();
    let second = std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            tracing::warn!("second signal: closing live connections now");
            shutdown.abort();
        }
    });
    dataplane.drain_until(deadline);
    if let Some(health) = health {
        health.stop();
    }
    // After the checks: the last transitions still go out (within the alerts' grace time).
    alerts.stop();
    handle.close();
    let _ = second.join();
    tracing::info!("ringlb stopped");
    Ok(())
}
