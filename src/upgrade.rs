//! Binary upgrade without a dropped connection: the running ringlb starts the binary on disk,
//! hands it every listening socket, and drains once the new process serves.
//!
//! Owns: the handshake on both sides and the `ringlb upgrade` request socket. The old process
//! ([`hand_over`]) starts the new binary with its own command line and one end of a
//! `SOCK_SEQPACKET` socket pair (`RINGLB_UPGRADE_FD`); the new process ([`Successor`]) loads
//! and validates its config first, then asks for the sockets (`take`), receives each service's
//! per-worker sockets with `SCM_RIGHTS`, starts, and says `ready`. Only then does the old one
//! stop accepting (the caller drains it). If the new process says it failed, exits, or is not
//! ready within the timeout, it is killed and the old process keeps serving; the error says
//! why. The listening sockets are the same kernel sockets in both processes, so a connection
//! waiting in an accept queue is accepted by whichever process takes it first.
//!
//! Does not own: deciding to upgrade (`main`: SIGUSR2, or a request on [`Requests`]), the
//! drain itself (`Server::drain_until`), the match of sockets to services
//! (`dataplane::Inherited`), or telling systemd (`crate::systemd`).

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use serde::{Deserialize, Serialize};

use crate::config::Protocol;
use crate::dataplane::{DataPlaneHandle, Inherited};

/// The environment variable that gives the new process its end of the handshake socket.
pub const FD_ENV: &str = "RINGLB_UPGRADE_FD";

/// How long the old process waits for the new one to be ready, unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// At most this many descriptors go in one message (the kernel's `SCM_MAX_FD` is 253).
const FDS_PER_MESSAGE: usize = 200;

/// One record of the handshake (JSON, one per `SOCK_SEQPACKET` message).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    /// New to old: my config is valid, send the sockets.
    Take,
    /// Old to new: `count` sockets of `service` (in worker order) ride with this message.
    Sockets {
        service: String,
        protocol: Protocol,
        count: usize,
    },
    /// Old to new: that was every socket.
    End,
    /// New to old: I serve.
    Ready { pid: u32 },
    /// New to old: I cannot start, and why.
    Failed { reason: String },
}

/// Why an upgrade did not happen; the old process keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The new binary could not be started at all.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The new process said why it cannot start (an invalid config, a listener it cannot bind).
    #[error("the new process cannot start: {0}")]
    Refused(String),
    /// The new process ended before it was ready.
    #[error("the new process exited before it was ready ({0})")]
    Exited(String),
    /// The new process was not ready in time; it was killed.
    #[error("the new process was not ready within {0:?}: killed")]
    Timeout(Duration),
    /// The handshake itself failed.
    #[error("upgrade handshake failed: {0}")]
    Handshake(#[from] io::Error),
}

/// The binary this process was started from, resolved now (at start-up): once a package
/// replaces the file, `/proc/self/exe` names the deleted inode, while this path names the new
/// binary.
pub fn binary_at_start() -> Option<PathBuf> {
    std::env::current_exe().ok()
}

