//! Entry points of the VM's fuzz targets (`fuzz/`), here so the stable test suite runs the
//! same code over the committed corpora: each must return, never panic.

use crate::net::frame::read_message;
use crate::net::hello::{Hello, HELLO_LEN};
use crate::net::Expect;
use crate::session::wire::MAX_CONTROL;
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
            0 => Expect::AtMost(MAX_CONTROL),
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

/// Seed inputs of [`network_frames`], each with how many messages it is accepted for: what
/// each role sends as a connection opens (its hello, then control messages and payloads of
/// the lengths the reader expects in turn), so mutations start from real traffic.
pub fn network_seeds() -> Vec<(&'static str, Vec<u8>, usize)> {
    use crate::net::role::Role;
    use crate::session::wire::{ClientMsg, FromDealer, ServerMsg, ToDealer, Welcome};
    let hello = |role| Hello { role, session: [7; 16], program: [9; 32] }.encode().to_vec();
    // Framed messages with sequence numbers from 0, after the hello.
    let framed = |head: Vec<u8>, msgs: &[Vec<u8>]| {
        let mut b = head;
        for (seq, m) in msgs.iter().enumerate() {
            crate::net::frame::write_bytes(&mut b, seq as u32, m, true, Duration::ZERO)
                .expect("writing to memory");
        }
        b
    };
    let share = |n: usize| (0..n).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>();
    let client = [
        ClientMsg::Setup { cached: true }.encode(),
        share(16),
        share(4096),
        ClientMsg::Next.encode(),
        share(16),
        ClientMsg::Bye.encode(),
    ];
    let server = [
        Welcome::Ok { epoch: [3; 16] }.encode(),
        share(16),
        ServerMsg::Empty.encode(),
        ServerMsg::Entry { ticket: [5; 16], live: false }.encode(),
        share(16),
        ServerMsg::Refused("busy".into()).encode(),
    ];
    let to_dealer = [
        ToDealer::Epoch { digest: [1; 32], rotate: false }.encode(),
        share(16),
        ToDealer::Material { epoch: [3; 16], live: true, instance: [4; 16] }.encode(),
        ToDealer::Ping.encode(),
    ];
    let from_dealer = [
        FromDealer::Epoch { id: [3; 16], seed: [6; 16] }.encode(),
        share(16),
        FromDealer::Seed([6; 16]).encode(),
        FromDealer::Refused("unknown ticket".into()).encode(),
    ];
    vec![
        ("seed-client", framed(hello(Role::Client), &client), client.len()),
        ("seed-server", framed(hello(Role::Server), &server), server.len()),
        ("seed-server-to-dealer", framed(hello(Role::Server), &to_dealer), to_dealer.len()),
        ("seed-dealer", framed(hello(Role::Dealer), &from_dealer), from_dealer.len()),
        // A frame announcing more than the reader expects: refused from its header.
        ("seed-oversized", framed(hello(Role::Client), &[share(MAX_CONTROL as usize + 1)]), 0),
    ]
}
