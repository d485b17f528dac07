//! `ringlb bench`: a load generator for ringlb or any TCP/UDP server, and `bench serve`, an
//! echo or sink server to use as a backend.
//!
//! Owns: the load modes (`connect`, `rr`, `stream`, `udp`, `idle`), their options and bounds,
//! measuring (hdrhistogram latencies, corrected for coordinated omission under `--rate` by
//! measuring from each request's intended send time, as wrk2 does), errors by kind, the report
//! (a table, a live progress line on a terminal, or JSON with the whole latency histogram), and
//! `bench merge`, which adds the histograms of several JSON reports.
//!
//! Like the data plane it runs on compio (io_uring): one runtime per `--threads` thread and many
//! connections per thread as tasks, so that a two-core machine can saturate a proxy. It shares
//! no state with the balancer; its compio types stay inside this module.
//!
//! Every load stops by itself: it is bounded in time (`--duration`, 10 s by default, or a 60 s
//! cap when `--requests`/`--bytes` bound it in count) and each connect and reply by `--timeout`.
//!
//! Layout: `args` (options and the validated plan), `runner` (threads, runtimes, deadline,
//! progress), `tcp` and `udp` (one task per connection, per mode), `report` (errors, counters,
//! table, JSON), `merge` (`bench merge`), `serve` (the echo/sink server).

mod args;
mod merge;
mod report;
mod runner;
mod serve;
mod tcp;
mod udp;

pub use args::{CommonArgs, IdleArgs, MessageArgs, Mode, Plan, StreamArgs};
pub use merge::{MergeArgs, Merged};
pub use report::{ErrorKind, Percentiles, Report};
pub use serve::ServeArgs;

/// `ringlb bench` and its modes.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The modes of `ringlb bench`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// Persistent connections, request/response: requests/s and latency.
    Rr(MessageArgs),
    /// A new connection per request (connect, send, read the reply, close): connections/s.
    Connect(MessageArgs),
    /// Bulk transfer (one-way against a sink, echoed against an echo server): Gbit/s.
    Stream(StreamArgs),
    /// Datagram request/response over UDP sockets: requests/s and latency.
    Udp(MessageArgs),
    /// Open --connections connections, exchange one small message on each, hold them idle.
    Idle(IdleArgs),
    /// Run an echo or sink server (TCP or UDP) to use as a backend.
    Serve(ServeArgs),
    /// Merge the latency histograms of several `--json` reports: percentiles over all of them.
    Merge(MergeArgs),
}

/// Runs a `ringlb bench` command and prints its report on stdout.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let plan = match &args.command {
        BenchCommand::Serve(s) => return serve::run(s),
        BenchCommand::Merge(m) => return merge::run(m),
        BenchCommand::Rr(m) => Plan::message(Mode::Rr, m)?,
        BenchCommand::Connect(m) => Plan::message(Mode::Connect, m)?,
        BenchCommand::Udp(m) => Plan::message(Mode::Udp, m)?,
        BenchCommand::Stream(s) => Plan::stream(s)?,
        BenchCommand::Idle(i) => Plan::idle(i)?,
    };
    let json = plan.json;
    let report = runner::run(plan)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
