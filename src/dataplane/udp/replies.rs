//! Reading a link's replies: the task that receives the datagrams arriving on one upstream
//! socket and hands each to the link's flow, with one-shot io_uring receives while the link is
//! young, one multishot receive once it has shown it lives on, and the one-shot way again for a
//! while whenever the multishot receive cannot go on.
//!
//! Owns the reader's loop and the choice between the two ways of receiving. Does not own what a
//! reply does (the flow's [`Replies`]: sending it to the client, counting it, ending the flow,
//! see `upstream`), the multishot receive itself (`multishot`, shared with the service socket's
//! receive loop), the upstream socket or its fd (`upstream`).
//!
//! See the parent module's "Receiving replies" for why and when each way is used.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;

use compio::buf::IoBuf;
use compio::net::UdpSocket;

use crate::control::ServiceState;

use super::multishot::{self, Pooled, Rearm};
use super::upstream::{Step, backend_index, is_backend_failure, is_pool_empty, recv_now};
use super::{DRAIN_BATCH, UdpService};

/// The wait at which a link's reader arms its multishot receive: the third. The first two
/// replies come by one-shot receives, so a flow of one request and one or two replies (a DNS
/// query, `udp_replies = 1` or `2`) never pays for arming a multishot receive and cancelling it
/// when the flow ends (two io_uring requests, where its one-shot receives cost one per reply);
/// from the third reply on, each reply costs one completion and no request.
pub(super) const MULTISHOT_AT: u32 = 3;

/// What a reader does with each reply of its link.
pub(super) trait Replies {
    /// Sends one reply (`data`, from `source` when known) on at once (see
    /// `UdpService::reply_now`); [`Step::Blocked`] when it must wait for [`Replies::send_blocked`].
    fn reply_now(&self, data: &[u8], source: Option<SocketAddr>) -> Step;
    /// Sends a reply that [`Replies::reply_now`] found blocked (`blocked`), waiting for room.
    async fn send_blocked<B: IoBuf>(&self, buf: B, blocked: Step) -> Step;
    /// The upstream socket failed to receive: the link ends.
    fn failed(&self, e: &io::Error);
    /// A buffer of the pool went back to it.
    fn buffer_back(&self);
    /// Waits until a pool buffer may be free again.
    async fn wait_for_buffer(&self);
    /// Where replies taken with non-blocking receives land; never borrowed across an await.
    fn scratch(&self) -> &RefCell<Vec<u8>>;
    /// The service's name, for logs.
    fn name(&self) -> &str;
}

/// The replies of one link of a flow: each goes to the flow's client.
struct LinkReplies {
    svc: Rc<UdpService>,
    state: Arc<ServiceState>,
    client: SocketAddr,
    link: u64,
    /// Flow mode: the backend the socket is connected to; per-packet mode: `None`, each reply's
    /// source says which backend sent it.
    backend: Option<usize>,
}

impl Replies for LinkReplies {
    fn reply_now(&self, data: &[u8], source: Option<SocketAddr>) -> Step {
        let from = self
            .backend
            .or_else(|| source.and_then(|s| backend_index(&self.state, s)));
        self.svc
            .reply_now(&self.state, self.client, self.link, from, data)
    }

    async fn send_blocked<B: IoBuf>(&self, buf: B, blocked: Step) -> Step {
        let Step::Blocked(from, verdict) = blocked else {
            return blocked;
        };
        let len = buf.buf_len();
        let sent = self.svc.socket.send_to(buf, self.client).await.0;
        self.svc.reply_sent(
            &self.state,
            self.client,
            self.link,
            from,
            len,
            sent,
            verdict,
        )
    }

    fn failed(&self, e: &io::Error) {
        self.svc
            .upstream_failed(&self.state, self.client, self.link, e);
    }

    fn buffer_back(&self) {
        self.svc.buffer_freed.notify(1);
    }

    async fn wait_for_buffer(&self) {
        self.svc.wait_for_buffer().await;
    }

    fn scratch(&self) -> &RefCell<Vec<u8>> {
        &self.svc.scratch
    }

    fn name(&self) -> &str {
        &self.svc.name
    }
}

/// Reads the replies of one link and sends them to the flow's client, until the link fails, the
/// flow's replies are all in, or the task is cancelled (the flow ended: dropping the task drops
/// its pending receive, one-shot or multishot, which cancels it).
pub(super) async fn read_replies(
    svc: Rc<UdpService>,
    state: Arc<ServiceState>,
    client: SocketAddr,
    link: u64,
    socket: UdpSocket,
    backend: Option<usize>,
) {
    let replies = LinkReplies {
        svc,
        state,
        client,
        link,
        backend,
    };
    read(&socket, backend.is_some(), &replies).await;
}

