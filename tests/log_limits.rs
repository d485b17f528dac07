//! Rate-limited log lines through a real ringlb process: a flood of connections that all fail the
//! same way writes at most one line per reason per second, and the lines that are written count
//! the ones that were not (`suppressed=N`), across workers.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Ringlb, config, field, refused_addr, service_config, wait_for};

/// Connections of the flood, and the client threads making them.
const FLOOD: usize = 300;
const THREADS: usize = 4;

/// Connects to `addr` and waits for ringlb to close the connection (no backend could be
/// reached); returns whether it did within the timeout.
fn refused_connection(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    // EOF or a reset: either way ringlb closed it.
    match s.read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// The log lines carrying `message`.
fn lines_with(lb: &Ringlb, message: &str) -> Vec<String> {
    lb.log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(message))
        .cloned()
        .collect()
}

/// The `suppressed` field of a rate-limited line.
fn suppressed(line: &str) -> u64 {
    field(line, "suppressed=")
        .unwrap_or_else(|| panic!("no suppressed= in {line:?}"))
        .parse()
        .unwrap()
}

#[test]
fn a_flood_of_unreachable_backends_logs_one_line_per_second_with_the_suppressed_count() {
    const REACHED: &str = "no backend could be reached";
    let lb = Ringlb::start(&config(
        "",
        &[service_config("web", "round_robin", &[refused_addr()], "")],
    ));
    let addr = lb.addr("web");
    let started = Instant::now();
    let closed: usize = std::thread::scope(|s| {
        let clients: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(move || {
                    (0..FLOOD / THREADS)
                        .filter(|_| refused_connection(addr))
                        .count()
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).sum()
    });
    assert_eq!(closed, FLOOD, "every client connection is closed by ringlb");
    let flood_took = started.elapsed();

    // The lines written during the flood count only what came before them (a line may also
    // count an event of its own second that raced with its writer): one more failure in a later
    // second writes a line with what the flood's second suppressed. Probe until the lines and
    // their counts account for more than the flood.
    let accounted_by = |lines: &[String]| -> u64 { lines.iter().map(|l| 1 + suppressed(l)).sum() };
    let mut probes = 0;
    let counted = wait_for(Duration::from_secs(5), || {
        if accounted_by(&lines_with(&lb, REACHED)) > FLOOD as u64 {
            return true;
        }
        assert!(refused_connection(addr), "a probe connection is closed");
        probes += 1;
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    let elapsed = started.elapsed();
    let log = lb.log_text();
    assert!(counted, "no line counts suppressed lines; log:\n{log}");

    let lines = lines_with(&lb, REACHED);
    let bound = elapsed.as_secs() as usize + 2;
    assert!(
        lines.len() <= bound,
        "{} lines for {FLOOD} connections in {flood_took:?} (then {probes} probes, {elapsed:?} \
         in all); at most {bound}:\n{log}",
        lines.len()
    );
    for line in &lines {
        assert!(line.contains("WARN"), "{line}");
        assert_eq!(field(line, "service=").as_deref(), Some("web"), "{line}");
        assert!(
            field(line, "client=").is_some(),
            "the line names its client: {line}"
        );
    }
    // Every failure is written or counted: the line written after the flood counts the whole
    // flood (a probe made after it may still be pending).
    let accounted = accounted_by(&lines);
    assert!(
        accounted > FLOOD as u64 && accounted <= (FLOOD + probes) as u64,
        "lines plus suppressed counts: {accounted}, for {FLOOD} + {probes} failed connections; \
         log:\n{log}"
    );
    // No other warning is written per connection either.
    let warnings = log.lines().filter(|l| l.contains("WARN")).count();
    assert!(
        warnings <= lines.len() + 2,
        "{warnings} warnings for {} rate-limited lines:\n{log}",
        lines.len()
    );
}
