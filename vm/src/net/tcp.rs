//! TCP transports: length-framed, buffered, `TCP_NODELAY`, with a handshake that checks the
//! protocol version, the roles, the session and the program hash before any data moves.
//!
//! A party writes from a dedicated thread while it reads, so two parties can send large
//! messages to each other at once without deadlocking on full socket buffers. Reads time out,
//! so a stalled peer ends the run with an error instead of a hang.

use super::tls::{Link, TlsConfig};
use super::{CommStats, FrameSink, FrameSource, Transport, TransportError, MAX_FRAME, MAX_MESSAGE};
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use veil_isa::cost::FRAME_HEADER;

/// Version of the wire protocol (handshake and framing); both ends must agree.
pub const PROTOCOL_VERSION: u32 = 1;
const HELLO_MAGIC: &[u8; 8] = b"VEILNET\0";
const HELLO_LEN: usize = 8 + 4 + 1 + 16 + 32;

/// Who is on the other end of a connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// The party that owns the input.
    Client,
    /// The party that owns the weights.
    Server,
    /// The correlated-randomness dealer.
    Dealer,
}

impl Role {
    fn code(self) -> u8 {
        match self {
            Role::Client => 0,
            Role::Server => 1,
            Role::Dealer => 2,
        }
    }

    fn from_code(c: u8) -> Option<Role> {
        match c {
            0 => Some(Role::Client),
            1 => Some(Role::Server),
            2 => Some(Role::Dealer),
            _ => None,
        }
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
            Role::Dealer => "dealer",
        }
    }
}

/// What each end announces when a connection opens.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's role.
    pub role: Role,
    /// The session (chosen by the client).
    pub session: [u8; 16],
    /// SHA-256 of the program the sender runs.
    pub program: [u8; 32],
}

impl Hello {
    fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[..8].copy_from_slice(HELLO_MAGIC);
        b[8..12].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        b[12] = self.role.code();
        b[13..29].copy_from_slice(&self.session);
        b[29..61].copy_from_slice(&self.program);
        b
    }

    fn decode(b: &[u8; HELLO_LEN], peer: &str) -> Result<Hello, TransportError> {
        let bad = |what: String| TransportError::Handshake { peer: peer.into(), what };
        if &b[..8] != HELLO_MAGIC {
            return Err(bad("the peer does not speak the veil protocol".into()));
        }
        let v = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        if v != PROTOCOL_VERSION {
            return Err(bad(format!("protocol version {v}, this side speaks {PROTOCOL_VERSION}")));
        }
        let role =
            Role::from_code(b[12]).ok_or_else(|| bad(format!("unknown role code {}", b[12])))?;
        Ok(Hello {
            role,
            session: b[13..29].try_into().expect("16 bytes"),
            program: b[29..61].try_into().expect("32 bytes"),
        })
    }
}

fn io_err(peer: &str, during: String, e: std::io::Error, timeout: Duration) -> TransportError {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            TransportError::Timeout { peer: peer.into(), secs: timeout.as_secs(), during }
        }
        ErrorKind::UnexpectedEof
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::NotConnected => TransportError::Closed { peer: peer.into(), during },
        _ => TransportError::Io { peer: peer.into(), source: e },
    }
}

