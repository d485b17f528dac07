//! Listening sockets that come from outside the process: passed by systemd (socket activation)
//! or by the ringlb this process replaces (a binary upgrade), and this process's own sockets as
//! it hands them to its successor.
//!
//! Owns: checking an inherited socket against the service that takes it (socket type, address,
//! a TCP socket listening), spreading it over the workers, and duplicating the bound sockets
//! for a handoff ([`DataPlaneHandle::listener_sockets`]). Does not own: where the sockets came
//! from (`crate::systemd`, `crate::upgrade`) or how the workers serve them (`worker`).
//!
//! Workers and sockets: ringlb binds one `SO_REUSEPORT` socket per worker and service. An
//! upgrade passes every worker's socket, matched by worker index (a successor with more workers
//! than were passed shares the passed ones round-robin; surplus ones are closed). systemd passes
//! one socket per name: every worker takes a duplicate of it, so they share one accept queue
//! (for UDP, one receive queue: a client's datagrams may reach any worker, each of which then
//! keeps its own flow of that client).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{Socket, Type};

use crate::config::{Protocol, Service};

use super::{DataPlaneError, DataPlaneHandle, UDP_SOCKET_BUFFER};

/// Listening sockets handed to this process, by service name.
#[derive(Debug, Default)]
pub struct Inherited {
    /// A socket that does not fit its service is an error (systemd: the operator's units
    /// disagree with the config) rather than closed and replaced by a fresh bind (an upgrade
    /// whose new config moved the service).
    strict: bool,
    sockets: HashMap<String, Vec<OwnedFd>>,
}

/// One service's sockets as handed to a successor: one per worker, in worker order.
#[derive(Debug)]
pub struct Passed {
    /// The service's name.
    pub service: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// Duplicates of the workers' sockets.
    pub fds: Vec<OwnedFd>,
}

impl Inherited {
    /// No socket: every listener is bound.
    pub fn none() -> Inherited {
        Inherited::default()
    }

    /// Sockets passed by systemd: one that does not fit its service stops the start.
    pub fn strict() -> Inherited {
        Inherited {
            strict: true,
            sockets: HashMap::new(),
        }
    }

    /// Sockets passed by the ringlb this process replaces: one that does not fit its service
    /// (the new config moved it) is closed and the service binds afresh.
    pub fn handed_over() -> Inherited {
        Inherited::default()
    }

    /// Adds `service`'s sockets (one per worker, or one for all).
    pub fn insert(&mut self, service: String, fds: Vec<OwnedFd>) {
        if !fds.is_empty() {
            self.sockets.insert(service, fds);
        }
    }

    /// Whether no socket is left to take.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// `service`'s sockets for `workers` workers and the address they are bound to, when some
    /// were handed over and fit it; `None` when the service must bind its own.
    pub(super) fn take(
        &mut self,
        service: &Service,
        workers: usize,
    ) -> Result<Option<(Vec<Socket>, SocketAddr)>, DataPlaneError> {
        let Some(fds) = self.sockets.remove(&service.name) else {
            return Ok(None);
        };
        let sockets: Vec<Socket> = fds.into_iter().map(Socket::from).collect();
        let address = match fits(&sockets[0], service) {
            Ok(address) => address,
            Err(reason) if self.strict => {
                return Err(DataPlaneError::Inherited {
                    service: service.name.clone(),
                    reason,
                });
            }
            Err(reason) => {
                tracing::info!(service = %service.name, reason = %reason,
                    "the handed-over socket does not fit the new config: closed, binding afresh");
                return Ok(None);
            }
        };
        let error = |source| DataPlaneError::Bind { address, source };
        let mut per_worker = Vec::with_capacity(workers);
        for index in 0..workers {
            let socket = match sockets.get(index) {
                Some(s) => s.try_clone().map_err(error)?,
                None => sockets[index % sockets.len()].try_clone().map_err(error)?,
            };
            match service.protocol {
                // Takes the config's backlog (listen(2) again on a listening socket does).
                Protocol::Tcp => socket
                    .listen(i32::try_from(service.backlog).unwrap_or(i32::MAX))
                    .map_err(error)?,
                Protocol::Udp => {
                    // Best effort, as for the sockets ringlb binds.
                    let _ = socket.set_recv_buffer_size(UDP_SOCKET_BUFFER);
                    let _ = socket.set_send_buffer_size(UDP_SOCKET_BUFFER);
                }
            }
            per_worker.push(socket);
        }
        Ok(Some((per_worker, address)))
    }