/// Starts `binary` with `args` (this process's own arguments: the same config file), hands it
/// every listening socket of `dataplane`, and waits up to `timeout` for it to be ready.
/// Returns the new process's id; the caller then drains this process. On an error the new
/// process is gone and nothing changed here.
pub fn hand_over(
    binary: &Path,
    args: &[OsString],
    dataplane: &DataPlaneHandle,
    timeout: Duration,
) -> Result<u32, UpgradeError> {
    let deadline = Instant::now() + timeout;
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    let theirs_raw = theirs.as_raw_fd();
    let mut command = Command::new(binary);
    command
        .args(args)
        .env(FD_ENV, theirs_raw.to_string())
        // Sockets come through the handshake; the new process must not read systemd's
        // variables as its own, nor think the watchdog belongs to another process.
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec; it only calls fcntl(2) (async
    // signal safe, no allocation) on `theirs_raw`, a descriptor that is open in the child since
    // `theirs` lives in the parent until after `spawn` returns.
    unsafe {
        command.pre_exec(move || {
            let fd = BorrowedFd::borrow_raw(theirs_raw);
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            Ok(())
        });
    }
    let child = command.spawn().map_err(|source| UpgradeError::Spawn {
        binary: binary.to_owned(),
        source,
    })?;
    drop(theirs);
    let mut child = KillOnDrop(Some(child));
    tracing::info!(binary = %binary.display(), pid = child.id(), "upgrade: new process started");
    match receive(&ours, deadline, timeout)? {
        (Some(Message::Take), _) => {}
        (Some(Message::Failed { reason }), _) => return Err(UpgradeError::Refused(reason)),
        (None, _) => return Err(UpgradeError::Exited(child.exit_status())),
        (Some(other), _) => return Err(unexpected(&other)),
    }
    for passed in dataplane.listener_sockets()? {
        for chunk in passed.fds.chunks(FDS_PER_MESSAGE) {
            let fds: Vec<BorrowedFd<'_>> = chunk.iter().map(AsFd::as_fd).collect();
            let message = Message::Sockets {
                service: passed.service.clone(),
                protocol: passed.protocol,
                count: fds.len(),
            };
            send(&ours, &message, &fds)?;
        }
    }
    send(&ours, &Message::End, &[])?;
    match receive(&ours, deadline, timeout)? {
        (Some(Message::Ready { pid }), _) => {
            child.release();
            Ok(pid)
        }
        (Some(Message::Failed { reason }), _) => Err(UpgradeError::Refused(reason)),
        (None, _) => Err(UpgradeError::Exited(child.exit_status())),
        (Some(other), _) => Err(unexpected(&other)),
    }
}

fn unexpected(message: &Message) -> UpgradeError {
    UpgradeError::Handshake(io::Error::other(format!("unexpected message {message:?}")))
}

/// The new process, killed and reaped if dropped before it was ready.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// The new process serves: it is left running.
    fn release(&mut self) {
        self.0 = None;
    }

    /// How the process ended, waiting briefly for it (it closed its end of the handshake).
    fn exit_status(&mut self) -> String {
        let Some(child) = self.0.as_mut() else {
            return "unknown".to_owned();
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.0 = None;
                    return status.to_string();
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => return "closed the handshake but still runs: killed".to_owned(),
                Err(e) => return e.to_string(),
            }
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `message` with `fds` attached.
fn send(socket: &OwnedFd, message: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    rustix::net::sendmsg(
        socket,
        &[IoSlice::new(&body)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// Receives one message and the descriptors that came with it, waiting until `deadline`;
/// `None` when the peer closed its end.
fn receive(
    socket: &OwnedFd,
    deadline: Instant,
    timeout: Duration,
) -> Result<(Option<Message>, Vec<OwnedFd>), UpgradeError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(UpgradeError::Timeout(timeout));
    }
    rustix::net::sockopt::set_socket_timeout(
        socket,
        rustix::net::sockopt::Timeout::Recv,
        Some(left),
    )
    .map_err(io::Error::from)?;
    let mut body = vec![0u8; 64 * 1024];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = match rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut body)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    ) {
        Ok(r) => r,
        Err(rustix::io::Errno::AGAIN) => return Err(UpgradeError::Timeout(timeout)),
        Err(e) => return Err(io::Error::from(e).into()),
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if received.bytes == 0 {
        return Ok((None, fds));
    }
    let message = serde_json::from_slice(&body[..received.bytes])
        .map_err(|e| io::Error::other(format!("bad handshake message: {e}")))?;
    Ok((Some(message), fds))
}

/// The new process's side of an upgrade: started by an old ringlb with [`FD_ENV`] set.
#[derive(Debug)]
pub struct Successor {
    socket: OwnedFd,
}

impl Successor {
    /// The handshake socket when this process was started by an upgrade. Call once, before any
    /// other descriptor is opened by this process's threads.
    pub fn from_env() -> Option<Successor> {
        let fd: i32 = std::env::var(FD_ENV).ok()?.parse().ok()?;
        if fd < 3 {
            return None;
        }
        // SAFETY: the old process put its end of the socket pair at `fd` and cleared
        // close-on-exec for it alone; nothing else in this process knows that number, so this
        // is its one owner. The check below refuses a number that is not a socket.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        if rustix::net::sockopt::socket_type(&socket).is_err() {
            // Not ours: leave the number alone.
            std::mem::forget(socket);
            return None;
        }
        // Not handed on to this process's own successor.
        let _ = rustix::io::fcntl_setfd(&socket, rustix::io::FdFlags::CLOEXEC);
        Some(Successor { socket })
    }

    /// Asks for the old process's sockets (the config was validated) and receives them.
    pub fn take(&self) -> Result<Inherited, UpgradeError> {
        send(&self.socket, &Message::Take, &[])?;
        let mut inherited = Inherited::handed_over();
        let mut by_service: Vec<(String, Vec<OwnedFd>)> = Vec::new();
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        loop {
            match receive(&self.socket, deadline, DEFAULT_TIMEOUT)? {
                (Some(Message::Sockets { service, count, .. }), fds) => {
                    if fds.len() != count {
                        return Err(io::Error::other(format!(
                            "{count} sockets announced for {service}, {} received",
                            fds.len()
                        ))
                        .into());
                    }
                    match by_service.iter_mut().find(|(name, _)| *name == service) {
                        Some((_, all)) => all.extend(fds),
                        None => by_service.push((service, fds)),
                    }
                }
                (Some(Message::End), _) => break,
                (None, _) => {
                    return Err(io::Error::other("the old process closed the handshake").into());
                }
                (Some(other), _) => return Err(unexpected(&other)),
            }
        }
        for (service, fds) in by_service {
            tracing::info!(service = %service, sockets = fds.len(),
                "upgrade: listening sockets taken over");
            inherited.insert(service, fds);
        }
        Ok(inherited)
    }

    /// Tells the old process that this one serves (it then drains); closes the handshake.
    pub fn ready(self) {
        if let Err(e) = send(
            &self.socket,
            &Message::Ready {
                pid: std::process::id(),
            },
            &[],
        ) {
            tracing::warn!(error = %e, "upgrade: cannot tell the old process that this one serves");
        }
    }

    /// Tells the old process why this one cannot start (it keeps serving).
    pub fn fail(self, reason: &str) {
        let _ = send(
            &self.socket,
            &Message::Failed {
                reason: reason.to_owned(),
            },
            &[],
        );
    }
}

/// What `ringlb upgrade` asks a running ringlb.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// The binary to start instead of the one this process was started from.
    pub binary: Option<PathBuf>,
    /// How long to wait for the new process to be ready, in milliseconds.
    pub timeout_ms: u64,
}