/// Exchanges hellos on a fresh connection and checks the peer's against what this side
/// expects: the given role, the same program hash and (unless `adopt_session`) the same
/// session. Returns the peer's hello.
pub fn handshake(
    stream: &mut Link,
    mine: Hello,
    expect_role: Role,
    adopt_session: bool,
    timeout: Duration,
) -> Result<Hello, TransportError> {
    let peer = expect_role.name();
    stream.set_read_timeout(Some(timeout)).map_err(|e| io_err(peer, String::new(), e, timeout))?;
    stream.socket().set_nodelay(true).map_err(|e| io_err(peer, String::new(), e, timeout))?;
    stream
        .write_all(&mine.encode())
        .map_err(|e| io_err(peer, " during the handshake".into(), e, timeout))?;
    let mut buf = [0u8; HELLO_LEN];
    stream
        .read_exact(&mut buf)
        .map_err(|e| io_err(peer, " during the handshake".into(), e, timeout))?;
    let theirs = Hello::decode(&buf, peer)?;
    let bad = |what: String| TransportError::Handshake { peer: peer.into(), what };
    if theirs.role != expect_role {
        return Err(bad(format!("expected the {peer}, but a {} connected", theirs.role.name())));
    }
    if theirs.program != mine.program {
        return Err(bad(format!(
            "the {peer} runs a different program (hash {}…, this side {}…): both must load the same .vbc",
            hex(&theirs.program[..6]),
            hex(&mine.program[..6])
        )));
    }
    if !adopt_session && theirs.session != mine.session {
        return Err(bad("the session ids differ".into()));
    }
    Ok(theirs)
}

/// Lowercase hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes one message: a frame, or for a message of `MAX_FRAME` bytes or more, consecutive
/// frames of `MAX_FRAME` bytes ending with a shorter one (possibly empty), all with `seq`.
fn write_frame(w: &mut impl Write, seq: u32, payload: &[u8], flush: bool) -> std::io::Result<()> {
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_FRAME);
        w.write_all(&(n as u32).to_le_bytes())?;
        w.write_all(&seq.to_le_bytes())?;
        w.write_all(&rest[..n])?;
        rest = &rest[n..];
        if n < MAX_FRAME {
            break;
        }
    }
    if flush {
        w.flush()?;
    }
    Ok(())
}

/// Reads one message written by [`write_frame`]: at most `MAX_MESSAGE` bytes, grown as they
/// arrive (a header announcing a huge frame costs nothing until its bytes come).
fn read_frame(
    r: &mut impl Read,
    seq: u32,
    peer: &str,
    timeout: Duration,
) -> Result<Vec<u8>, TransportError> {
    let during = format!(" during message {seq}");
    let mut payload = Vec::new();
    loop {
        let mut h = [0u8; 8];
        r.read_exact(&mut h).map_err(|e| io_err(peer, during.clone(), e, timeout))?;
        let len = u32::from_le_bytes(h[..4].try_into().expect("4 bytes")) as usize;
        let got_seq = u32::from_le_bytes(h[4..].try_into().expect("4 bytes"));
        if got_seq != seq {
            return Err(TransportError::Malformed {
                peer: peer.into(),
                what: format!(
                    "message {got_seq} arrived where message {seq} was due (replayed or out of order)"
                ),
            });
        }
        if len > MAX_FRAME || (payload.len() + len) as u64 > MAX_MESSAGE {
            return Err(TransportError::Malformed {
                peer: peer.into(),
                what: format!(
                    "frame of {len} bytes exceeds {MAX_FRAME} or the message exceeds {MAX_MESSAGE}"
                ),
            });
        }
        payload.reserve(len.min(1 << 20));
        let before = payload.len();
        let got = r
            .take(len as u64)
            .read_to_end(&mut payload)
            .map_err(|e| io_err(peer, during.clone(), e, timeout))?;
        if got < len {
            return Err(TransportError::Closed {
                peer: peer.into(),
                during: format!("{during} ({} of {} bytes)", payload.len(), before + len),
            });
        }
        if len < MAX_FRAME {
            return Ok(payload);
        }
    }
}

/// A frame queued for the writer thread: sequence number and payload.
type Frame = (u32, Vec<u8>);

/// A party-to-party link over TCP.
pub struct TcpTransport {
    reader: BufReader<Link>,
    tx: Option<Sender<Frame>>,
    writer: Option<JoinHandle<()>>,
    write_error: Arc<Mutex<Option<std::io::Error>>>,
    stats: CommStats,
    seq: u32,
    peer: &'static str,
    timeout: Duration,
}

