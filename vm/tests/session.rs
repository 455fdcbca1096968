//! Networked sessions on loopback: dealer and server listening, client connecting; the server
//! survives a client that fails and serves the next one.

mod common;
use common::*;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use veil_isa::{Party, Program};
use veil_vm::session::{deal, run_client, serve, NetOptions};
use veil_vm::Values;

fn program(n: u32, scale: u64) -> Program {
    let mut b = builder();
    let x = b.input("x", Party::Client, &[n], F);
    let w = b.weight("w", Party::Server, false, &[n], F);
    let p = b.mul_priv(x, w, 1);
    let s = b.mul_imm(p, scale);
    let r = b.relu(s, F);
    b.output("r", r, Party::Client, &[n], F);
    b.finish()
}

/// The inputs every well-behaved client sends (64 values in [-4, 4)).
fn good_inputs() -> Vec<(String, Values)> {
    let xs: Vec<f64> = (0..64).map(|i| i as f64 / 8.0 - 4.0).collect();
    vec![("x".into(), Values::F64(xs))]
}

/// Runs a well-behaved client and checks its output, relu(-2x), against the plaintext.
fn good_client(
    prog: &Program,
    saddr: std::net::SocketAddr,
    daddr: &str,
    opts: &NetOptions,
) -> veil_vm::session::SessionReport {
    let inputs = good_inputs();
    let (out, rep) = run_client(prog, &inputs, saddr, daddr, opts, None).unwrap();
    let Values::F64(xs) = &inputs[0].1 else { unreachable!() };
    for (i, &x) in xs.iter().enumerate() {
        assert!((out[0].data[i] - (-2.0 * x).max(0.0)).abs() < 1e-3);
    }
    rep
}

#[test]
fn client_server_and_dealer_over_tcp() {
    let prog = Arc::new(program(64, 1));
    let opts = NetOptions { timeout: Duration::from_secs(20), ..NetOptions::default() };
    let dl = TcpListener::bind("127.0.0.1:0").unwrap();
    let sl = TcpListener::bind("127.0.0.1:0").unwrap();
    let (daddr, saddr) = (dl.local_addr().unwrap().to_string(), sl.local_addr().unwrap());
    let dealt = Arc::new(Mutex::new(Vec::new()));
    let d2 = dealt.clone();
    let (p1, o1) = (prog.clone(), opts.clone());
    let dealer = std::thread::spawn(move || {
        deal(&dl, p1, &o1, Some(2), move |r| d2.lock().unwrap().push(r.map(|d| d.bytes)))
    });
    let served = Arc::new(Mutex::new(Vec::new()));
    let s2 = served.clone();
    let (p2, o2, da) = (prog.clone(), opts.clone(), daddr.clone());
    let server = std::thread::spawn(move || {
        let w = vec![("w".to_string(), Values::F64(vec![-2.0; 64]))];
        serve(&sl, &p2, &w, &da, &o2, Some(2), |r| {
            s2.lock().unwrap().push(r.map(|s| s.report.body.rounds))
        })
        .unwrap()
    });
    // First client: a wrong-shaped input fails on its side; the server reports that session as
    // failed and serves the next client.
    let bad = run_client(
        &prog,
        &[("x".into(), Values::F64(vec![1.0; 3]))],
        saddr,
        daddr.as_str(),
        &opts,
        None,
    );
    assert!(bad.unwrap_err().to_string().contains("has 3 elements"));
    let rep = good_client(&prog, saddr, &daddr, &opts);
    assert!(rep.report.body.rounds > 0);
    server.join().unwrap();
    dealer.join().unwrap().unwrap();
    let served = served.lock().unwrap();
    // Sessions run concurrently: they may end in either order.
    assert_eq!(served.len(), 2, "{served:?}");
    assert_eq!(served.iter().filter(|r| r.is_err()).count(), 1, "{served:?}");
}