/// What a reader does after one run of a way of receiving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Receive again (a multishot receive at once, if due).
    Receive,
    /// The multishot receive could not go on: one-shot receives for this long.
    FallBack(std::time::Duration),
    /// The link failed or the flow ended: the task ends.
    Stop,
}

/// Reads the replies arriving on `socket` (`connected`: to one backend) and hands each to
/// `replies`, until it says stop or the link fails.
async fn read(socket: &UdpSocket, connected: bool, replies: &impl Replies) {
    let mut pace = DrainPace::default();
    // One-shot waits so far; counts up to `MULTISHOT_AT`.
    let mut waits: u32 = 0;
    let mut rearm = Rearm::now();
    loop {
        let next = if waits + 1 >= MULTISHOT_AT && rearm.due() {
            read_multishot(socket, replies).await
        } else {
            waits = waits.saturating_add(1);
            read_one_shot(socket, connected, replies, &mut pace).await
        };
        match next {
            Next::Receive => {}
            Next::FallBack(wait) => rearm.fall_back(wait),
            Next::Stop => return,
        }
    }
}

/// Receives replies with one multishot receive until it ends, the pool runs dry, the link fails
/// or the flow's replies are all in.
async fn read_multishot(socket: &UdpSocket, replies: &impl Replies) -> Next {
    let stream = match multishot::arm(socket) {
        Ok(stream) => stream,
        Err(e) => return Next::FallBack(multishot::failed(replies.name(), &e)),
    };
    let mut stream = pin!(stream);
    let mut received = false;
    loop {
        let reply = match multishot::next(stream.as_mut(), &mut received).await {
            Ok(datagram) => Pooled::new(datagram),
            Err(multishot::Ended::Rearm) => return Next::Receive,
            // The reply that found no buffer is still queued on the socket, where the one-shot
            // receive waits for a buffer to come back.
            Err(multishot::Ended::FallBack(wait)) => return Next::FallBack(wait),
            // The backend refused or cannot be reached: the link ends, as on the one-shot way.
            Err(multishot::Ended::Failed(e)) if is_backend_failure(&e) => {
                replies.failed(&e);
                return Next::Stop;
            }
            // The kernel refused or failed the multishot receive itself: the one-shot way goes
            // on, and ends the link if the socket's error persists.
            Err(multishot::Ended::Failed(e)) => {
                return Next::FallBack(multishot::failed(replies.name(), &e));
            }
        };
        if forward(replies, reply.payload, reply.source).await == Step::Stop {
            // Dropping the stream cancels the receive.
            return Next::Stop;
        }
    }
}

/// Sends one reply received into a pool buffer on (at once, or waiting for room when the
/// service's socket is full), then tells the waiters that its buffer is back in the pool.
async fn forward<B: IoBuf>(replies: &impl Replies, buf: B, source: Option<SocketAddr>) -> Step {
    let step = replies.reply_now(buf.as_init(), source);
    let step = match step {
        Step::Blocked(..) => replies.send_blocked(buf, step).await,
        step => {
            drop(buf);
            step
        }
    };
    replies.buffer_back();
    step
}

