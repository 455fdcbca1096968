//! Transports. One call to [`Transport::exchange_into`] is one round: each party sends one
//! message and receives the peer's. Bytes and rounds are counted here and nowhere else.
//!
//! Every message travels as a frame: `u32` payload length, `u32` sequence number, payload
//! (a message of [`MAX_FRAME`] bytes or more as several frames of the same sequence number).
//! The sequence number is the round index, so a replayed, dropped or reordered message is
//! detected. The receiver knows how long the message must be before it reads it (the program
//! says), so a frame announcing more is refused at its header and nothing is buffered for it.

pub mod background;
pub mod frame;
pub mod hello;
pub mod keygen;
pub mod local;
pub mod role;
pub mod tcp;
pub mod tls;

pub use role::Role;

use std::io::Read;
use std::time::Duration;
use veil_isa::cost::FRAME_HEADER;

/// Largest payload a frame may carry (1 GiB). A longer message (the weights masked once per
/// program load reach 1.3 GB for GPT-2 small) travels as several frames of this size and a
/// shorter last one; their extra headers (8 bytes per GiB) are not counted in [`CommStats`].
pub const MAX_FRAME: usize = 1 << 30;

/// Largest message a party accepts (64 GiB), whatever its framing.
pub const MAX_MESSAGE: u64 = 1 << 36;

/// Default time to wait for a peer's message before giving up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Slowest transfer a peer may make once a message has started, in bytes per second: a
/// message of `n` bytes must arrive within the timeout plus `n / MIN_RATE` seconds, so a peer
/// that trickles a byte now and then cannot hold a session (or a dealer thread) for ever.
pub const MIN_RATE: u64 = 64 << 10;

/// The deadline for moving `bytes` bytes once started: the timeout plus the slowest
/// acceptable transfer time.
pub fn allowance(timeout: Duration, bytes: u64) -> Duration {
    timeout + Duration::from_secs(bytes / MIN_RATE)
}

/// Bytes and rounds one party measured.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CommStats {
    /// Exchanges completed.
    pub rounds: u64,
    /// Bytes sent, frame headers included.
    pub sent: u64,
    /// Bytes received, frame headers included.
    pub received: u64,
}

impl CommStats {
    /// Records one frame sent and one received.
    pub fn record(&mut self, sent_payload: u64, received_payload: u64) {
        self.rounds += 1;
        self.sent += FRAME_HEADER + sent_payload;
        self.received += FRAME_HEADER + received_payload;
    }

    /// What was measured between `before` and `self`.
    pub fn since(self, before: CommStats) -> CommStats {
        CommStats {
            rounds: self.rounds - before.rounds,
            sent: self.sent - before.sent,
            received: self.received - before.received,
        }
    }
}

/// Why communication failed. Each variant says what happened to the connection.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer closed the connection or went away.
    #[error("the {peer} closed the connection{during}")]
    Closed {
        /// Who went away.
        peer: String,
        /// Context (e.g. " during round 12").
        during: String,
    },
    /// No message arrived in time.
    #[error("no message from the {peer} within {secs} s{during}")]
    Timeout {
        /// Who is silent.
        peer: String,
        /// The timeout.
        secs: u64,
        /// Context.
        during: String,
    },
    /// A frame broke the protocol (bad length, wrong sequence number, unexpected size).
    #[error("malformed message from the {peer}: {what}")]
    Malformed {
        /// Who sent it.
        peer: String,
        /// What was wrong.
        what: String,
    },
    /// The peers disagree on who they are or what they run.
    #[error("handshake with the {peer} failed: {what}")]
    Handshake {
        /// The peer.
        peer: String,
        /// What did not match.
        what: String,
    },
    /// The peer answered, but declined the request (it says why).
    #[error("the {peer} refused: {why}")]
    Refused {
        /// Who refused.
        peer: String,
        /// Its reason.
        why: String,
    },
    /// Any other I/O failure.
    // The OS error is in the message and deliberately not a `source`: a chain printer
    // (anyhow's `{:#}`) would print it twice.
    #[error("network error with the {peer}{during}: {os}")]
    Io {
        /// The peer.
        peer: String,
        /// Context (e.g. " at 10.0.0.2:7700").
        during: String,
        /// The OS error.
        os: std::io::Error,
    },
}

/// How long the peer's message of a round must be: the program knows exactly; control
/// messages are bounded.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this many bytes.
    Exactly(u64),
    /// Any length up to this many bytes.
    AtMost(u64),
}

impl Expect {
    /// The largest length this accepts.
    pub fn max(self) -> u64 {
        match self {
            Expect::Exactly(n) | Expect::AtMost(n) => n,
        }
    }

    /// Checks a complete message's length.
    pub fn check(self, got: u64, peer: &str, seq: u64) -> Result<(), TransportError> {
        let ok = match self {
            Expect::Exactly(n) => got == n,
            Expect::AtMost(n) => got <= n,
        };
        if ok {
            Ok(())
        } else {
            Err(TransportError::Malformed {
                peer: peer.into(),
                what: format!("message {seq} has {got} bytes, {}", self.describe()),
            })
        }
    }

