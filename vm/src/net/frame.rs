//! The framing every connection uses: a message is one frame (`u32` length, `u32` sequence
//! number, payload), or for `MAX_FRAME` bytes and more several frames of the same number, the
//! last one shorter (possibly empty). The reader knows the longest message it will accept
//! before it reads, refuses a header that announces more, and hands the payload on in
//! bounded pieces; the time a message may take grows with its length ([`super::allowance`]).

use super::tls::Link;
use super::{allowance, Expect, TransportError, MAX_FRAME};
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::time::{Duration, Instant};

/// Bytes handed to a sink at a time (and the most a reader buffers for a message).
pub const PIECE: usize = 1 << 20;

/// A byte stream whose operations can be given a deadline.
pub trait Paced {
    /// Sets when the current operation must be done (`None`: no deadline).
    fn set_deadline(&mut self, d: Option<Instant>);
}

impl Paced for Link {
    fn set_deadline(&mut self, d: Option<Instant>) {
        Link::set_deadline(self, d)
    }
}

impl<T: Paced + Read> Paced for BufReader<T> {
    fn set_deadline(&mut self, d: Option<Instant>) {
        self.get_mut().set_deadline(d)
    }
}

impl<T: Paced + Write> Paced for BufWriter<T> {
    fn set_deadline(&mut self, d: Option<Instant>) {
        self.get_mut().set_deadline(d)
    }
}

/// Bytes in memory (fuzzing and tests): no deadline to keep.
impl Paced for &[u8] {
    fn set_deadline(&mut self, _: Option<Instant>) {}
}

/// Bytes in memory (tests): no deadline to keep.
impl Paced for Vec<u8> {
    fn set_deadline(&mut self, _: Option<Instant>) {}
}

/// The transport error for an I/O error with `peer`.
pub fn io_err(peer: &str, during: &str, e: std::io::Error, timeout: Duration) -> TransportError {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => TransportError::Timeout {
            peer: peer.into(),
            secs: timeout.as_secs(),
            during: during.to_string(),
        },
        ErrorKind::UnexpectedEof
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::NotConnected
        | ErrorKind::WriteZero => {
            TransportError::Closed { peer: peer.into(), during: during.to_string() }
        }
        _ => TransportError::Io { peer: peer.into(), during: during.to_string(), os: e },
    }
}

/// Writes the header of one frame.
fn header(w: &mut impl Write, len: usize, seq: u32) -> std::io::Result<()> {
    w.write_all(&(len as u32).to_le_bytes())?;
    w.write_all(&seq.to_le_bytes())
}

/// Writes one message of `len` bytes read from `src` (in memory: a slice), framed, within
/// the allowance for its length.
pub fn write_message<W: Write + Paced>(
    w: &mut W,
    seq: u32,
    len: u64,
    src: &mut dyn Read,
    timeout: Duration,
) -> std::io::Result<()> {
    w.set_deadline(Some(Instant::now() + allowance(timeout, len)));
    let mut rest = len;
    let mut buf = vec![0u8; (len as usize).min(PIECE)];
    loop {
        let n = rest.min(MAX_FRAME as u64) as usize;
        header(w, n, seq)?;
        let mut left = n;
        while left > 0 {
            let k = left.min(buf.len());
            src.read_exact(&mut buf[..k])?;
            w.write_all(&buf[..k])?;
            left -= k;
        }
        rest -= n as u64;
        if n < MAX_FRAME {
            break;
        }
    }
    w.flush()?;
    w.set_deadline(None);
    Ok(())
}

/// Writes one message held in memory (see [`write_message`]); `flush` pushes it out now
/// (the dealer's stream buffers frames and flushes at the end).
pub fn write_bytes<W: Write + Paced>(
    w: &mut W,
    seq: u32,
    payload: &[u8],
    flush: bool,
    timeout: Duration,
) -> std::io::Result<()> {
    w.set_deadline(Some(Instant::now() + allowance(timeout, payload.len() as u64)));
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_FRAME);
        header(w, n, seq)?;
        w.write_all(&rest[..n])?;
        rest = &rest[n..];
        if n < MAX_FRAME {
            break;
        }
    }
    if flush {
        w.flush()?;
    }
    w.set_deadline(None);
    Ok(())
}