#[test]
fn a_client_with_another_program_is_refused_by_the_server() {
    let prog = program(8, 1);
    let other = program(8, 3);
    let opts = NetOptions { timeout: Duration::from_secs(10), ..NetOptions::default() };
    let sl = TcpListener::bind("127.0.0.1:0").unwrap();
    let saddr = sl.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let res = Mutex::new(None);
        serve(&sl, &prog, &[], "127.0.0.1:1", &opts, Some(1), |r| *res.lock().unwrap() = Some(r))
            .unwrap();
        res.into_inner().unwrap().unwrap()
    });
    let e = run_client(
        &other,
        &[("x".into(), Values::F64(vec![1.0; 8]))],
        saddr,
        "127.0.0.1:1",
        &NetOptions::default(),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("different program"), "{e}");
    let e = server.join().unwrap().unwrap_err();
    assert!(e.to_string().contains("different program"), "{e}");
}

/// Connects as a client of session `id` to the server and the dealer (so the server gets its
/// material and starts), then sends `bytes` raw where the first message is due and hangs up.
fn misbehaving_client(
    prog: &Program,
    id: u8,
    saddr: std::net::SocketAddr,
    daddr: &str,
    bytes: &[u8],
) {
    use veil_vm::net::tcp::{handshake, Hello, Role};
    use veil_vm::net::tls::Link;
    let t = Duration::from_secs(10);
    let hello = Hello { role: Role::Client, session: [id; 16], program: prog.hash() };
    let mut s = Link::plain(std::net::TcpStream::connect(saddr).unwrap());
    handshake(&mut s, hello, Role::Server, false, t).unwrap();
    let mut d = Link::plain(std::net::TcpStream::connect(daddr).unwrap());
    handshake(&mut d, hello, Role::Dealer, false, t).unwrap();
    std::io::Write::write_all(&mut s, bytes).unwrap();
    // Let the server read it before the connection goes.
    std::thread::sleep(Duration::from_millis(300));
}