/// The answer: the new process's id, or why there is none.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// The new process serves; this one drains.
    Upgraded {
        /// Its id.
        pid: u32,
    },
    /// No upgrade: this process keeps serving.
    Failed {
        /// Why.
        error: String,
    },
}

/// A request received by [`Requests`], to be carried out by the thread that owns the server.
#[derive(Debug)]
pub struct Pending {
    /// What was asked.
    pub request: Request,
    asker: UnixStream,
}

impl Pending {
    /// Answers the asker, on the calling thread: the answer is written before the caller goes
    /// on to drain and exit.
    pub fn answer(mut self, answer: Answer) {
        if let Err(e) = write_answer(&mut self.asker, &answer) {
            tracing::warn!(error = %e, "cannot answer the upgrade request");
        }
    }
}

fn write_answer(stream: &mut UnixStream, answer: &Answer) -> io::Result<()> {
    let line = serde_json::to_string(answer).map_err(io::Error::other)?;
    writeln!(stream, "{line}")
}

/// The abstract Unix socket name a ringlb with process id `pid` takes upgrade requests on.
pub fn request_socket_name(pid: u32) -> String {
    format!("ringlb-upgrade.{pid}")
}

/// The thread taking `ringlb upgrade` requests on an abstract Unix socket named after this
/// process's id ([`request_socket_name`]): only a peer with this process's user id, or root,
/// is heard (checked with `SO_PEERCRED`; an abstract socket has no file permissions). The
/// thread lives as long as the process; once the receiver is gone, requests are answered
/// with "ringlb is stopping". The receiver answers each request ([`Pending::answer`]).
pub struct Requests;

