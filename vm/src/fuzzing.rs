//! Entry points of the VM's fuzz targets (`fuzz/`), here so the stable test suite runs the
//! same code over the committed corpora: each must return, never panic.

use crate::net::frame::read_message;
use crate::net::hello::{Hello, HELLO_LEN};
use crate::net::Expect;
use std::time::Duration;

/// What a peer's bytes go through when a connection opens and messages arrive: the hello,
/// then frames (exact, bounded and unbounded expectations, as a program round, a control
/// message and a dealer stream read them), and every control-message decoder on each
/// payload. Returns how many messages were accepted.
pub fn network_frames(data: &[u8]) -> usize {
    let (hello, mut rest) = data.split_at(data.len().min(HELLO_LEN));
    if let Ok(h) = <[u8; HELLO_LEN]>::try_from(hello) {
        let _ = Hello::decode(&h, "peer");
    }
    let mut accepted = 0;
    let mut scratch = Vec::new();
    for seq in 0u32.. {
        if rest.is_empty() {
            break;
        }
        let expect = match seq % 3 {
            0 => Expect::AtMost(crate::session::wire::MAX_CONTROL),
            1 => Expect::Exactly(16),
            _ => Expect::AtMost(1 << 20),
        };
        let mut payload = Vec::new();
        match read_message(
            &mut rest,
            seq,
            "peer",
            Duration::ZERO,
            expect,
            &mut |p| payload.extend_from_slice(p),
            &mut scratch,
        ) {
            Ok(_) => {
                crate::session::wire::decode_all(&payload);
                accepted += 1;
            }
            Err(_) => break,
        }
    }
    accepted
}