fn frame(len: u32, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = len.to_le_bytes().to_vec();
    f.extend_from_slice(&seq.to_le_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn bad_frames_end_only_their_session_and_the_server_serves_the_next_client() {
    let prog = Arc::new(program(64, 1));
    let opts = NetOptions { timeout: Duration::from_secs(20), ..NetOptions::default() };
    let dl = TcpListener::bind("127.0.0.1:0").unwrap();
    let sl = TcpListener::bind("127.0.0.1:0").unwrap();
    let (daddr, saddr) = (dl.local_addr().unwrap().to_string(), sl.local_addr().unwrap());
    let dealer = std::thread::spawn({
        let (p, o) = (prog.clone(), opts.clone());
        move || deal(&dl, p, &o, Some(4), |_| {})
    });
    let served = Arc::new(Mutex::new(Vec::new()));
    let server = std::thread::spawn({
        let (p, o, da, served) = (prog.clone(), opts.clone(), daddr.clone(), served.clone());
        move || {
            let w = vec![("w".to_string(), Values::F64(vec![-2.0; 64]))];
            serve(&sl, &p, &w, &da, &o, Some(4), |r| {
                served
                    .lock()
                    .unwrap()
                    .push(r.map(|s| s.report.body.rounds).map_err(|e| e.to_string()))
            })
            .unwrap()
        }
    });
    // Oversized: a header announcing more than any frame may hold.
    misbehaving_client(&prog, 1, saddr, &daddr, &frame(u32::MAX, 0, &[]));
    // Replayed or out of order: message 7 where message 0 is due.
    misbehaving_client(&prog, 2, saddr, &daddr, &frame(16, 7, &[0; 16]));
    // Truncated: 10 of the 1000 bytes announced, then the connection closes.
    misbehaving_client(&prog, 3, saddr, &daddr, &frame(1000, 0, &[0; 10]));
    good_client(&prog, saddr, &daddr, &opts);
    server.join().unwrap();
    dealer.join().unwrap().unwrap();
    let served = served.lock().unwrap();
    let errors: Vec<&String> = served.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(errors.len(), 3, "{served:?}");
    let all = format!("{errors:?}");
    for want in ["exceeds", "replayed or out of order", "closed the connection during message 0"] {
        assert!(all.contains(want), "no `{want}` in {all}");
    }
    assert_eq!(served.iter().filter(|r| r.is_ok()).count(), 1);
}

#[test]
fn over_tls_with_mutual_authentication_and_strangers_refused() {
    use veil_vm::net::keygen::generate;
    let keys = generate(&["127.0.0.1".to_string()]).unwrap();
    let other = generate(&["127.0.0.1".to_string()]).unwrap();
    let prog = Arc::new(program(64, 1));
    let with = |role: &str, k: &veil_vm::net::keygen::KeySet| NetOptions {
        timeout: Duration::from_secs(20),
        tls: Some(k.config(role).unwrap()),
        ..NetOptions::default()
    };
    let dl = TcpListener::bind("127.0.0.1:0").unwrap();
    let sl = TcpListener::bind("127.0.0.1:0").unwrap();
    let (daddr, saddr) = (dl.local_addr().unwrap().to_string(), sl.local_addr().unwrap());
    let dealer = std::thread::spawn({
        let (p, o) = (prog.clone(), with("dealer", &keys));
        move || deal(&dl, p, &o, Some(1), |_| {})
    });
    let served = Arc::new(Mutex::new(Vec::new()));
    let server = std::thread::spawn({
        let (p, o, da, served) =
            (prog.clone(), with("server", &keys), daddr.clone(), served.clone());
        move || {
            let w = vec![("w".to_string(), Values::F64(vec![-2.0; 64]))];
            serve(&sl, &p, &w, &da, &o, Some(3), |r| {
                served.lock().unwrap().push(r.map(|_| ()).map_err(|e| e.to_string()))
            })
            .unwrap()
        }
    });
    let inputs = good_inputs();
    // A client whose certificate another CA signed, and one without TLS: both refused.
    let e = run_client(&prog, &inputs, saddr, daddr.as_str(), &with("client", &other), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("certificate"), "{e}");
    let plain = NetOptions { timeout: Duration::from_secs(5), ..NetOptions::default() };
    assert!(run_client(&prog, &inputs, saddr, daddr.as_str(), &plain, None).is_err());
    good_client(&prog, saddr, &daddr, &with("client", &keys));
    server.join().unwrap();
    dealer.join().unwrap().unwrap();
    let served = served.lock().unwrap();
    let errors: Vec<&String> = served.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(errors.len(), 2, "{served:?}");
    eprintln!("{errors:?}");
    assert!(errors.iter().all(|e| e.contains("TLS handshake")), "{errors:?}");
}

#[test]
fn a_party_stalling_at_the_dealer_delays_no_other_session() {
    let prog = Arc::new(program(64, 1));
    let opts = NetOptions { timeout: Duration::from_secs(30), ..NetOptions::default() };
    let dl = TcpListener::bind("127.0.0.1:0").unwrap();
    let sl = TcpListener::bind("127.0.0.1:0").unwrap();
    let (daddr, saddr) = (dl.local_addr().unwrap().to_string(), sl.local_addr().unwrap());
    let dealer = std::thread::spawn({
        let (p, o) = (prog.clone(), opts.clone());
        move || deal(&dl, p, &o, Some(1), |_| {})
    });
    let server = std::thread::spawn({
        let (p, o, da) = (prog.clone(), opts.clone(), daddr.clone());
        move || {
            let w = vec![("w".to_string(), Values::F64(vec![-2.0; 64]))];
            serve(&sl, &p, &w, &da, &o, Some(1), |r| assert!(r.is_ok())).unwrap()
        }
    });
    // Connects to the dealer and says nothing.
    let stalled = std::net::TcpStream::connect(&daddr).unwrap();
    let t0 = std::time::Instant::now();
    // relu(-2x) at x = -4 is 8 (among the checked outputs).
    good_client(&prog, saddr, &daddr, &opts);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "waited {:?} behind the stalled party",
        t0.elapsed()
    );
    drop(stalled);
    server.join().unwrap();
    dealer.join().unwrap().unwrap();
}
