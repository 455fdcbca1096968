//! Transports. One call to [`Transport::exchange`] is one round: each party sends one message
//! and receives the peer's. Bytes and rounds are counted here and nowhere else.
//!
//! Every message travels as a frame: `u32` payload length, `u32` sequence number, payload
//! (a message of [`MAX_FRAME`] bytes or more as several frames of the same sequence number).
//! The sequence number is the round index, so a replayed, dropped or reordered message is
//! detected, and the length is bounded, so a malformed frame cannot make a party allocate
//! without limit.

pub mod keygen;
pub mod local;
pub mod tcp;
pub mod tls;

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
    pub fn record(&mut self, sent_payload: usize, received_payload: usize) {
        self.rounds += 1;
        self.sent += FRAME_HEADER + sent_payload as u64;
        self.received += FRAME_HEADER + received_payload as u64;
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
    /// Any other I/O failure.
    #[error("network error with the {peer}: {source}")]
    Io {
        /// The peer.
        peer: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A bidirectional, round-based channel to the other computing party.
pub trait Transport: Send {
    /// Sends `msg` as this round's message and returns the peer's message of the same round.
    fn exchange(&mut self, msg: Vec<u8>) -> Result<Vec<u8>, TransportError>;
    /// What was measured so far.
    fn stats(&self) -> CommStats;
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