impl TcpTransport {
    /// Wraps a connected, handshaken stream.
    pub fn new(
        stream: Link,
        peer: &'static str,
        timeout: Duration,
    ) -> Result<TcpTransport, TransportError> {
        let e = |err| io_err(peer, String::new(), err, timeout);
        stream.socket().set_nodelay(true).map_err(e)?;
        stream.set_read_timeout(Some(timeout)).map_err(e)?;
        let (stream, wstream) = stream.split().map_err(e)?;
        let (tx, rx): (Sender<Frame>, Receiver<Frame>) = channel();
        let write_error = Arc::new(Mutex::new(None));
        let slot = write_error.clone();
        let writer = std::thread::spawn(move || {
            let mut w = BufWriter::with_capacity(1 << 16, wstream);
            for (seq, payload) in rx {
                if let Err(e) = write_frame(&mut w, seq, &payload, true) {
                    *slot.lock().expect("writer error slot") = Some(e);
                    return;
                }
            }
        });
        Ok(TcpTransport {
            reader: BufReader::with_capacity(1 << 16, stream),
            tx: Some(tx),
            writer: Some(writer),
            write_error,
            stats: CommStats::default(),
            seq: 0,
            peer,
            timeout,
        })
    }

    /// Connects to the server (over TLS when `tls` is given) and handshakes as the client.
    pub fn connect(
        addr: impl ToSocketAddrs,
        hello: Hello,
        timeout: Duration,
        tls: Option<&TlsConfig>,
    ) -> Result<TcpTransport, TransportError> {
        let s = connect_retry(addr, "server", timeout)?;
        let mut link = open(s, tls, "server", timeout)?;
        handshake(&mut link, hello, Role::Server, false, timeout)?;
        TcpTransport::new(link, "server", timeout)
    }

    /// Accepts the client on `listener` and handshakes as the server, adopting the client's
    /// session id. Returns the transport and the client's hello.
    pub fn accept(
        listener: &TcpListener,
        mut hello: Hello,
        timeout: Duration,
        tls: Option<&TlsConfig>,
    ) -> Result<(TcpTransport, Hello), TransportError> {
        let (s, _) = listener.accept().map_err(|e| io_err("client", String::new(), e, timeout))?;
        hello.session = [0; 16];
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
        let mut link = admit(s, tls, "client", timeout)?;
        let theirs = handshake_adopt(&mut link, hello, Role::Client, timeout)?;
        Ok((TcpTransport::new(link, "client", timeout)?, theirs))
    }
}

/// The connecting side of a link to `peer`: TLS when configured, checking the peer's
/// certificate against the configured name or else the address dialled.
pub fn open(
    s: TcpStream,
    tls: Option<&TlsConfig>,
    peer: &str,
    timeout: Duration,
) -> Result<Link, TransportError> {
    establish(s, tls, peer, timeout, true)
}

/// The accepting side of a link from `peer`: TLS when configured, requiring its certificate.
pub fn admit(
    s: TcpStream,
    tls: Option<&TlsConfig>,
    peer: &str,
    timeout: Duration,
) -> Result<Link, TransportError> {
    establish(s, tls, peer, timeout, false)
}

fn establish(
    s: TcpStream,
    tls: Option<&TlsConfig>,
    peer: &str,
    timeout: Duration,
    connecting: bool,
) -> Result<Link, TransportError> {
    let e = |err: std::io::Error| {
        let err = std::io::Error::new(err.kind(), format!("TLS handshake: {err}"));
        io_err(peer, " during the TLS handshake".into(), err, timeout)
    };
    s.set_read_timeout(Some(timeout)).map_err(e)?;
    let Some(cfg) = tls else { return Ok(Link::plain(s)) };
    if connecting {
        let host = s.peer_addr().map_err(e)?.ip().to_string();
        Link::connect(s, cfg, &host).map_err(e)
    } else {
        Link::accept(s, cfg).map_err(e)
    }
}

