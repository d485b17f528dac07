//! The `ringlb` command: run the balancer, check a config, upgrade a running one, or run the
//! demo.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use signal_hook::iterator::Signals;

use ringlb::admin::client;
use ringlb::config::Config;
use ringlb::logging::{self, LogFormat};
use ringlb::{Server, systemd, upgrade};

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
    /// Upgrade a running ringlb in place: it starts the binary on disk, hands it its listening
    /// sockets and drains once the new process serves (the same as SIGUSR2, with the outcome
    /// printed). Exits non-zero when the running ringlb keeps serving.
    Upgrade {
        /// The process id of the running ringlb (systemd: `$MAINPID`).
        #[arg(long)]
        pid: u32,
        /// The binary to start (default: the path the running ringlb was started from).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// How long the new process may take to be ready ("30s").
        #[arg(long, default_value = "30s", value_parser = ringlb::units::parse_duration)]
        timeout: Duration,
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
    /// 127.0.0.1:9090. The bearer token is RINGLB_ADMIN_TOKEN, else `[admin] token` of
    /// --config FILE.
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
        Some(Command::Upgrade {
            pid,
            binary,
            timeout,
        }) => upgrade::request(pid, binary, timeout).map(|new| {
            let _ = writeln!(
                std::io::stdout(),
                "upgraded: process {new} serves, {pid} drains"
            );
        }),
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
    // The token: RINGLB_ADMIN_TOKEN, else the config's `[admin] token`.
    let token = std::env::var("RINGLB_ADMIN_TOKEN").ok();
    if let Some(address) = args.admin {
        return Ok(client::Target::new(address).with_token(token));
    }
    if let Some(path) = config {
        let config = Config::load(path)?;
        let Some(admin) = config.admin else {
            anyhow::bail!(
                "{} has no [admin] section: the running ringlb has no admin API to ask",
                path.display()
            );
        };
        let token = token.or_else(|| admin.token.map(|t| t.expose().to_owned()));
        return Ok(client::Target::new(admin.listen).with_token(token));
    }
    Ok(client::Target::new(DEFAULT_ADMIN.parse()?).with_token(token))
}

/// Why the signal loop of `ringlb run` ended.
enum Stop {
    /// SIGTERM or SIGINT: drain and exit.
    Signal(i32),
    /// A new process (this pid) serves the listeners now: drain and exit.
    Upgraded(u32),
}

