//! Reloading listeners in two steps: bind what a new config adds or moves (prepare), then hand
//! the sockets to the workers and retire what the config no longer serves (commit).
//!
//! Owns: the record of each service's bound listener ([`Bound`]) and when a config needs a new
//! one, binding the new sockets before anything changes (so a failed bind changes nothing), the
//! per-worker commands that hand sockets over or retire listeners, and each worker's share of a
//! UDP service's flow bound. Does not own: building the new snapshot or deciding to reload
//! (`control`), the sockets' options (`listener`), or what a worker does with a command
//! (`worker`).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use crate::config::{Config, Protocol, Service, UdpSettings};
use crate::control::Snapshot;

use super::{
    BindOptions, DataPlaneError, DataPlaneHandle, Inherited, ListenerKey, Listening, bind_tcp_with,
    bind_udp_with, udp, worker,
};

/// A service's listener as bound now: what a reload compares against.
#[derive(Debug)]
pub(super) struct Bound {
    key: ListenerKey,
    /// The service's settings that the sockets depend on.
    listen: SocketAddr,
    protocol: Protocol,
    backlog: u32,
    /// A UDP service's flow table and upstream sockets are made with these settings, so a
    /// change of them rebinds (flows of the old socket are dropped).
    udp: UdpSettings,
    /// The address actually bound (port 0 resolved).
    pub(super) address: SocketAddr,
    /// A copy of each worker's socket, in worker order, to hand to a successor (see
    /// `handoff`); closed when the drain begins.
    pub(super) sockets: Vec<OwnedFd>,
}

impl Bound {
    pub(super) fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub(super) fn serves(&self, service: &Service) -> bool {
        self.listen == service.listen
            && self.protocol == service.protocol
            && self.backlog == service.backlog
            && (self.protocol == Protocol::Tcp || self.udp == service.udp)
    }
}

/// Sockets bound for services a reload adds (or moves), not yet handed to the workers.
#[derive(Debug)]
pub struct PreparedListeners {
    new: Vec<(String, Bound, Sockets)>,
}

#[derive(Debug)]
enum Sockets {
    Tcp(Vec<std::net::TcpListener>),
    Udp(Vec<std::net::UdpSocket>),
}

impl DataPlaneHandle {
    /// Reload, step one: binds the listeners that `config` adds or moves (a new service, or a
    /// new listen address, protocol, backlog, or UDP settings). Nothing changes for the
    /// workers yet; on an error (e.g. the address is taken) nothing was changed at all.
    pub fn prepare(&self, config: &Config) -> Result<PreparedListeners, DataPlaneError> {
        let control = self.control.lock();
        prepare(&control.bound, config, self.workers, &mut Inherited::none())
    }

    /// Reload, step two, once `snapshot` (built from the same config) is published: hands the
    /// prepared listeners to the workers, and retires the listeners of services that were
    /// removed or moved (their live connections run to their end). Returns the services that
    /// started listening.
    pub fn commit(&self, prepared: PreparedListeners, snapshot: &Snapshot) -> Vec<Listening> {
        let mut control = self.control.lock();
        let (per_worker, added) = commands(prepared, snapshot, self.workers);
        // Retire what the new snapshot no longer serves at the same sockets.
        let mut kept = Vec::new();
        for (name, bound) in std::mem::take(&mut control.bound) {
            let stays = !added.iter().any(|(n, _)| *n == name)
                && snapshot
                    .service(&name)
                    .is_some_and(|s| bound.serves(&s.config));
            if stays {
                kept.push((name, bound));
            } else {
                for mailbox in &control.mailboxes {
                    // A worker that is gone is draining: nothing to retire there.
                    let _ = mailbox.try_send(worker::Command::Retire { key: bound.key });
                }
                tracing::info!(service = %name, address = %bound.address, "listener closed by reload");
            }
        }
        for (mailbox, commands) in control.mailboxes.iter().zip(per_worker) {
            for command in commands {
                let _ = mailbox.try_send(command);
            }
        }
        let mut started = Vec::new();
        for (name, b) in &added {
            log_listening(name, b, self.workers);
            started.push(Listening {
                service: name.clone(),
                address: b.address,
            });
        }
        kept.extend(added);
        // Config order, as `listening` reports it.
        kept.sort_by_key(|(name, _)| {
            snapshot
                .services
                .iter()
                .position(|s| s.config.name == *name)
                .unwrap_or(usize::MAX)
        });
        control.bound = kept;
        started
    }
}