/// The one-shot way: waits for one reply with an io_uring receive into the worker's buffer
/// pool, then takes up to [`DRAIN_BATCH`] more already queued with non-blocking receives into
/// the service's scratch buffer, so a flow with several replies in flight costs one trip round
/// the event loop, not one per reply; while replies come one at a time, [`DrainPace`] skips
/// them.
async fn read_one_shot(
    socket: &UdpSocket,
    connected: bool,
    replies: &impl Replies,
    pace: &mut DrainPace,
) -> Next {
    const EMPTY: &[u8] = &[];
    // `None` is an empty datagram (whose source the pool receive does not report).
    let received = if connected {
        socket.recv_managed(0).await.map(|buf| (buf, None))
    } else {
        socket.recv_from_managed(0).await.map(|r| match r {
            Some((buf, from)) => (Some(buf), Some(from)),
            None => (None, None),
        })
    };
    let (buf, source) = match received {
        Ok(r) => r,
        Err(e) if is_pool_empty(&e) => {
            replies.wait_for_buffer().await;
            return Next::Receive;
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Next::Receive,
        Err(e) => {
            replies.failed(&e);
            return Next::Stop;
        }
    };
    let step = match buf {
        Some(buf) => forward(replies, buf, source).await,
        None => forward(replies, EMPTY, source).await,
    };
    if step == Step::Stop {
        return Next::Stop;
    }
    let mut taken = 0;
    let mut drained = false;
    while taken < DRAIN_BATCH && pace.tries(taken) {
        // No await between the receive and the use of the scratch buffer: no other task can
        // touch it meanwhile.
        let received = recv_now(socket, &mut replies.scratch().borrow_mut());
        let source = match received {
            Ok(None) => {
                drained = true;
                break;
            }
            Ok(Some(source)) => source,
            Err(e) => {
                replies.failed(&e);
                return Next::Stop;
            }
        };
        let step = replies.reply_now(&replies.scratch().borrow(), Some(source));
        let step = match step {
            Step::Blocked(..) => {
                // Rare (the service socket's buffer is full): the reply leaves the scratch
                // buffer, which other readers use while this one waits.
                let owned = replies.scratch().borrow().clone();
                replies.send_blocked(owned, step).await
            }
            step => step,
        };
        if step == Step::Stop {
            return Next::Stop;
        }
        taken += 1;
    }
    pace.waits(taken, drained);
    Next::Receive
}

/// While wake-ups of a reader find one reply each, every this many wake-ups the reader still
/// tries a non-blocking receive, to notice that replies now come faster (see [`DrainPace`]).
const DRAIN_PROBE_EVERY: u32 = 8;

/// Whether a reader on the one-shot way tries non-blocking receives after an io_uring wake-up.
///
/// Receiving until `recvfrom` fails with `EAGAIN` costs one failed system call per wake-up: when
/// replies come one at a time (request and response), that doubles the receives per reply. An
/// io_uring receive is batched with the worker's other requests and completes at once when a
/// reply is already queued. So while wake-ups find one reply each, the reader waits on io_uring
/// again at once, and only every [`DRAIN_PROBE_EVERY`] wake-ups tries a non-blocking receive;
/// once one finds a reply queued, it takes replies until `EAGAIN` (or [`DRAIN_BATCH`]) again.
#[derive(Debug, Default)]
struct DrainPace {
    /// Whether the last wake-up that tried found replies queued behind the first.
    bursting: bool,
    /// Wake-ups while not bursting (every [`DRAIN_PROBE_EVERY`]th tries a receive).
    single: u32,
}

impl DrainPace {
    /// Whether to try another non-blocking receive after `taken` replies since the wake-up.
    fn tries(&self, taken: usize) -> bool {
        taken > 0 || self.bursting || self.single % DRAIN_PROBE_EVERY == DRAIN_PROBE_EVERY - 1
    }

    /// The reader waits on io_uring again after taking `taken` replies with non-blocking
    /// receives; the last one found the socket empty (`EAGAIN`) when `drained`.
    fn waits(&mut self, taken: usize, drained: bool) {
        // A receive that was not tried says nothing.
        if taken > 0 || drained {
            self.bursting = taken > 0;
        }
        if !self.bursting {
            self.single = self.single.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::MAX_DATAGRAM;
    use super::super::multishot::testing::{runtime, wait_within};
    use super::super::upstream::{CLOSING_SLACK, FdHold, UpstreamFds, closes_then_uncounts};
    use super::*;
    use std::cell::Cell;
    use std::mem::MaybeUninit;
    use std::time::{Duration, Instant};

    /// Runs a reader's pacing over wake-ups that each find `queued` replies behind the first:
    /// the non-blocking receives it tries per wake-up (an `EAGAIN` counts as one).
    fn receives_per_wakeup(pace: &mut DrainPace, queued: &[usize]) -> Vec<usize> {
        queued
            .iter()
            .map(|&queued| {
                let mut taken = 0;
                while taken < DRAIN_BATCH && pace.tries(taken) {
                    if taken == queued {
                        pace.waits(taken, true);
                        return taken + 1;
                    }
                    taken += 1;
                }
                pace.waits(taken, false);
                taken
            })
            .collect()
    }

    #[test]
    fn one_reply_per_wakeup_costs_no_failed_receive_but_a_burst_is_noticed() {
        let mut pace = DrainPace::default();
        let n = DRAIN_PROBE_EVERY as usize;
        // Replies one at a time: one probe (failing) every DRAIN_PROBE_EVERY wake-ups.
        let tried = receives_per_wakeup(&mut pace, &vec![0; 4 * n]);
        assert_eq!(tried.iter().sum::<usize>(), 4, "{tried:?}");
        // Replies start to queue: noticed at the next probe at the latest, then drained.
        let tried = receives_per_wakeup(&mut pace, &vec![3; n + 2]);
        let first = tried.iter().position(|&t| t > 0).expect("a probe");
        assert!(first < n, "{tried:?}");
        assert!(tried[first..].iter().all(|&t| t == 4), "{tried:?}");
        // A burst larger than the batch: the batch is taken, and draining goes on.
        let tried = receives_per_wakeup(&mut pace, &[DRAIN_BATCH + 5, 2]);
        assert_eq!(tried, [DRAIN_BATCH, 3]);
        // Back to one at a time: the next wake-up still tries (and fails), then probes only.
        let tried = receives_per_wakeup(&mut pace, &vec![0; 2 * n]);
        assert_eq!(tried[0], 1);
        assert!(tried[1..].iter().sum::<usize>() <= 2, "{tried:?}");
    }

    /// Records each reply's number and whether it came through the scratch buffer (the one-shot
    /// way's non-blocking receives). The reply numbered `block` is sent the blocked way, which
    /// waits (holding the reply's buffer, keeping the reader busy) until `released`.
    struct Recorder {
        got: RefCell<Vec<(u32, bool)>>,
        block: Cell<Option<u32>>,
        released: Cell<bool>,
        scratch: RefCell<Vec<u8>>,
        /// Notified when a reply's pool buffer goes back, as the service's is.
        freed: event_listener::Event,
    }

    impl Recorder {
        fn new() -> Rc<Recorder> {
            Rc::new(Recorder {
                got: RefCell::new(Vec::new()),
                block: Cell::new(None),
                released: Cell::new(false),
                scratch: RefCell::new(Vec::with_capacity(MAX_DATAGRAM)),
                freed: event_listener::Event::new(),
            })
        }

        fn count(&self) -> usize {
            self.got.borrow().len()
        }
    }

    impl Replies for Recorder {
        fn reply_now(&self, data: &[u8], _source: Option<SocketAddr>) -> Step {
            let seq = u32::from_le_bytes(data[..4].try_into().unwrap());
            let scratch = data.as_ptr() == self.scratch.borrow().as_ptr();
            self.got.borrow_mut().push((seq, scratch));
            if self.block.get() == Some(seq) {
                Step::Blocked(0, None)
            } else {
                Step::Next
            }
        }

        async fn send_blocked<B: IoBuf>(&self, buf: B, blocked: Step) -> Step {
            assert_eq!(blocked, Step::Blocked(0, None));
            let released = wait_within(Duration::from_secs(5), || self.released.get()).await;
            assert!(released, "the blocked reply was never released");
            self.released.set(false);
            self.block.set(None);
            drop(buf);
            Step::Next
        }

        fn failed(&self, e: &io::Error) {
            panic!("the link failed: {e}");
        }

        fn buffer_back(&self) {
            self.freed.notify(1);
        }

        async fn wait_for_buffer(&self) {
            super::super::wait_for_buffer(&self.freed).await;
        }

        fn scratch(&self) -> &RefCell<Vec<u8>> {
            &self.scratch
        }

        fn name(&self) -> &str {
            "test"
        }
    }

    /// A link's upstream socket connected to a backend's socket, which is connected back.
    async fn link() -> (UdpSocket, std::net::UdpSocket) {
        let backend = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(backend.local_addr().unwrap()).await.unwrap();
        backend.connect(socket.local_addr().unwrap()).unwrap();
        (socket, backend)
    }

    /// Starts a reader of `socket`'s replies handing them to `recorder`.
    fn start(socket: &UdpSocket, recorder: &Rc<Recorder>) -> compio::runtime::JoinHandle<()> {
        let (socket, recorder) = (socket.clone(), recorder.clone());
        compio::runtime::spawn(async move { read(&socket, true, &*recorder).await })
    }

    /// Whether a datagram is queued on `socket` (a non-blocking peek).
    fn queued(socket: &UdpSocket) -> bool {
        let mut buf = [MaybeUninit::<u8>::uninit(); 8];
        let peek = libc::MSG_PEEK | libc::MSG_DONTWAIT;
        match socket2::SockRef::from(socket).recv_with_flags(&mut buf, peek) {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("peek failed: {e}"),
        }
    }

    /// Sends reply `seq` and waits until the reader has handed it on.
    async fn reply(backend: &std::net::UdpSocket, recorder: &Recorder, seq: u32) {
        backend.send(&seq.to_le_bytes()).unwrap();
        let handed = wait_within(Duration::from_secs(5), || recorder.count() > seq as usize);
        assert!(handed.await, "reply {seq} was not handed on");
    }

    /// Whether the reader takes replies with a multishot receive now: reply `seq` is sent the
    /// blocked way, keeping the reader busy, and reply `seq + 1` arriving meanwhile leaves the
    /// socket within `within` only if a receive is armed. Both are handed on before it returns.
    async fn multishot_armed(
        backend: &std::net::UdpSocket,
        socket: &UdpSocket,
        recorder: &Recorder,
        seq: u32,
        within: Duration,
    ) -> bool {
        recorder.block.set(Some(seq));
        reply(backend, recorder, seq).await;
        backend.send(&(seq + 1).to_le_bytes()).unwrap();
        let taken = wait_within(within, || !queued(socket)).await;
        recorder.released.set(true);
        let handed = wait_within(Duration::from_secs(5), || {
            recorder.count() > seq as usize + 1
        });
        assert!(handed.await, "reply {} was not handed on", seq + 1);
        taken
    }

    /// A backlog of replies ten times the pool, arriving once the link's multishot receive is
    /// armed: the receive fills every buffer and ends, the one-shot way reads the rest, every
    /// reply is handed on once and in order, and a multishot receive is armed again afterwards.
    #[test]
    fn a_backlog_of_replies_beyond_the_pool_is_all_read_then_the_multishot_receive_resumes() {
        const POOL: u16 = 4;
        const BACKLOG: u32 = 40;
        runtime(POOL).block_on(async {
            let (socket, backend) = link().await;
            let recorder = Recorder::new();
            let reader = start(&socket, &recorder);
            // The first replies come one at a time; the reader then waits on its multishot
            // receive.
            let first = MULTISHOT_AT - 1;
            for seq in 0..first {
                reply(&backend, &recorder, seq).await;
            }
            let end = first + BACKLOG;
            for seq in first..end {
                backend.send(&seq.to_le_bytes()).unwrap();
            }
            let all = wait_within(Duration::from_secs(5), || recorder.count() >= end as usize);
            assert!(all.await, "handed on {} of {end}", recorder.count());
            let seqs: Vec<u32> = recorder.got.borrow().iter().map(|&(seq, _)| seq).collect();
            assert_eq!(seqs, (0..end).collect::<Vec<_>>(), "each once, in order");
            assert!(
                recorder.got.borrow().iter().any(|&(_, scratch)| scratch),
                "the one-shot way read part of the backlog"
            );
            // Later replies: once its pause is over, the reader arms a multishot receive again.
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut seq = end;
            while !multishot_armed(&backend, &socket, &recorder, seq, Duration::from_millis(50))
                .await
            {
                assert!(Instant::now() < deadline, "no multishot receive again");
                seq += 2;
            }
            drop(reader);
        });
    }

    /// A link whose reader is on its multishot receive ends as a flow's end ends it (its task
    /// dropped, its socket closed with `close_upstream`): the receive is cancelled, the fd stays
    /// counted while the cancelled receive holds it, and it is closed (the count back below its
    /// limit, the port free) once the kernel has confirmed the cancellation.
    #[test]
    fn ending_a_link_cancels_its_multishot_receive_and_closes_its_fd() {
        runtime(4).block_on(async {
            let fds = UpstreamFds::new(0);
            // Fill the count up to its limit; the last one is the socket's.
            let others: Vec<FdHold> = (1..CLOSING_SLACK).map(|_| fds.hold()).collect();
            let (socket, backend) = link().await;
            let hold = fds.hold();
            assert!(fds.at_limit());
            let recorder = Recorder::new();
            let reader = start(&socket, &recorder);
            let first = MULTISHOT_AT - 1;
            for seq in 0..first {
                reply(&backend, &recorder, seq).await;
            }
            let armed =
                multishot_armed(&backend, &socket, &recorder, first, Duration::from_secs(5));
            assert!(armed.await, "a multishot receive at wait MULTISHOT_AT");
            drop(reader);
            closes_then_uncounts(
                &fds,
                socket,
                hold,
                "the cancelled multishot receive kept the fd",
            )
            .await;
            drop(others);
        });
    }
}