/// `ringlb run`: loads the config, starts logging in its format, starts the [`Server`] (on the
/// sockets of the ringlb it replaces, when started by an upgrade, or on those systemd passed),
/// prints its ready line, tells systemd, then maps signals: SIGHUP reloads, SIGUSR2 (or
/// `ringlb upgrade`) upgrades the binary, the first SIGTERM or SIGINT drains, a second one
/// closes live connections at once.
fn run(path: &Path, log_format: Option<LogFormat>, level: Option<&str>) -> anyhow::Result<()> {
    // Before any thread starts: the descriptor numbers below are this process's alone.
    let successor = upgrade::Successor::from_env();
    let binary = upgrade::binary_at_start();
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // The config is validated before any socket is taken from an old process.
    let started = Config::load(path)
        .map_err(anyhow::Error::from)
        .and_then(|config| {
            logging::init(
                LogFormat::choose(log_format, config.runtime.log_format),
                level,
            );
            let inherited = match &successor {
                Some(s) => s.take()?,
                None => {
                    let names: Vec<&str> =
                        config.services.iter().map(|s| s.name.as_str()).collect();
                    systemd::activated(&names).context("cannot read the sockets systemd passed")?
                }
            };
            // Registered before the workers start, so a signal never hits the default handler.
            let signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR2])
                .context("cannot install signal handlers")?;
            let workers = config.runtime.workers;
            let server = Server::start_with(config, Some(path), inherited)?;
            Ok((server, signals, workers))
        });
    let (mut server, signals, workers) = match started {
        Ok(started) => started,
        Err(e) => {
            if let Some(s) = successor {
                s.fail(&format!("{e:#}"));
            }
            return Err(e);
        }
    };
    let watch = systemd::Watch::start(server.instance().clone())
        .context("cannot start the systemd status thread")?;
    let requests = match upgrade::Requests::listen() {
        Ok(requests) => Some(requests),
        Err(e) => {
            tracing::warn!(error = %e, "cannot take `ringlb upgrade` requests (SIGUSR2 still upgrades)");
            None
        }
    };
    // Ready once everything that serves runs, upgrade requests included.
    tracing::info!(config = %path.display(), workers, "ringlb running");
    // A closed or full stdout must not stop the balancer: the line is for whoever reads it.
    let _ = writeln!(std::io::stdout(), "{}", server.ready_line());
    let _ = std::io::stdout().flush();
    let status = systemd::status_line(server.instance());
    systemd::ready(&status, successor.is_some().then(std::process::id));
    if let Some(s) = successor {
        s.ready();
    }

    // Signals arrive on a channel, beside upgrade requests.
    let handle = signals.handle();
    let (signal_tx, signal_rx) = crossbeam::channel::unbounded();
    let forward = std::thread::spawn(move || {
        let mut signals = signals;
        for signal in signals.forever() {
            if signal_tx.send(signal).is_err() {
                break;
            }
        }
    });
    let upgrade_to = |wanted: Option<&Path>, timeout: Duration| {
        let Some(binary) = wanted.or(binary.as_deref()) else {
            return Err("the path of the running binary is unknown: give --binary".to_owned());
        };
        upgrade::hand_over(binary, &args, server.instance().dataplane(), timeout)
            .map_err(|e| e.to_string())
    };
    let never = crossbeam::channel::never();
    // SIGHUP reloads and upgrades run on this thread (the workers never wait for them).
    let stop = loop {
        crossbeam::channel::select! {
            recv(signal_rx) -> signal => match signal {
                Ok(SIGHUP) => {
                    tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
                    // Logged by reload() either way.
                    let _ = server.reload();
                }
                Ok(SIGUSR2) => {
                    tracing::info!("SIGUSR2: upgrading the binary");
                    match upgrade_to(None, upgrade::DEFAULT_TIMEOUT) {
                        Ok(pid) => break Stop::Upgraded(pid),
                        Err(e) => tracing::error!(error = %e,
                            "upgrade failed: this process keeps serving"),
                    }
                }
                Ok(other) => break Stop::Signal(other),
                Err(_) => break Stop::Signal(SIGTERM),
            },
            recv(requests.as_ref().unwrap_or(&never)) -> pending => {
                let Ok(pending) = pending else { continue };
                let timeout = Duration::from_millis(pending.request.timeout_ms);
                tracing::info!(binary = ?pending.request.binary, "upgrade requested");
                match upgrade_to(pending.request.binary.as_deref(), timeout) {
                    Ok(pid) => {
                        pending.answer(upgrade::Answer::Upgraded { pid });
                        break Stop::Upgraded(pid);
                    }
                    Err(error) => {
                        tracing::error!(error = %error,
                            "upgrade failed: this process keeps serving");
                        pending.answer(upgrade::Answer::Failed { error });
                    }
                }
            }
        }
    };
    // Further requests are answered "stopping".
    drop(requests);
    let drain_timeout = server.drain_timeout();
    match stop {
        Stop::Signal(signal) => {
            tracing::info!(signal, drain_timeout = ?drain_timeout,
                "shutting down: listeners closed, draining live connections");
            systemd::stopping(&format!("stopping: draining for at most {drain_timeout:?}"));
        }
        Stop::Upgraded(pid) => {
            // Sent while this process is still the one systemd listens to.
            systemd::main_pid(pid);
            tracing::info!(new_pid = pid, drain_timeout = ?drain_timeout,
                "upgraded: the new process serves; stopped accepting, draining live connections");
        }
    }
    let deadline = Instant::now() + drain_timeout;
    // A second signal during the drain closes live connections at once.
    let shutdown = server.shutdown();
    let second = std::thread::spawn(move || {
        for signal in signal_rx {
            if signal != SIGHUP && signal != SIGUSR2 {
                tracing::warn!("second signal: closing live connections now");
                shutdown.abort();
                break;
            }
        }
    });
    server.drain_until(deadline);
    drop(watch);
    // Health checks, then alerts: the last transitions still go out (within the alerts' grace
    // time).
    server.stop();
    handle.close();
    let _ = forward.join();
    let _ = second.join();
    tracing::info!("ringlb stopped");
    Ok(())
}