    /// "the program expects N" / "at most N are accepted".
    pub fn describe(self) -> String {
        match self {
            Expect::Exactly(n) => format!("the program expects {n}"),
            Expect::AtMost(n) => format!("at most {n} are accepted"),
        }
    }
}

/// What a party sends in one round: bytes in memory, or a file's bytes (the weights masked
/// once per epoch, replayed to each new client without holding them in memory).
pub enum Outgoing {
    /// In memory.
    Bytes(Vec<u8>),
    /// The first `len` bytes of a reader over a file, read as they are sent.
    File(Box<dyn Read + Send>, u64),
}

impl Outgoing {
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Outgoing::Bytes(b) => b.len() as u64,
            Outgoing::File(_, n) => *n,
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes in memory (reads a file whole: for in-memory transports only).
    pub fn into_bytes(self) -> std::io::Result<Vec<u8>> {
        match self {
            Outgoing::Bytes(b) => Ok(b),
            Outgoing::File(f, n) => {
                let mut v = Vec::with_capacity(n as usize);
                f.take(n).read_to_end(&mut v)?;
                if (v.len() as u64) < n {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the file ends after {} of {n} bytes", v.len()),
                    ));
                }
                Ok(v)
            }
        }
    }
}

/// A bidirectional, round-based channel to the other computing party.
pub trait Transport: Send {
    /// Sends `msg` as this round's message and returns the peer's message of the same round
    /// (of any length up to [`MAX_MESSAGE`]).
    fn exchange(&mut self, msg: Vec<u8>) -> Result<Vec<u8>, TransportError>;

    /// What was measured so far.
    fn stats(&self) -> CommStats;

    /// One round: sends `msg` and hands the peer's message, which must have the `expect`ed
    /// length, to `sink` in pieces as it arrives (a transport that streams refuses a longer
    /// message at its header, before buffering any of it).
    fn exchange_into(
        &mut self,
        msg: Outgoing,
        expect: Expect,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), TransportError> {
        let rounds = self.stats().rounds;
        let msg = msg.into_bytes().map_err(|e| TransportError::Io {
            peer: "local file".into(),
            during: " reading a message to send".into(),
            os: e,
        })?;
        let got = self.exchange(msg)?;
        expect.check(got.len() as u64, "peer", rounds)?;
        sink(&got);
        Ok(())
    }

    /// Takes part of this round's outgoing message ahead of the round (a transport that
    /// records to a file); false when the transport needs the message whole, at the round.
    fn send_part(&mut self, _part: &[u8]) -> Result<bool, TransportError> {
        Ok(false)
    }
}

/// How long the dealer waits for the client to report a pruned sequence length: the first
/// comes after the layers before the first pruning point, which may take long at 512 tokens.
pub const LENGTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// The dealer's side of its one-way stream of correction frames to a party.
pub trait FrameSink: Send {
    /// Sends one frame.
    fn send_frame(&mut self, payload: Vec<u8>) -> Result<(), TransportError>;
    /// Pushes buffered frames onto the wire (streams that buffer override it).
    fn flush(&mut self) -> Result<(), TransportError> {
        Ok(())
    }
    /// Bytes sent so far, frame headers included.
    fn bytes(&self) -> u64;
}

/// A party's side of the dealer's correction stream.
pub trait FrameSource: Send {
    /// Receives the next frame.
    fn recv_frame(&mut self) -> Result<Vec<u8>, TransportError>;
    /// Bytes received so far, frame headers included.
    fn bytes(&self) -> u64;
    /// Receives the next frame, refusing one of more than `max` bytes (sources that read from
    /// a socket refuse it at its header, before buffering it).
    fn recv_at_most(&mut self, max: u64) -> Result<Vec<u8>, TransportError> {
        let f = self.recv_frame()?;
        if f.len() as u64 > max {
            return Err(TransportError::Malformed {
                peer: "dealer".into(),
                what: format!("a frame of {} bytes where at most {max} may come", f.len()),
            });
        }
        Ok(f)
    }
    /// Receives the next frame, which must be exactly `len` bytes (sources that read from a
    /// socket or a file refuse a longer one at its header).
    fn recv_exact(&mut self, len: usize) -> Result<Vec<u8>, TransportError> {
        let f = self.recv_frame()?;
        if f.len() != len {
            return Err(TransportError::Malformed {
                peer: "dealer".into(),
                what: format!("a frame of {} bytes where {len} were due", f.len()),
            });
        }
        Ok(f)
    }
}

/// A frame source that has already received everything (the offline phase done up front).
pub struct Prefetched {
    frames: std::collections::VecDeque<Vec<u8>>,
    bytes: u64,
}

impl Prefetched {
    /// Drains `src` until it reports the end of the stream (an empty frame).
    pub fn drain(src: &mut dyn FrameSource) -> Result<Prefetched, TransportError> {
        let mut frames = std::collections::VecDeque::new();
        loop {
            let f = src.recv_frame()?;
            if f.is_empty() {
                break;
            }
            frames.push_back(f);
        }
        Ok(Prefetched { frames, bytes: src.bytes() })
    }
}

impl FrameSource for Prefetched {
    fn recv_frame(&mut self) -> Result<Vec<u8>, TransportError> {
        Ok(self.frames.pop_front().unwrap_or_default())
    }
    fn bytes(&self) -> u64 {
        self.bytes
    }
}
