//! The state of one UDP flow and its life: what the flow table keeps for a flow, its upstream
//! link, and how a flow ends.
//!
//! Owns: a flow's [`Upstream`] (the service state it was opened under, its link, the backends
//! that failed it), a [`Link`] (upstream socket, reply reader, active count of its backend),
//! opening a link (waiting for room under the service's upstream fd bound), closing it when the
//! flow ends or the backend fails, ending a flow whose replies are all in or that was evicted,
//! the flow counters kept by those, and the access-log line of a flow.
//! Does not own: the flow table's rules ([`crate::balancer::flowtable`]), the service's socket
//! and the datagrams going up (the parent module), or reading replies (`replies`).

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use compio::net::UdpSocket;
use compio::runtime::JoinHandle;

use crate::balancer::flowtable::{Flow, ReplyVerdict};
use crate::config::UdpMode;
use crate::control::log_limit::Reason;
use crate::control::{ConnectFailure, ServiceState};

use super::UdpService;
use super::replies::read_replies;
use super::upstream::{FdHold, close_upstream, is_backend_failure, open_upstream};

/// What the flow table keeps for a flow.
pub(super) struct Upstream {
    /// The service state the flow was opened under (backend indices refer to it).
    pub(super) state: Arc<ServiceState>,
    /// The upstream socket and its reader; `None` after the backend failed, until the next
    /// client datagram opens a new one.
    pub(super) link: Option<Link>,
    /// Backends that failed this flow, avoided when it picks again. Allocated on first failure.
    pub(super) failed: Vec<usize>,
}

impl Upstream {
    pub(super) fn new(state: Arc<ServiceState>) -> Upstream {
        let active = state
            .counters
            .udp_flows_active
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        state
            .counters
            .udp_flows_peak
            .fetch_max(active, Ordering::Relaxed);
        state.counters.udp_flows_opened.inc();
        Upstream {
            state,
            link: None,
            failed: Vec::new(),
        }
    }

    pub(super) fn link_id(&self) -> Option<u64> {
        self.link.as_ref().map(|l| l.id)
    }