/// Server side of a handshake: sends its hello only after reading the client's, so it can echo
/// the client's session id.
fn handshake_adopt(
    s: &mut Link,
    mut mine: Hello,
    expect: Role,
    timeout: Duration,
) -> Result<Hello, TransportError> {
    let peer = expect.name();
    s.set_read_timeout(Some(timeout)).map_err(|e| io_err(peer, String::new(), e, timeout))?;
    let mut buf = [0u8; HELLO_LEN];
    s.read_exact(&mut buf).map_err(|e| io_err(peer, " during the handshake".into(), e, timeout))?;
    let theirs = Hello::decode(&buf, peer)?;
    mine.session = theirs.session;
    s.write_all(&mine.encode())
        .map_err(|e| io_err(peer, " during the handshake".into(), e, timeout))?;
    let bad = |what: String| TransportError::Handshake { peer: peer.into(), what };
    if theirs.role != expect {
        return Err(bad(format!("expected the {peer}, but a {} connected", theirs.role.name())));
    }
    if theirs.program != mine.program {
        return Err(bad(format!(
            "the {peer} runs a different program (hash {}…, this side {}…): both must load the same .vbc",
            hex(&theirs.program[..6]),
            hex(&mine.program[..6])
        )));
    }
    Ok(theirs)
}

/// Accepts one connection and handshakes, adopting the peer's session (used by the dealer,
/// which learns the session from each party). Returns the stream and the peer's hello.
pub fn accept_any(
    listener: &TcpListener,
    mine: Hello,
    timeout: Duration,
    tls: Option<&TlsConfig>,
) -> Result<(Link, Hello), TransportError> {
    let (s, _) = listener.accept().map_err(|e| io_err("party", String::new(), e, timeout))?;
    greet_party(s, mine, timeout, tls)
}

/// The dealer's side of a party's connection already accepted: TLS (when configured) and the
/// hello, adopting the party's session. Returns the link and the party's hello.
pub fn greet_party(
    s: TcpStream,
    mine: Hello,
    timeout: Duration,
    tls: Option<&TlsConfig>,
) -> Result<(Link, Hello), TransportError> {
    let mut s = admit(s, tls, "party", timeout)?;
    let mut buf = [0u8; HELLO_LEN];
    s.read_exact(&mut buf)
        .map_err(|e| io_err("party", " during the handshake".into(), e, timeout))?;
    let theirs = Hello::decode(&buf, "party")?;
    let reply = Hello { session: theirs.session, ..mine };
    s.write_all(&reply.encode())
        .map_err(|e| io_err("party", " during the handshake".into(), e, timeout))?;
    if theirs.role == Role::Dealer {
        return Err(TransportError::Handshake {
            peer: "party".into(),
            what: "a dealer connected to a dealer".into(),
        });
    }
    if theirs.program != mine.program {
        return Err(TransportError::Handshake {
            peer: theirs.role.name().into(),
            what: format!("the {} runs a different program than the dealer", theirs.role.name()),
        });
    }
    s.socket().set_nodelay(true).map_err(|e| io_err("party", String::new(), e, timeout))?;
    Ok((s, theirs))
}