impl Requests {
    /// Binds the socket and starts the thread; requests arrive on the returned channel.
    pub fn listen() -> io::Result<crossbeam::channel::Receiver<Pending>> {
        let address = std::os::unix::net::SocketAddr::from_abstract_name(request_socket_name(
            std::process::id(),
        ))?;
        let listener = UnixListener::bind_addr(&address)?;
        let (tx, rx) = crossbeam::channel::bounded(1);
        std::thread::Builder::new()
            .name("ringlb-upgrade".to_owned())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    if let Err(e) = serve_request(stream, &tx) {
                        tracing::warn!(error = %e, "upgrade request failed");
                    }
                }
            })?;
        Ok(rx)
    }
}

fn serve_request(
    mut stream: UnixStream,
    requests: &crossbeam::channel::Sender<Pending>,
) -> io::Result<()> {
    let peer = rustix::net::sockopt::socket_peercred(&stream)?;
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let own = unsafe { libc::geteuid() };
    if peer.uid.as_raw() != own && !peer.uid.is_root() {
        return write_answer(
            &mut stream,
            &Answer::Failed {
                error: "only the user ringlb runs as, or root, may upgrade it".to_owned(),
            },
        );
    }
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let request: Request = serde_json::from_str(&line).map_err(io::Error::other)?;
    let pending = Pending {
        request,
        asker: stream,
    };
    if let Err(refused) = requests.send(pending) {
        refused.into_inner().answer(Answer::Failed {
            error: "ringlb is stopping".to_owned(),
        });
    }
    Ok(())
}

/// `ringlb upgrade`: asks the ringlb with process id `pid` to upgrade, and waits for the
/// answer (up to `timeout` plus a margin).
pub fn request(pid: u32, binary: Option<PathBuf>, timeout: Duration) -> anyhow::Result<u32> {
    let address = std::os::unix::net::SocketAddr::from_abstract_name(request_socket_name(pid))?;
    let mut stream = UnixStream::connect_addr(&address).map_err(|e| {
        anyhow::anyhow!("cannot reach ringlb process {pid} (is it running, as this user?): {e}")
    })?;
    let request = Request {
        binary,
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    };
    writeln!(stream, "{}", serde_json::to_string(&request)?)?;
    stream.set_read_timeout(Some(timeout + Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    match serde_json::from_str(&line)? {
        Answer::Upgraded { pid } => Ok(pid),
        Answer::Failed { error } => Err(anyhow::anyhow!("upgrade failed: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn sockets_cross_the_handshake_with_their_message() {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let message = Message::Sockets {
            service: "web".into(),
            protocol: Protocol::Tcp,
            count: 2,
        };
        send(&a, &message, &[listener.as_fd(), udp.as_fd()]).unwrap();
        send(&a, &Message::End, &[]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let (got, fds) = receive(&b, deadline, Duration::from_secs(5)).unwrap();
        match got {
            Some(Message::Sockets { service, count, .. }) => {
                assert_eq!(service, "web");
                assert_eq!(count, 2);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(fds.len(), 2);
        // The same socket: bound to the same address.
        let received = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(received.local_addr().unwrap(), address);
        assert!(matches!(
            receive(&b, deadline, Duration::from_secs(5)).unwrap(),
            (Some(Message::End), _)
        ));
        // The peer closed: no message; and a deadline passed: a timeout.
        drop(a);
        assert!(
            receive(&b, deadline, Duration::from_secs(5))
                .unwrap()
                .0
                .is_none()
        );
        assert!(matches!(
            receive(&b, Instant::now(), Duration::from_secs(1)),
            Err(UpgradeError::Timeout(_))
        ));
    }
}
