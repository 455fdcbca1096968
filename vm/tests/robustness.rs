//! A corrupt or hostile program, a peer that disconnects or stalls, and a peer running another
//! program all end in a clear error on every side: no panic, no hang.

mod common;
use common::*;
use std::time::{Duration, Instant};
use veil_isa::{validate, Buf, DecodeError, Instr, Party, Program};
use veil_vm::net::hello::Hello;
use veil_vm::net::local::LocalTransport;
use veil_vm::net::role::Role;
use veil_vm::net::tcp::TcpTransport;
use veil_vm::net::{CommStats, Transport, TransportError};
use veil_vm::{run_session, PartyData, RunOptions, Values, VmError};

fn small_program() -> Program {
    let mut b = builder();
    let x = b.input("x", Party::Client, &[8], F);
    let w = b.weight("w", Party::Server, false, &[8], F);
    let p = b.mul(x, 0, w, 0, 1);
    let r = b.relu(p, F);
    b.output("r", r, Party::Client, &[8], F);
    b.finish()
}

fn data() -> (PartyData, PartyData) {
    (
        PartyData { inputs: vec![("x".into(), Values::F64(vec![1.5; 8]))], weights: vec![] },
        PartyData { weights: vec![("w".into(), Values::F64(vec![-2.0; 8]))], inputs: vec![] },
    )
}

#[test]
fn a_valid_program_round_trips_through_bytes() {
    let p = small_program();
    let bytes = p.to_bytes();
    let q = Program::from_bytes(&bytes).unwrap();
    assert_eq!(p, q);
    validate(&q).unwrap();
}

#[test]
fn truncated_and_random_files_are_rejected() {
    let bytes = small_program().to_bytes();
    for cut in [0, 7, 20, 43, 44, bytes.len() / 2, bytes.len() - 1] {
        assert!(Program::from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut rng = Rng(3);
    let noise: Vec<u8> = (0..5000).map(|_| rng.next() as u8).collect();
    assert!(matches!(Program::from_bytes(&noise), Err(DecodeError::NotAProgram(_))));
}

#[test]
fn a_flipped_byte_breaks_the_hash() {
    let bytes = small_program().to_bytes();
    for i in [12, 50, bytes.len() - 1] {
        let mut b = bytes.clone();
        b[i] ^= 0x40;
        assert_eq!(Program::from_bytes(&b), Err(DecodeError::HashMismatch));
    }
    let mut b = bytes.clone();
    b[8] = 99; // version
    assert!(matches!(Program::from_bytes(&b), Err(DecodeError::Version { .. })));
}

/// Re-encodes with a fresh hash, as a hostile compiler would.
fn rehash(p: &Program) -> Vec<u8> {
    p.to_bytes()
}

#[test]
fn every_single_byte_mutation_is_decoded_or_rejected_without_panic() {
    let bytes = small_program().to_bytes();
    let payload = &bytes[44..];
    let (mut accepted, mut failed_cleanly) = (0, 0);
    for i in 0..payload.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut p = payload.to_vec();
            p[i] ^= flip;
            let mut file = bytes[..12].to_vec();
            use sha2::Digest;
            file.extend_from_slice(&sha2::Sha256::digest(&p));
            file.extend_from_slice(&p);
            if let Ok(prog) = Program::from_bytes(&file) {
                if validate(&prog).is_ok() {
                    accepted += 1;
                    // A valid program, however odd, runs to completion or to a clean error.
                    let (c, s) = data();
                    let opts = RunOptions {
                        max_memory: 64 << 20,
                        timeout: Duration::from_secs(10),
                        ..RunOptions::default()
                    };
                    let outcome =
                        std::panic::catch_unwind(|| run_session(&prog, &c, &s, &opts).map(|_| ()));
                    assert!(
                        outcome.is_ok(),
                        "mutation at payload byte {i} (xor {flip:#x}) made the VM panic"
                    );
                    if outcome.unwrap().is_err() {
                        failed_cleanly += 1;
                    }
                }
            }
        }
    }
    eprintln!("{} mutations: {accepted} still valid programs ran, {failed_cleanly} of them ended in a clean error", payload.len() * 3);
}

#[test]
fn out_of_range_ids_and_bad_lengths_fail_validation() {
    let base = small_program();
    let mut p = base.clone();
    p.body.push(Instr::Neg { d: Buf(10_000), a: Buf(0) });
    p.body_tags.push(0);
    let e = validate(&Program::from_bytes(&rehash(&p)).unwrap()).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");

    let mut p = base.clone();
    let nb = p.buffers.len() as u32;
    p.buffers.push(veil_isa::BufDecl { kind: veil_isa::Kind::Share, len: 3 });
    p.body.insert(0, Instr::Add { d: Buf(nb), a: Buf(0), b: Buf(0), inner: 1 });
    p.body_tags.insert(0, 0);
    let e = validate(&p).unwrap_err();
    assert!(e.to_string().contains("lengths differ") || e.to_string().contains("broadcast"), "{e}");

    let mut p = base.clone();
    p.body.retain(|i| !matches!(i, Instr::Exchange {}));
    p.body_tags.truncate(p.body.len());
    let e = validate(&p).unwrap_err();
    assert!(e.to_string().contains("exchange"), "{e}");
}

/// Fails after `after` rounds, as a peer that dies mid-run.
struct Dying {
    inner: LocalTransport,
    after: u64,
}