/// Reads message `seq` from `peer`, whose length `expect` bounds before any of it is
/// buffered, handing the payload to `sink` in pieces of at most [`PIECE`] bytes. The first
/// byte may take `timeout` (the peer may be computing); the rest must follow within the
/// allowance for the announced length. Returns the length.
pub fn read_message<R: Read + Paced>(
    r: &mut R,
    seq: u32,
    peer: &str,
    timeout: Duration,
    expect: Expect,
    sink: &mut dyn FnMut(&[u8]),
    scratch: &mut Vec<u8>,
) -> Result<u64, TransportError> {
    let during = format!(" during message {seq}");
    let mut total = 0u64;
    loop {
        let mut h = [0u8; 8];
        r.set_deadline(None);
        r.read_exact(&mut h[..1]).map_err(|e| io_err(peer, &during, e, timeout))?;
        r.set_deadline(Some(Instant::now() + timeout));
        r.read_exact(&mut h[1..]).map_err(|e| io_err(peer, &during, e, timeout))?;
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
        if len > MAX_FRAME || total + len as u64 > expect.max() {
            return Err(TransportError::Malformed {
                peer: peer.into(),
                what: format!(
                    "message {seq} announces {} bytes, {}",
                    total + len as u64,
                    expect.describe()
                ),
            });
        }
        r.set_deadline(Some(Instant::now() + allowance(timeout, len as u64)));
        let mut left = len;
        scratch.resize(len.min(PIECE), 0);
        while left > 0 {
            let k = left.min(PIECE);
            if let Err(e) = r.read_exact(&mut scratch[..k]) {
                return Err(match e.kind() {
                    ErrorKind::UnexpectedEof => TransportError::Closed {
                        peer: peer.into(),
                        during: format!("{during} ({} of {} bytes)", len - left, len),
                    },
                    _ => io_err(peer, &during, e, timeout),
                });
            }
            sink(&scratch[..k]);
            left -= k;
        }
        total += len as u64;
        if len < MAX_FRAME {
            r.set_deadline(None);
            expect.check(total, peer, seq as u64)?;
            return Ok(total);
        }
    }
}

/// Reads one whole message of at most `max` bytes into memory (control messages, dealer
/// frames).
pub fn read_vec<R: Read + Paced>(
    r: &mut R,
    seq: u32,
    peer: &str,
    timeout: Duration,
    expect: Expect,
) -> Result<Vec<u8>, TransportError> {
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    read_message(r, seq, peer, timeout, expect, &mut |p| out.extend_from_slice(p), &mut scratch)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_bytes(&mut v, seq, payload, true, Duration::from_secs(1)).unwrap();
        v
    }

    #[test]
    fn a_message_round_trips_and_arrives_in_pieces() {
        let payload: Vec<u8> = (0..(PIECE * 2 + 5)).map(|i| i as u8).collect();
        let bytes = framed(3, &payload);
        let mut pieces = 0;
        let mut got = Vec::new();
        let n = read_message(
            &mut &bytes[..],
            3,
            "peer",
            Duration::from_secs(1),
            Expect::Exactly(payload.len() as u64),
            &mut |p| {
                pieces += 1;
                got.extend_from_slice(p)
            },
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!((n as usize, pieces), (payload.len(), 3));
        assert_eq!(got, payload);
    }

    #[test]
    fn a_frame_longer_than_expected_is_refused_at_its_header() {
        // The header announces 1 GiB; only the 8 header bytes exist: nothing is buffered.
        let mut bytes = ((MAX_FRAME - 1) as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&0u32.to_le_bytes());
        let mut sunk = 0;
        let e = read_message(
            &mut &bytes[..],
            0,
            "client",
            Duration::from_secs(1),
            Expect::Exactly(16),
            &mut |p| sunk += p.len(),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("announces 1073741823 bytes, the program expects 16"),
            "{e}"
        );
        assert_eq!(sunk, 0);
    }

    #[test]
    fn a_short_or_replayed_message_is_refused() {
        let bytes = framed(0, &[1, 2, 3]);
        let read = |b: &[u8], seq, expect| {
            read_vec(&mut &b[..], seq, "server", Duration::from_secs(1), expect).map(|v| v.len())
        };
        assert_eq!(read(&bytes, 0, Expect::AtMost(3)).unwrap(), 3);
        assert!(read(&bytes, 0, Expect::Exactly(4))
            .unwrap_err()
            .to_string()
            .contains("has 3 bytes"));
        assert!(read(&bytes, 1, Expect::AtMost(9)).unwrap_err().to_string().contains("replayed"));
        let e = read(&bytes[..9], 0, Expect::AtMost(9)).unwrap_err();
        assert!(matches!(e, TransportError::Closed { .. }), "{e}");
    }
}
