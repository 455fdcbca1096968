//! TCP connections: opened with TLS (role-checked) and the veil handshake, then used either as
//! a party-to-party [`TcpTransport`] (rounds, both directions at once) or as a [`Conn`] (the
//! dealer's links: request and answer, or a one-way stream of material frames).
//!
//! A party writes from a dedicated thread while it reads, so two parties can send large
//! messages to each other at once without deadlocking on full socket buffers. Every read and
//! write is bounded (see [`super::tls`]), and dropping a transport never waits on a write for
//! longer than the write's own deadline.

use super::frame::{io_err, read_message, read_vec, write_bytes, write_message};
use super::hello::{answer, handshake, Hello};
use super::role::Role;
use super::tls::{Link, TlsConfig};
use super::{
    allowance, CommStats, Expect, FrameSink, FrameSource, Outgoing, Transport, TransportError,
    MAX_MESSAGE,
};
use std::io::{BufReader, BufWriter, ErrorKind};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use veil_isa::cost::FRAME_HEADER;

pub use super::hello::hex;

/// The connecting side of a link to `peer`: TLS when configured (checking the peer's
/// certificate against the configured name or else the address dialled, and its role), with
/// both socket timeouts set.
pub fn open(
    s: TcpStream,
    tls: Option<&TlsConfig>,
    peer: Role,
    timeout: Duration,
) -> Result<Link, TransportError> {
    establish(s, tls, &[peer], timeout, true)
}

/// The accepting side of a link from one of `peers`: TLS when configured, requiring a
/// certificate that names one of their roles.
pub fn admit(
    s: TcpStream,
    tls: Option<&TlsConfig>,
    peers: &[Role],
    timeout: Duration,
) -> Result<Link, TransportError> {
    establish(s, tls, peers, timeout, false)
}

fn establish(
    s: TcpStream,
    tls: Option<&TlsConfig>,
    peers: &[Role],
    timeout: Duration,
    connecting: bool,
) -> Result<Link, TransportError> {
    let name = if peers.len() == 1 { peers[0].name() } else { "party" };
    let e = |err: std::io::Error| {
        let err = std::io::Error::new(err.kind(), format!("TLS handshake: {err}"));
        match err.kind() {
            ErrorKind::PermissionDenied | ErrorKind::InvalidData | ErrorKind::InvalidInput => {
                TransportError::Handshake { peer: name.into(), what: err.to_string() }
            }
            _ => io_err(name, " during the TLS handshake", err, timeout),
        }
    };
    s.set_nodelay(true).map_err(e)?;
    s.set_read_timeout(Some(timeout)).map_err(e)?;
    s.set_write_timeout(Some(timeout)).map_err(e)?;
    let Some(cfg) = tls else { return Ok(Link::plain(s)) };
    if connecting {
        let host = s.peer_addr().map_err(e)?.ip().to_string();
        Link::connect(s, cfg, &host, peers[0], timeout).map_err(e)
    } else {
        Link::accept(s, cfg, peers, timeout).map_err(e)
    }
}