impl Transport for Dying {
    fn exchange(&mut self, msg: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        if self.inner.stats().rounds >= self.after {
            return Err(TransportError::Closed { peer: "test".into(), during: String::new() });
        }
        self.inner.exchange(msg)
    }
    fn stats(&self) -> CommStats {
        self.inner.stats()
    }
}

#[test]
fn a_peer_that_disconnects_mid_run_ends_the_other_side_with_an_error() {
    use veil_vm::dealer::Dealer;
    use veil_vm::material::Material;
    use veil_vm::net::local::dealer_channel;
    use veil_vm::net::Prefetched;
    use veil_vm::prg::Prg;
    use veil_vm::PartyVm;
    let prog = small_program();
    let seeds = [Prg::random_seed(), Prg::random_seed()];
    let (sink, mut src) = dealer_channel();
    let setup_seed = veil_vm::run::setup_seed(seeds[1]);
    let base = std::sync::Arc::new(veil_vm::dealer::Base::new(&prog, setup_seed).unwrap());
    let mut d = Dealer::new(&prog, base, seeds, Box::new(sink));
    d.deal_body().unwrap();
    d.finish().unwrap();
    let pre = Prefetched::drain(&mut src).unwrap();
    let (c, s) = LocalTransport::pair();
    let t0 = Instant::now();
    let server = std::thread::spawn({
        let prog = prog.clone();
        move || {
            let mut vm = PartyVm::new(
                &prog,
                Party::Server,
                Material::new(Party::Server, setup_seed, None),
                Box::new(s),
                1 << 30,
            )
            .unwrap();
            vm.load_weights(&[("w".into(), Values::F64(vec![1.0; 8]))]).unwrap();
            vm.run_setup()?;
            vm.set_material(Material::new(Party::Server, seeds[1], Some(Box::new(pre))));
            vm.run_body()
        }
    });
    {
        let mut vm = PartyVm::new(
            &prog,
            Party::Client,
            Material::none(Party::Client),
            Box::new(Dying { inner: c, after: 2 }),
            1 << 30,
        )
        .unwrap();
        vm.run_setup().unwrap();
        vm.set_material(Material::new(Party::Client, seeds[0], None));
        vm.set_inputs(&[("x".into(), Values::F64(vec![1.0; 8]))]).unwrap();
        let e = vm.run_body().unwrap_err();
        assert!(matches!(e, VmError::Transport(TransportError::Closed { .. })), "{e}");
    }
    let e = server.join().unwrap().unwrap_err();
    assert!(e.to_string().contains("closed the connection"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(10), "no hang");
}

#[test]
fn a_stalled_peer_times_out() {
    let (mut c, _s) = LocalTransport::pair();
    c = c.with_timeout(Duration::from_millis(200));
    let t0 = Instant::now();
    let e = c.exchange(vec![1, 2, 3]).unwrap_err();
    assert!(matches!(e, TransportError::Timeout { .. }), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_stalled_tcp_peer_times_out_and_a_dead_one_is_noticed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hello = |role| Hello { role, session: [1; 16], program: [2; 32] };
    let srv = std::thread::spawn(move || {
        let (t, _) =
            TcpTransport::accept(&listener, hello(Role::Server), Duration::from_secs(5), None)
                .unwrap();
        std::thread::sleep(Duration::from_millis(600));
        drop(t); // dies without ever answering
    });
    let mut c = TcpTransport::connect(&addr, hello(Role::Client), Duration::from_millis(300), None)
        .unwrap();
    let e = c.exchange(vec![0; 100]).unwrap_err();
    assert!(matches!(e, TransportError::Timeout { .. }), "{e}");
    srv.join().unwrap();
}

#[test]
fn peers_running_different_programs_refuse_each_other() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let srv = std::thread::spawn(move || {
        TcpTransport::accept(
            &listener,
            Hello { role: Role::Server, session: [0; 16], program: [7; 32] },
            Duration::from_secs(5),
            None,
        )
        .map(|_| ())
    });
    let e = TcpTransport::connect(
        &addr,
        Hello { role: Role::Client, session: [1; 16], program: [8; 32] },
        Duration::from_secs(5),
        None,
    )
    .map(|_| ())
    .unwrap_err();
    assert!(e.to_string().contains("different program"), "{e}");
    let e = srv.join().unwrap().unwrap_err();
    assert!(e.to_string().contains("different program"), "{e}");
}

#[test]
fn a_missing_or_misshapen_input_is_a_clear_error() {
    let prog = small_program();
    let (mut c, s) = data();
    c.inputs.clear();
    let e = run_session(&prog, &c, &s, &RunOptions::default()).unwrap_err();
    assert!(e.to_string().contains("input `x`: missing"), "{e}");
    let (mut c, s) = data();
    c.inputs[0].1 = Values::F64(vec![1.0; 3]);
    let e = run_session(&prog, &c, &s, &RunOptions::default()).unwrap_err();
    assert!(e.to_string().contains("has 3 elements"), "{e}");
    let (c, mut s) = data();
    s.weights[0].1 = Values::F64(vec![f64::NAN; 8]);
    let e = run_session(&prog, &c, &s, &RunOptions::default()).unwrap_err();
    assert!(e.to_string().contains("does not fit fixed point"), "{e}");
}
