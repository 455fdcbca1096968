//! The veil handshake, run inside TLS on every new connection: each end announces its role,
//! the session (or material ticket) the connection belongs to and the hash of the program it
//! runs, and refuses a mismatch — including a role that its certificate does not name.

use super::frame::io_err;
use super::role::Role;
use super::tls::Link;
use super::TransportError;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Version of the wire protocol (handshake, framing, control messages); both ends must agree.
pub const PROTOCOL_VERSION: u32 = 2;
const HELLO_MAGIC: &[u8; 8] = b"VEILNET\0";
/// Length of an encoded [`Hello`].
pub const HELLO_LEN: usize = 8 + 4 + 1 + 16 + 32;

/// What each end announces when a connection opens.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's role.
    pub role: Role,
    /// The session (chosen by the client), or the material ticket a dealer connection is for.
    pub session: [u8; 16],
    /// SHA-256 of the program the sender runs.
    pub program: [u8; 32],
}

impl Hello {
    /// The wire form.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[..8].copy_from_slice(HELLO_MAGIC);
        b[8..12].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        b[12] = self.role.code();
        b[13..29].copy_from_slice(&self.session);
        b[29..61].copy_from_slice(&self.program);
        b
    }

    /// Parses the wire form; `peer` names the sender in errors.
    pub fn decode(b: &[u8; HELLO_LEN], peer: &str) -> Result<Hello, TransportError> {
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

/// Lowercase hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn send(s: &mut Link, h: &Hello, peer: &str, timeout: Duration) -> Result<(), TransportError> {
    s.set_deadline(Some(Instant::now() + timeout));
    let r = s.write_all(&h.encode()).and_then(|_| s.flush());
    s.set_deadline(None);
    r.map_err(|e| io_err(peer, " during the handshake", e, timeout))
}

fn receive(s: &mut Link, peer: &str, timeout: Duration) -> Result<Hello, TransportError> {
    let mut buf = [0u8; HELLO_LEN];
    s.set_deadline(Some(Instant::now() + timeout));
    let r = s.read_exact(&mut buf);
    s.set_deadline(None);
    r.map_err(|e| io_err(peer, " during the handshake", e, timeout))?;
    let theirs = Hello::decode(&buf, peer)?;
    // Over TLS the certificate says who the peer is; its hello must agree.
    if let Some(r) = s.peer_role() {
        let cert = r.map_err(|what| TransportError::Handshake { peer: peer.into(), what })?;
        if cert != theirs.role {
            return Err(TransportError::Handshake {
                peer: peer.into(),
                what: format!(
                    "the peer claims to be the {} but presented the {}'s certificate",
                    theirs.role, cert
                ),
            });
        }
    }
    Ok(theirs)
}

fn check(theirs: &Hello, mine: &Hello, expect: &[Role], peer: &str) -> Result<(), TransportError> {
    let bad = |what: String| TransportError::Handshake { peer: peer.into(), what };
    if !expect.contains(&theirs.role) {
        let want: Vec<&str> = expect.iter().map(|r| r.name()).collect();
        return Err(bad(format!(
            "expected the {}, but the {} connected",
            want.join(" or the "),
            theirs.role
        )));
    }
    if theirs.program != mine.program {
        return Err(bad(format!(
            "the {} runs a different program (hash {}…, this side {}…): both must load the same .vbc",
            theirs.role,
            hex(&theirs.program[..6]),
            hex(&mine.program[..6])
        )));
    }
    Ok(())
}

/// The connecting side's handshake: sends its hello, reads the peer's, and requires the
/// peer to be `expect` with the same program and session.
pub fn handshake(
    s: &mut Link,
    mine: Hello,
    expect: Role,
    timeout: Duration,
) -> Result<Hello, TransportError> {
    let peer = expect.name();
    send(s, &mine, peer, timeout)?;
    let theirs = receive(s, peer, timeout)?;
    check(&theirs, &mine, &[expect], peer)?;
    if theirs.session != mine.session {
        return Err(TransportError::Handshake {
            peer: peer.into(),
            what: "the session ids differ".into(),
        });
    }
    Ok(theirs)
}

/// The accepting side's handshake: reads the peer's hello first (one of the `expect`ed
/// roles, the same program), then answers echoing the peer's session. Returns the peer's
/// hello.
pub fn answer(
    s: &mut Link,
    mine: Hello,
    expect: &[Role],
    timeout: Duration,
) -> Result<Hello, TransportError> {
    let peer = if expect.len() == 1 { expect[0].name() } else { "party" };
    let theirs = receive(s, peer, timeout)?;
    send(s, &Hello { session: theirs.session, ..mine }, peer, timeout)?;
    check(&theirs, &mine, expect, peer)?;
    Ok(theirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_round_trips_and_garbage_is_named() {
        let h = Hello { role: Role::Dealer, session: [7; 16], program: [9; 32] };
        assert_eq!(Hello::decode(&h.encode(), "dealer").unwrap(), h);
        let mut b = h.encode();
        b[0] = b'X';
        assert!(Hello::decode(&b, "x").unwrap_err().to_string().contains("veil protocol"));
        let mut b = h.encode();
        b[8] = 9;
        assert!(Hello::decode(&b, "x").unwrap_err().to_string().contains("protocol version 9"));
        let mut b = h.encode();
        b[12] = 7;
        assert!(Hello::decode(&b, "x").unwrap_err().to_string().contains("role code 7"));
    }
}