/// Connects to `role` at `addr`, retrying while nothing listens there (peers may start in any
/// order) for up to `timeout` (at most 30 s); `waiting` is called once per second of
/// retrying with the seconds waited, so the user sees why nothing happens.
pub fn connect_retry(
    addr: &str,
    role: Role,
    timeout: Duration,
    waiting: &mut dyn FnMut(u64),
) -> Result<TcpStream, TransportError> {
    let fail = |during: String, e: std::io::Error| TransportError::Io {
        peer: role.name().into(),
        during,
        os: e,
    };
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| fail(format!(" at `{addr}` (not a usable address)"), e))?
        .collect();
    let t0 = Instant::now();
    let deadline = t0 + timeout.min(Duration::from_secs(30));
    let mut told = 0;
    loop {
        let mut last = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, Duration::from_secs(5)) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        let now = Instant::now();
        if now >= deadline {
            let e = last.unwrap_or_else(|| std::io::Error::new(ErrorKind::NotFound, "no address"));
            let hint = match e.kind() {
                ErrorKind::ConnectionRefused => format!(
                    " at {addr}: nothing listens there (is `veil {}` running, and is this its --listen address?)",
                    if role == Role::Dealer { "dealer" } else { "serve" }
                ),
                _ => format!(" at {addr}"),
            };
            return Err(fail(hint, e));
        }
        let waited = (now - t0).as_secs();
        if waited > told {
            told = waited;
            waiting(waited);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A frame queued for the writer thread: sequence number and what to send.
type Job = (u32, Outgoing);

/// A party-to-party link over TCP.
pub struct TcpTransport {
    reader: BufReader<Link>,
    sock: TcpStream,
    tx: Option<Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    writer_done: Receiver<()>,
    write_error: Arc<Mutex<Option<std::io::Error>>>,
    stats: CommStats,
    seq: u32,
    peer: &'static str,
    timeout: Duration,
    scratch: Vec<u8>,
}

impl TcpTransport {
    /// Wraps a connected, handshaken link to `peer`.
    pub fn new(
        stream: Link,
        peer: &'static str,
        timeout: Duration,
    ) -> Result<TcpTransport, TransportError> {
        let e = |err| io_err(peer, "", err, timeout);
        stream.set_timeouts(timeout).map_err(e)?;
        let sock = stream.socket().try_clone().map_err(e)?;
        let (stream, wstream) = stream.split().map_err(e)?;
        let (tx, rx): (Sender<Job>, Receiver<Job>) = channel();
        let (done_tx, writer_done) = channel();
        let write_error = Arc::new(Mutex::new(None));
        let slot = write_error.clone();
        let writer = std::thread::spawn(move || {
            let mut w = BufWriter::with_capacity(1 << 16, wstream);
            for (seq, out) in rx {
                let r = match out {
                    Outgoing::Bytes(b) => write_bytes(&mut w, seq, &b, true, timeout),
                    Outgoing::File(mut f, n) => write_message(&mut w, seq, n, &mut f, timeout),
                };
                if let Err(e) = r {
                    *slot.lock().expect("writer error slot") = Some(e);
                    break;
                }
            }
            let _ = done_tx.send(());
        });
        Ok(TcpTransport {
            reader: BufReader::with_capacity(1 << 16, stream),
            sock,
            tx: Some(tx),
            writer: Some(writer),
            writer_done,
            write_error,
            stats: CommStats::default(),
            seq: 0,
            peer,
            timeout,
            scratch: Vec::new(),
        })
    }

    /// Connects to the server at `addr` (over TLS when `tls` is given) and handshakes as the
    /// client.
    pub fn connect(
        addr: &str,
        hello: Hello,
        timeout: Duration,
        tls: Option<&TlsConfig>,
    ) -> Result<TcpTransport, TransportError> {
        let s = connect_retry(addr, Role::Server, timeout, &mut |_| {})?;
        let mut link = open(s, tls, Role::Server, timeout)?;
        handshake(&mut link, hello, Role::Server, timeout)?;
        TcpTransport::new(link, "server", timeout)
    }

    /// Accepts the client on `listener` and handshakes as the server, adopting the client's
    /// session id. Returns the transport and the client's hello.
    pub fn accept(
        listener: &TcpListener,
        hello: Hello,
        timeout: Duration,
        tls: Option<&TlsConfig>,
    ) -> Result<(TcpTransport, Hello), TransportError> {
        let (s, _) = listener.accept().map_err(|e| io_err("client", "", e, timeout))?;
        TcpTransport::accepted(s, hello, timeout, tls)
    }

    /// Opens TLS (when given) and handshakes as the server on a connection already accepted,
    /// adopting the client's session id. Returns the transport and the client's hello.
    pub fn accepted(
        s: TcpStream,
        hello: Hello,
        timeout: Duration,
        tls: Option<&TlsConfig>,
    ) -> Result<(TcpTransport, Hello), TransportError> {
        let mut link = admit(s, tls, &[Role::Client], timeout)?;
        let theirs = answer(&mut link, hello, &[Role::Client], timeout)?;
        Ok((TcpTransport::new(link, "client", timeout)?, theirs))
    }

    fn take_write_error(&self, during: &str) -> Option<TransportError> {
        let e = self.write_error.lock().expect("writer error slot").take()?;
        Some(io_err(self.peer, during, e, self.timeout))
    }

    /// Ends the connection now: a writer still blocked on the peer fails at once.
    pub fn abort(&mut self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

impl Transport for TcpTransport {
    fn exchange(&mut self, msg: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        let mut got = Vec::new();
        self.exchange_into(Outgoing::Bytes(msg), Expect::AtMost(MAX_MESSAGE), &mut |p| {
            got.extend_from_slice(p)
        })?;
        Ok(got)
    }

    fn exchange_into(
        &mut self,
        msg: Outgoing,
        expect: Expect,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), TransportError> {
        let sent = msg.len();
        let during = format!(" during round {}", self.seq);
        if let Some(e) = self.take_write_error(&during) {
            return Err(e);
        }
        let tx = self.tx.as_ref().expect("transport is open");
        tx.send((self.seq, msg)).map_err(|_| TransportError::Closed {
            peer: self.peer.into(),
            during: during.clone(),
        })?;
        let got = match read_message(
            &mut self.reader,
            self.seq,
            self.peer,
            self.timeout,
            expect,
            sink,
            &mut self.scratch,
        ) {
            Ok(g) => g,
            Err(e) => return Err(self.take_write_error(&during).unwrap_or(e)),
        };
        self.seq = self.seq.wrapping_add(1);
        self.stats.record(sent, got);
        Ok(())
    }

    fn stats(&self) -> CommStats {
        self.stats
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        drop(self.tx.take());
        // The writer finishes its last message within that message's deadline; wait no
        // longer than the timeout for it, then cut the socket so a write stuck on a peer
        // that stopped reading fails, and the thread ends.
        if self.writer_done.recv_timeout(self.timeout).is_err() {
            self.abort();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// A framed connection used from one thread: the dealer's links (a request and its answer,
/// or a one-way stream of material frames, buffered). Each direction numbers its frames.
pub struct Conn {
    r: BufReader<Link>,
    w: BufWriter<Link>,
    sock: TcpStream,
    send_seq: u32,
    recv_seq: u32,
    sent: u64,
    received: u64,
    peer: &'static str,
    timeout: Duration,
}

impl Conn {
    /// Wraps a handshaken link to `peer`.
    pub fn new(link: Link, peer: &'static str, timeout: Duration) -> Result<Conn, TransportError> {
        let e = |err| io_err(peer, "", err, timeout);
        link.set_timeouts(timeout).map_err(e)?;
        let sock = link.socket().try_clone().map_err(e)?;
        let (r, w) = link.split().map_err(e)?;
        Ok(Conn {
            r: BufReader::with_capacity(1 << 20, r),
            w: BufWriter::with_capacity(1 << 20, w),
            sock,
            send_seq: 0,
            recv_seq: 0,
            sent: 0,
            received: 0,
            peer,
            timeout,
        })
    }

    /// Dials `role` at `addr`, opens TLS and handshakes with `hello`.
    pub fn dial(
        addr: &str,
        role: Role,
        hello: Hello,
        timeout: Duration,
        tls: Option<&TlsConfig>,
        waiting: &mut dyn FnMut(u64),
    ) -> Result<Conn, TransportError> {
        let s = connect_retry(addr, role, timeout, waiting)?;
        let mut link = open(s, tls, role, timeout)?;
        handshake(&mut link, hello, role, timeout)?;
        Conn::new(link, role.name(), timeout)
    }

    /// Sends one frame; `flush` pushes it (and everything buffered) out now.
    pub fn send(&mut self, payload: &[u8], flush: bool) -> Result<(), TransportError> {
        write_bytes(&mut self.w, self.send_seq, payload, flush, self.timeout).map_err(|e| {
            io_err(self.peer, &format!(" while sending frame {}", self.send_seq), e, self.timeout)
        })?;
        self.send_seq = self.send_seq.wrapping_add(1);
        self.sent += FRAME_HEADER + payload.len() as u64;
        Ok(())
    }

    /// Receives one frame within `expect`.
    pub fn recv(&mut self, expect: Expect) -> Result<Vec<u8>, TransportError> {
        let f = read_vec(&mut self.r, self.recv_seq, self.peer, self.timeout, expect)?;
        self.recv_seq = self.recv_seq.wrapping_add(1);
        self.received += FRAME_HEADER + f.len() as u64;
        Ok(f)
    }

    /// The same connection waiting up to `t` for each frame (the dealer waiting for a pruned
    /// length, which comes after whole layers).
    pub fn set_timeout(&mut self, t: Duration) -> Result<(), TransportError> {
        self.timeout = t;
        self.r.get_ref().set_timeouts(t).map_err(|e| io_err(self.peer, "", e, t))
    }

    /// Bytes sent, frame headers included.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Ends the connection now (both directions).
    pub fn shutdown(&self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    /// Whether the peer has closed (a non-blocking peek sees the end of the stream).
    pub fn peer_closed(&self) -> bool {
        let _ = self.sock.set_nonblocking(true);
        let mut b = [0u8; 1];
        let closed = matches!(self.sock.peek(&mut b), Ok(0));
        let _ = self.sock.set_nonblocking(false);
        closed
    }

    /// How long a message of `bytes` may take.
    pub fn allowance(&self, bytes: u64) -> Duration {
        allowance(self.timeout, bytes)
    }
}

impl FrameSink for Conn {
    /// Frames are buffered (a material stream has no round structure); the end-of-stream
    /// frame, which is empty, flushes.
    fn send_frame(&mut self, payload: Vec<u8>) -> Result<(), TransportError> {
        let flush = payload.is_empty();
        self.send(&payload, flush)
    }
    fn bytes(&self) -> u64 {
        self.sent
    }
    fn flush(&mut self) -> Result<(), TransportError> {
        use std::io::Write;
        self.w.flush().map_err(|e| io_err(self.peer, "", e, self.timeout))
    }
}

impl FrameSource for Conn {
    fn recv_frame(&mut self) -> Result<Vec<u8>, TransportError> {
        self.recv(Expect::AtMost(MAX_MESSAGE))
    }
    fn recv_exact(&mut self, len: usize) -> Result<Vec<u8>, TransportError> {
        self.recv(Expect::Exactly(len as u64))
    }
    fn recv_at_most(&mut self, max: u64) -> Result<Vec<u8>, TransportError> {
        self.recv(Expect::AtMost(max))
    }
    fn bytes(&self) -> u64 {
        self.received
    }
}

/// A one-time pause until `d` or a message on `rx` (for loops that poll).
pub fn wait_or(rx: &Receiver<()>, d: Duration) -> bool {
    !matches!(rx.recv_timeout(d), Err(RecvTimeoutError::Timeout))
}