    /// Closes what no service took, saying so.
    pub(super) fn close_rest(&mut self) {
        for (name, fds) in self.sockets.drain() {
            tracing::info!(service = %name, sockets = fds.len(),
                "handed-over sockets of a service the config no longer has: closed");
        }
    }
}

/// The address `socket` serves `service` on, or why it cannot.
fn fits(socket: &Socket, service: &Service) -> Result<SocketAddr, String> {
    let kind = socket
        .r#type()
        .map_err(|e| format!("cannot read its type: {e}"))?;
    let (wanted, name) = match service.protocol {
        Protocol::Tcp => (Type::STREAM, "TCP (stream)"),
        Protocol::Udp => (Type::DGRAM, "UDP (datagram)"),
    };
    if kind != wanted {
        return Err(format!("it is not a {name} socket"));
    }
    let address = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| "it is not an IP socket".to_owned())?;
    let port_fits = service.listen.port() == 0 || service.listen.port() == address.port();
    if address.ip() != service.listen.ip() || !port_fits {
        return Err(format!(
            "it is bound to {address}, the config listens on {}",
            service.listen
        ));
    }
    if service.protocol == Protocol::Tcp {
        let listening = rustix::net::sockopt::socket_acceptconn(socket)
            .map_err(|e| format!("cannot read SO_ACCEPTCONN: {e}"))?;
        if !listening {
            return Err("it is a TCP socket that does not listen".to_owned());
        }
    }
    Ok(address)
}

impl DataPlaneHandle {
    /// Duplicates of every listening socket, per service in config order and per worker in
    /// worker order, to hand to a successor. Empty once the drain began (the sockets are
    /// closed then).
    pub fn listener_sockets(&self) -> std::io::Result<Vec<Passed>> {
        let control = self.control.lock();
        let mut passed = Vec::new();
        for (name, bound) in &control.bound {
            let fds = bound
                .sockets
                .iter()
                .map(OwnedFd::try_clone)
                .collect::<std::io::Result<Vec<_>>>()?;
            passed.push(Passed {
                service: name.clone(),
                protocol: bound.protocol(),
                fds,
            });
        }
        Ok(passed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(toml: &str) -> Service {
        let text = format!(
            "[[service]]\nname = \"s\"\n{toml}\n[[service.backend]]\naddress = \"127.0.0.1:1\"\n"
        );
        crate::config::Config::parse(&text, "test")
            .unwrap()
            .services
            .remove(0)
    }

    #[test]
    fn a_socket_that_does_not_fit_is_refused_when_strict_and_replaced_otherwise() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = service("listen = \"127.0.0.1:0\"\nprotocol = \"tcp\"");
        let mut strict = Inherited::strict();
        strict.insert("s".into(), vec![OwnedFd::from(udp.try_clone().unwrap())]);
        match strict.take(&tcp, 2) {
            Err(DataPlaneError::Inherited { service, reason }) => {
                assert_eq!(service, "s");
                assert!(reason.contains("not a TCP"), "{reason}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let mut lenient = Inherited::handed_over();
        lenient.insert("s".into(), vec![OwnedFd::from(udp)]);
        assert!(lenient.take(&tcp, 2).unwrap().is_none());
    }

    #[test]
    fn a_listening_socket_on_the_address_is_shared_by_every_worker() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let svc = service(&format!("listen = \"{address}\"\nprotocol = \"tcp\""));
        let mut inherited = Inherited::strict();
        inherited.insert("s".into(), vec![OwnedFd::from(listener)]);
        let (sockets, bound) = inherited.take(&svc, 3).unwrap().unwrap();
        assert_eq!(bound, address);
        assert_eq!(sockets.len(), 3);
        assert!(inherited.is_empty());
        // A socket bound elsewhere does not fit.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut inherited = Inherited::strict();
        inherited.insert("s".into(), vec![OwnedFd::from(other)]);
        assert!(matches!(
            inherited.take(&svc, 1),
            Err(DataPlaneError::Inherited { .. })
        ));
    }
}
