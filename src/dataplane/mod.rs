//! The data plane: worker threads, each with its own io_uring runtime (compio).
//!
//! Owns: worker threads and their runtimes, listening sockets, accepting, backend connects and
//! byte forwarding, each worker's connection-tracking table, and UDP flows (`udp`). compio types stay inside this
//! module. Does not own: backend choice (the [`crate::balancer`] selectors, read through the
//! [`crate::control::Snapshot`]) or deciding when to shut down ([`crate::control::Shutdown`]).
//!
//! Per connection there is no lock: the snapshot is loaded lock-free, counters are atomics, and
//! the tracking table belongs to one thread.

mod forward;
mod listener;
mod udp;
mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam::channel::{Receiver, RecvTimeoutError};

use crate::config::{Config, Protocol};
use crate::control::{SharedSnapshot, Shutdown};
use std::sync::atomic::Ordering;

pub use listener::{UDP_SOCKET_BUFFER, bind_tcp, bind_udp};

/// Errors starting the data plane; each names the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    /// Another process (without `SO_REUSEPORT` sharing) holds the listen address.
    #[error("listen address {0} is already in use by another process")]
    ListenerAddressInUse(SocketAddr),
    /// Binding or listening failed for another reason.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address that could not be bound.
        address: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// A worker's io_uring runtime could not be created or could not take its listeners.
    #[error("cannot start the io_uring runtime: {0}")]
    Runtime(io::Error),
    /// A worker thread could not be started.
    #[error("cannot start worker thread {index}: {source}")]
    Thread {
        /// The worker's index.
        index: usize,
        /// The operating system's error.
        source: io::Error,
    },
}

/// A service as it listens: its name and the address it was bound to (port 0 resolved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listening {
    /// The service's name.
    pub service: String,
    /// The bound address.
    pub address: SocketAddr,
}

/// Running workers.
#[derive(Debug)]
pub struct DataPlane {
    threads: Vec<JoinHandle<()>>,
    exited: Receiver<usize>,
    shutdown: Arc<Shutdown>,
    listening: Vec<Listening>,
    snapshot: SharedSnapshot,
}