/// Binds what `config` needs beyond `bound` (see [`DataPlaneHandle::prepare`]).
pub(super) fn prepare(
    bound: &[(String, Bound)],
    config: &Config,
    workers: usize,
    inherited: &mut Inherited,
) -> Result<PreparedListeners, DataPlaneError> {
    let mut new = Vec::new();
    let options = BindOptions {
        freebind: config.runtime.freebind,
    };
    for service in &config.services {
        let existing = bound.iter().find(|(name, _)| *name == service.name);
        if existing.is_some_and(|(_, b)| b.serves(service)) {
            continue;
        }
        let taken = inherited.take(service, workers)?;
        let (sockets, address) = match (service.protocol, taken) {
            (Protocol::Tcp, Some((sockets, address))) => (
                Sockets::Tcp(sockets.into_iter().map(Into::into).collect()),
                address,
            ),
            (Protocol::Udp, Some((sockets, address))) => (
                Sockets::Udp(sockets.into_iter().map(Into::into).collect()),
                address,
            ),
            (Protocol::Tcp, None) => {
                let (listeners, address) =
                    bind_tcp_with(service.listen, workers, service.backlog, options)?;
                (Sockets::Tcp(listeners), address)
            }
            (Protocol::Udp, None) => {
                let (sockets, address) = bind_udp_with(service.listen, workers, options)?;
                (Sockets::Udp(sockets), address)
            }
        };
        let b = Bound {
            key: ListenerKey::fresh(),
            listen: service.listen,
            protocol: service.protocol,
            backlog: service.backlog,
            udp: service.udp.clone(),
            address,
            sockets: Vec::new(),
        };
        new.push((service.name.clone(), b, sockets));
    }
    Ok(PreparedListeners { new })
}

/// Turns prepared sockets into each worker's commands; returns them and the bound listeners.
pub(super) fn commands(
    prepared: PreparedListeners,
    snapshot: &Snapshot,
    workers: usize,
) -> (Vec<Vec<worker::Command>>, Vec<(String, Bound)>) {
    let mut per_worker: Vec<Vec<worker::Command>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for (name, mut b, sockets) in prepared.new {
        let Some(state) = snapshot.service(&name) else {
            continue;
        };
        let id = state.id;
        match sockets {
            Sockets::Tcp(listeners) => {
                for (worker, listener) in listeners.into_iter().enumerate() {
                    keep_copy(&mut b, &name, &listener);
                    per_worker[worker].push(worker::Command::AddTcp {
                        service: id,
                        key: b.key,
                        listener,
                    });
                }
            }
            Sockets::Udp(sockets) => {
                for (worker, socket) in sockets.into_iter().enumerate() {
                    keep_copy(&mut b, &name, &socket);
                    per_worker[worker].push(worker::Command::AddUdp {
                        key: b.key,
                        setup: udp::UdpSetup {
                            service: id,
                            socket,
                            max_flows: flow_share(b.udp.max_flows, workers, worker),
                        },
                    });
                }
            }
        }
        bound.push((name, b));
    }
    (per_worker, bound)
}

/// Keeps a copy of one worker's socket in `b` for a later handoff; without one (out of
/// descriptors) an upgrade binds that service afresh, which is logged here.
fn keep_copy(b: &mut Bound, name: &str, socket: &impl std::os::fd::AsFd) {
    match socket.as_fd().try_clone_to_owned() {
        Ok(copy) => b.sockets.push(copy),
        Err(e) => tracing::warn!(service = %name, error = %e,
            "cannot keep a copy of a listening socket for a binary upgrade"),
    }
}

pub(super) fn log_listening(name: &str, b: &Bound, workers: usize) {
    tracing::info!(service = %name, address = %b.address, workers,
        protocol = b.protocol.name(), "listening");
}

/// Worker `index`'s share of a UDP service's `udp_max_flows`: the shares add up to `max_flows`
/// (each worker at least 1), so the service's flows stay within the bound.
fn flow_share(max_flows: usize, workers: usize, index: usize) -> usize {
    let workers = workers.max(1);
    let share = max_flows / workers + usize::from(index < max_flows % workers);
    share.max(1)
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