/// Connects, retrying for a short while so peers may start in any order.
pub fn connect_retry(
    addr: impl ToSocketAddrs,
    peer: &str,
    timeout: Duration,
) -> Result<TcpStream, TransportError> {
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| TransportError::Io { peer: peer.into(), source: e })?
        .collect();
    let deadline = std::time::Instant::now() + timeout.min(Duration::from_secs(30));
    loop {
        let mut last = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, Duration::from_secs(5)) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        if std::time::Instant::now() >= deadline {
            let e = last.unwrap_or_else(|| std::io::Error::new(ErrorKind::NotFound, "no address"));
            return Err(TransportError::Io { peer: peer.into(), source: e });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Transport for TcpTransport {
    fn exchange(&mut self, msg: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        let sent = msg.len();
        let during = format!(" during round {}", self.seq);
        if let Some(e) = self.write_error.lock().expect("writer error slot").take() {
            return Err(io_err(self.peer, during, e, self.timeout));
        }
        let tx = self.tx.as_ref().expect("transport is open");
        tx.send((self.seq, msg)).map_err(|_| TransportError::Closed {
            peer: self.peer.into(),
            during: during.clone(),
        })?;
        let got = match read_frame(&mut self.reader, self.seq, self.peer, self.timeout) {
            Ok(g) => g,
            Err(e) => {
                if let Some(we) = self.write_error.lock().expect("writer error slot").take() {
                    return Err(io_err(self.peer, during, we, self.timeout));
                }
                return Err(e);
            }
        };
        self.seq = self.seq.wrapping_add(1);
        self.stats.record(sent, got.len());
        Ok(got)
    }

    fn stats(&self) -> CommStats {
        self.stats
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// The dealer's end of a correction stream over TCP.
pub struct TcpSink {
    w: BufWriter<Link>,
    seq: u32,
    bytes: u64,
    peer: &'static str,
}

impl TcpSink {
    /// Wraps a handshaken stream to `peer`.
    pub fn new(stream: Link, peer: &'static str) -> TcpSink {
        TcpSink { w: BufWriter::with_capacity(1 << 20, stream), seq: 0, bytes: 0, peer }
    }
}

impl TcpSink {
    /// The same stream read the other way (the dealer reading the client's pruned lengths),
    /// after flushing what was dealt.
    pub fn into_source(self, timeout: Duration) -> Result<TcpSource, TransportError> {
        let peer = self.peer;
        let link = self
            .w
            .into_inner()
            .map_err(|e| io_err(peer, String::new(), e.into_error(), timeout))?;
        TcpSource::new(link, timeout)
    }
}

impl FrameSink for TcpSink {
    /// Frames are buffered (the stream has no round structure); the end-of-stream frame, which
    /// is empty, flushes.
    fn send_frame(&mut self, payload: Vec<u8>) -> Result<(), TransportError> {
        write_frame(&mut self.w, self.seq, &payload, payload.is_empty()).map_err(|e| {
            io_err(self.peer, format!(" while dealing frame {}", self.seq), e, Duration::ZERO)
        })?;
        self.seq = self.seq.wrapping_add(1);
        self.bytes += FRAME_HEADER + payload.len() as u64;
        Ok(())
    }
    fn bytes(&self) -> u64 {
        self.bytes
    }
    fn flush(&mut self) -> Result<(), TransportError> {
        self.w.flush().map_err(|e| io_err(self.peer, String::new(), e, Duration::ZERO))
    }
}

/// A party's end of the dealer's correction stream over TCP.
pub struct TcpSource {
    r: BufReader<Link>,
    seq: u32,
    bytes: u64,
    timeout: Duration,
}

impl TcpSource {
    /// Wraps a handshaken stream from the dealer.
    pub fn new(stream: Link, timeout: Duration) -> Result<TcpSource, TransportError> {
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| io_err("dealer", String::new(), e, timeout))?;
        Ok(TcpSource { r: BufReader::with_capacity(1 << 20, stream), seq: 0, bytes: 0, timeout })
    }
}

impl TcpSource {
    /// The same stream written the other way (the client reporting pruned lengths to the
    /// dealer). Frames the dealer sent that were not read are dropped.
    pub fn into_sink(self, peer: &'static str) -> TcpSink {
        TcpSink::new(self.r.into_inner(), peer)
    }
}

impl FrameSource for TcpSource {
    fn recv_frame(&mut self) -> Result<Vec<u8>, TransportError> {
        let f = read_frame(&mut self.r, self.seq, "dealer", self.timeout)?;
        self.seq = self.seq.wrapping_add(1);
        self.bytes += FRAME_HEADER + f.len() as u64;
        Ok(f)
    }
    fn bytes(&self) -> u64 {
        self.bytes
    }
}
