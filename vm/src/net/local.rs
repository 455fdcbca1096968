//! In-process transports over channels: for tests and `--in-process` runs.

use super::{
    CommStats, FrameSink, FrameSource, Transport, TransportError, DEFAULT_TIMEOUT, FRAME_HEADER,
};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

/// One end of an in-memory party-to-party link.
pub struct LocalTransport {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
    stats: CommStats,
    peer: &'static str,
    timeout: Duration,
}

impl LocalTransport {
    /// Two connected ends: `(client end, server end)`.
    pub fn pair() -> (LocalTransport, LocalTransport) {
        let (t0, r0) = channel();
        let (t1, r1) = channel();
        let mk = |tx, rx, peer| LocalTransport {
            tx,
            rx,
            stats: CommStats::default(),
            peer,
            timeout: DEFAULT_TIMEOUT,
        };
        (mk(t0, r1, "server"), mk(t1, r0, "client"))
    }

    /// Sets how long `exchange` waits for the peer.
    pub fn with_timeout(mut self, t: Duration) -> LocalTransport {
        self.timeout = t;
        self
    }
}

impl Transport for LocalTransport {
    fn exchange(&mut self, msg: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        let during = format!(" during round {}", self.stats.rounds);
        let sent = msg.len();
        self.tx.send(msg).map_err(|_| TransportError::Closed {
            peer: self.peer.into(),
            during: during.clone(),
        })?;
        let got = match self.rx.recv_timeout(self.timeout) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => {
                return Err(TransportError::Timeout {
                    peer: self.peer.into(),
                    secs: self.timeout.as_secs(),
                    during,
                })
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(TransportError::Closed { peer: self.peer.into(), during })
            }
        };
        self.stats.record(sent as u64, got.len() as u64);
        Ok(got)
    }

    fn stats(&self) -> CommStats {
        self.stats
    }
}

/// An in-memory dealer stream: `(dealer end, party end)`.
pub fn dealer_channel() -> (LocalSink, LocalSource) {
    let (tx, rx) = channel();
    (LocalSink { tx, bytes: 0 }, LocalSource { rx, bytes: 0, timeout: DEFAULT_TIMEOUT })
}

/// The dealer's end of an in-memory correction stream.
pub struct LocalSink {
    tx: Sender<Vec<u8>>,
    bytes: u64,
}

impl FrameSink for LocalSink {
    fn send_frame(&mut self, payload: Vec<u8>) -> Result<(), TransportError> {
        self.bytes += FRAME_HEADER + payload.len() as u64;
        self.tx.send(payload).map_err(|_| TransportError::Closed {
            peer: "party".into(),
            during: " while dealing".into(),
        })
    }
    fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// A party's end of an in-memory correction stream.
pub struct LocalSource {
    rx: Receiver<Vec<u8>>,
    bytes: u64,
    timeout: Duration,
}

impl LocalSource {
    /// The same source waiting at most `t` for each frame.
    pub fn with_timeout(mut self, t: Duration) -> LocalSource {
        self.timeout = t;
        self
    }
}

impl FrameSource for LocalSource {
    fn recv_frame(&mut self) -> Result<Vec<u8>, TransportError> {
        let f = match self.rx.recv_timeout(self.timeout) {
            Ok(f) => f,
            Err(RecvTimeoutError::Timeout) => {
                return Err(TransportError::Timeout {
                    peer: "dealer".into(),
                    secs: self.timeout.as_secs(),
                    during: String::new(),
                })
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(TransportError::Closed { peer: "dealer".into(), during: String::new() })
            }
        };
        self.bytes += FRAME_HEADER + f.len() as u64;
        Ok(f)
    }
    fn bytes(&self) -> u64 {
        self.bytes
    }
}