impl DataPlane {
    /// Binds every service's listeners and starts `config.runtime.workers` workers.
    pub fn start(
        config: &Config,
        snapshot: SharedSnapshot,
        shutdown: Arc<Shutdown>,
    ) -> Result<DataPlane, DataPlaneError> {
        let workers = config.runtime.workers.max(1);
        let mut per_worker: Vec<Vec<(usize, std::net::TcpListener)>> =
            (0..workers).map(|_| Vec::new()).collect();
        let mut udp_per_worker: Vec<Vec<udp::UdpSetup>> =
            (0..workers).map(|_| Vec::new()).collect();
        let mut listening = Vec::new();
        for (index, service) in config.services.iter().enumerate() {
            let address = match service.protocol {
                Protocol::Tcp => {
                    let (listeners, address) = bind_tcp(service.listen, workers, service.backlog)?;
                    for (worker, l) in listeners.into_iter().enumerate() {
                        per_worker[worker].push((index, l));
                    }
                    address
                }
                Protocol::Udp => {
                    let (sockets, address) = bind_udp(service.listen, workers)?;
                    for (worker, socket) in sockets.into_iter().enumerate() {
                        udp_per_worker[worker].push(udp::UdpSetup {
                            service: index,
                            socket,
                            max_flows: flow_share(service.udp.max_flows, workers, worker),
                        });
                    }
                    address
                }
            };
            listening.push(Listening {
                service: service.name.clone(),
                address,
            });
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (exit_tx, exited) = crossbeam::channel::bounded(workers);
        let (ready_tx, ready) = crossbeam::channel::bounded(workers);
        let mut threads = Vec::with_capacity(workers);
        for (index, (listeners, udp)) in per_worker.into_iter().zip(udp_per_worker).enumerate() {
            let w = worker::WorkerSetup {
                index,
                pin_to: config.runtime.pin_workers.then_some(index % cpus),
                listeners,
                udp,
                snapshot: snapshot.clone(),
                shutdown: shutdown.clone(),
                exited: exit_tx.clone(),
                ready: ready_tx.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("ringlb-worker-{index}"))
                .spawn(move || worker::run(w))
                .map_err(|source| {
                    // Workers already started must not keep serving.
                    shutdown.abort();
                    DataPlaneError::Thread { index, source }
                })?;
            threads.push(thread);
        }
        drop(ready_tx);
        // Report readiness only once every worker runs its runtime and owns its listeners.
        for _ in 0..workers {
            match ready.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    shutdown.abort();
                    return Err(e);
                }
                Err(_) => {
                    shutdown.abort();
                    return Err(DataPlaneError::Runtime(io::Error::other(
                        "a worker exited while starting",
                    )));
                }
            }
        }
        for (l, service) in listening.iter().zip(&config.services) {
            tracing::info!(service = %l.service, address = %l.address, workers,
                protocol = service.protocol.name(), "listening");
        }
        Ok(DataPlane {
            threads,
            exited,
            shutdown,
            listening,
            snapshot,
        })
    }

    /// The services and the addresses they listen on.
    pub fn listening(&self) -> &[Listening] {
        &self.listening
    }

    /// Drains: stops accepting now, lets live connections finish until `deadline`, then closes
    /// the rest and waits for every worker to exit.
    pub fn drain_until(self, deadline: Instant) {
        self.shutdown.drain();
        let mut remaining = self.threads.len();
        while remaining > 0 {
            match self.exited.recv_deadline(deadline) {
                Ok(_) => remaining -= 1,
                Err(RecvTimeoutError::Timeout) => {
                    tracing::warn!(
                        workers = remaining,
                        "drain deadline reached: closing live connections"
                    );
                    self.shutdown.abort();
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
        log_udp_totals(&self.snapshot);
    }
}

/// Worker `index`'s share of a UDP service's `udp_max_flows`: the shares add up to `max_flows`
/// (each worker at least 1), so the service's flows stay within the bound.
fn flow_share(max_flows: usize, workers: usize, index: usize) -> usize {
    let workers = workers.max(1);
    let share = max_flows / workers + usize::from(index < max_flows % workers);
    share.max(1)
}

/// Logs each UDP service's flow and datagram totals once the workers stopped. Until the admin
/// API exists, this line is where an operator (and the tests) read evictions and failures.
fn log_udp_totals(snapshot: &SharedSnapshot) {
    for state in &snapshot.load().services {
        if state.config.protocol != Protocol::Udp {
            continue;
        }
        let c = &state.counters;
        let failures: u64 = state
            .backends
            .iter()
            .map(|b| b.counters.connect_failures.load(Ordering::Relaxed))
            .sum();
        tracing::info!(
            service = %state.config.name,
            flows_opened = c.udp_flows_opened.load(Ordering::Relaxed),
            flows_peak = c.udp_flows_peak.load(Ordering::Relaxed),
            flows_evicted = c.udp_flows_evicted.load(Ordering::Relaxed),
            flows_expired = c.udp_flows_expired.load(Ordering::Relaxed),
            flows_answered = c.udp_flows_answered.load(Ordering::Relaxed),
            datagrams_up = c.udp_datagrams_up.load(Ordering::Relaxed),
            datagrams_down = c.udp_datagrams_down.load(Ordering::Relaxed),
            datagrams_dropped = c.udp_datagrams_dropped.load(Ordering::Relaxed),
            backend_failures = failures,
            "udp totals"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::flow_share;

    #[test]
    fn flow_shares_add_up_to_the_bound() {
        for (max, workers) in [(1000, 2), (1001, 2), (7, 3), (65536, 24), (5, 5)] {
            let total: usize = (0..workers).map(|i| flow_share(max, workers, i)).sum();
            assert_eq!(total, max, "{max} over {workers}");
        }
        // Fewer flows than workers: one each, the documented max(udp_max_flows, workers).
        let total: usize = (0..4).map(|i| flow_share(2, 4, i)).sum();
        assert_eq!(total, 4);
    }
}