    /// Ends the flow's link, if any (see [`Link::close`]).
    pub(super) fn close_link(&mut self) {
        if let Some(link) = self.link.take() {
            link.close();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.state
            .counters
            .udp_flows_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A flow's upstream socket, the task reading replies from it, and (flow mode) its backend.
pub(super) struct Link {
    pub(super) id: u64,
    pub(super) socket: UdpSocket,
    /// Flow mode: the backend the socket is connected to, counted active while the link lives.
    pub(super) backend: Option<usize>,
    pub(super) state: Arc<ServiceState>,
    /// Dropping it cancels the reader; a reader ending its own link detaches it instead.
    pub(super) reader: Option<JoinHandle<()>>,
    /// The socket's fd, counted in the service's upstream fds until it is closed.
    hold: Option<FdHold>,
}

impl Link {
    /// Ends the link: cancels its reader and closes its socket once the reader's pending
    /// receive is gone, keeping the fd counted until then. A link merely dropped (the drain)
    /// stops being counted at once.
    pub(super) fn close(mut self) {
        let hold = self.hold.take();
        let socket = self.socket.clone();
        drop(self);
        if let Some(hold) = hold {
            close_upstream(socket, hold);
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(b) = self.backend.and_then(|b| self.state.backends.get(b)) {
            b.counters.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Where one client datagram goes.
pub(super) struct Target {
    pub(super) link: u64,
    pub(super) socket: UdpSocket,
    /// Per-packet mode: the backend address to send to; flow mode: `None` (connected socket).
    pub(super) dest: Option<SocketAddr>,
    /// The backend the datagram goes to (for its byte counter).
    pub(super) backend: Option<usize>,
}

/// Why a flow ended: the access log's `end` field.
#[derive(Clone, Copy)]
pub(super) enum End {
    IdleTimeout,
    Evicted,
    Replies,
    Shutdown,
}

impl End {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            End::IdleTimeout => "idle_timeout",
            End::Evicted => "evicted",
            End::Replies => "replies",
            End::Shutdown => "shutdown",
        }
    }
}

impl UdpService {
    /// Before a datagram from `client` when the service's upstream fds are at their limit: if
    /// the datagram will open an upstream socket (a new flow, or a flow whose link failed),
    /// evicts the least recently used flow first when the table is full (a new flow), then waits
    /// until an fd being closed is closed. Datagrams arriving meanwhile wait in the service
    /// socket's buffer; the flows' replies do not wait.
    pub(super) async fn room_for_link(&self, client: SocketAddr) {
        let new_flow = match self.flows.borrow().get(&client) {
            Some(flow) if flow.value.link.is_some() => return,
            Some(_) => false,
            None => true,
        };
        if new_flow {
            self.make_room();
        }
        self.fds.room().await;
    }

    /// Evicts the least recently used flow when the table is full, and closes its link.
    pub(super) fn make_room(&self) {
        let evicted = self.flows.borrow_mut().make_room();
        if let Some(flow) = evicted {
            self.evicted(flow);
        }
    }

    /// Opens a flow's upstream socket (connected to a newly picked backend in flow mode) and
    /// starts its reader. `None` (the datagram is dropped) also when the service's upstream fds
    /// are at their limit, which `room_for_link` waits out beforehand.
    pub(super) fn open_link(
        self: &Rc<Self>,
        state: &Arc<ServiceState>,
        failed: &mut Vec<usize>,
        client: SocketAddr,
        candidates: &mut Vec<usize>,
    ) -> Option<Link> {
        debug_assert!(
            !self.fds.at_limit(),
            "upstream socket opened above the fd bound"
        );
        if self.fds.at_limit() {
            return None;
        }
        let (backend, opened) = match self.mode {
            UdpMode::Flow => {
                let b = self.pick(state, client.ip(), failed, candidates)?;
                let address = state.backends[b].address();
                (Some(b), open_upstream(address.is_ipv6(), Some(address)))
            }
            UdpMode::PerPacket => (None, open_upstream(self.backends_v6, None)),
        };
        let socket = match opened.and_then(UdpSocket::from_std) {
            Ok(s) => s,
            Err(e) => {
                if let Some(suppressed) = Reason::UdpUpstreamSocket.admit() {
                    tracing::warn!(service = %state.config.name, %client, error = %e, suppressed,
                        "cannot open an upstream udp socket: datagram dropped");
                }
                return None;
            }
        };
        if let Some(b) = backend {
            let counters = &state.backends[b].counters;
            counters.active.fetch_add(1, Ordering::Relaxed);
            counters.connections.inc();
        }
        let hold = self.fds.hold();
        let id = self.next_link.get();
        self.next_link.set(id + 1);
        let reader = compio::runtime::spawn(read_replies(
            self.clone(),
            state.clone(),
            client,
            id,
            socket.clone(),
            backend,
        ));
        Some(Link {
            id,
            socket,
            backend,
            state: state.clone(),
            reader: Some(reader),
            hold: Some(hold),
        })
    }

    /// The flow's upstream socket reported an error: drop the link so the next client datagram
    /// opens a new one; when the error says the backend is not there (refused, unreachable),
    /// count it against the backend and remember it so the flow picks another one. `from_reader`:
    /// called by the link's own reader task, which must not cancel itself.
    pub(super) fn link_failed(
        &self,
        client: SocketAddr,
        link: u64,
        error: &io::Error,
        from_reader: bool,
    ) {
        let mut flows = self.flows.borrow_mut();
        let Some(flow) = flows.get_mut(&client) else {
            return;
        };
        if flow.value.link_id() != Some(link) {
            return;
        }
        let up = &mut flow.value;
        let Some(mut old) = up.link.take() else {
            return;
        };
        if let Some(b) = old.backend.filter(|_| is_backend_failure(error)) {
            if let Some(backend) = up.state.backends.get(b) {
                backend.counters.connect_failed(ConnectFailure::of(error));
                tracing::debug!(service = %up.state.config.name, %client,
                    backend = %backend.address(), %error, "udp backend failed for a flow");
            }
            if !up.failed.contains(&b) {
                up.failed.push(b);
            }
        }
        drop(flows);
        if from_reader && let Some(reader) = old.reader.take() {
            reader.detach();
        }
        old.close();
    }

    /// Ends a flow whose replies are all in (`udp_replies`), asking the rule again: a client
    /// datagram may have arrived while the last reply was being sent. Called by the flow's own
    /// reader; returns whether the flow ended.
    pub(super) fn answered(&self, client: SocketAddr, link: u64) -> bool {
        let mut flows = self.flows.borrow_mut();
        if flows.get(&client).and_then(|f| f.value.link_id()) != Some(link)
            || flows.verdict(&client, self.replies) != Some(ReplyVerdict::Done)
        {
            return false;
        }
        let Some(mut flow) = flows.remove(&client) else {
            return false;
        };
        drop(flows);
        if let Some(reader) = flow.value.link.as_mut().and_then(|l| l.reader.take()) {
            reader.detach();
        }
        flow.value.state.counters.udp_flows_answered.inc();
        self.log_end(&flow, End::Replies);
        flow.value.close_link();
        true
    }

    pub(super) fn evicted(&self, mut flow: Flow<Upstream>) {
        let counters = &flow.value.state.counters;
        counters.udp_flows_evicted.inc();
        if !self.warned_full.replace(true) {
            tracing::warn!(service = %flow.value.state.config.name, worker = self.worker.index,
                flows = self.flows.borrow().capacity(),
                "udp flow table full: evicting the least recently used flows");
        }
        self.log_end(&flow, End::Evicted);
        flow.value.close_link();
    }

    pub(super) fn log_end(&self, flow: &Flow<Upstream>, end: End) {
        let state = &flow.value.state;
        if !state.config.access_log {
            return;
        }
        let backend = flow
            .value
            .link
            .as_ref()
            .and_then(|l| l.backend)
            .and_then(|b| state.backends.get(b))
            .map(|b| b.address().to_string());
        tracing::info!(
            target: "ringlb::access",
            service = %state.config.name,
            client = %flow.client,
            backend = backend.as_deref().unwrap_or("-"),
            datagrams_up = flow.datagrams_up,
            datagrams_down = flow.datagrams_down,
            bytes_up = flow.bytes_up,
            bytes_down = flow.bytes_down,
            duration_ms = flow.started.elapsed().as_millis() as u64,
            end = end.as_str(),
        );
    }
}
