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
    // First client: a wrong-shaped input fails on its side; the server reports the session as
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
    let xs: Vec<f64> = (0..64).map(|i| i as f64 / 8.0 - 4.0).collect();
    let (out, rep) = run_client(
        &prog,
        &[("x".into(), Values::F64(xs.clone()))],
        saddr,
        daddr.as_str(),
        &opts,
        None,
    )
    .unwrap();
    for (i, &x) in xs.iter().enumerate() {
        assert!((out[0].data[i] - (-2.0 * x).max(0.0)).abs() < 1e-3);
    }
    assert!(rep.report.body.rounds > 0);
    server.join().unwrap();
    dealer.join().unwrap().unwrap();
    let served = served.lock().unwrap();
    assert!(served[0].is_err() && served[1].is_ok(), "{served:?}");
}

#[test]
fn a_client_with_another_program_is_refused_by_the_server() {
    let prog = program(8, 1);
    let other = program(8, 3);
    let opts = NetOptions { timeout: Duration::from_secs(10), ..NetOptions::default() };
    let sl = TcpListener::bind("127.0.0.1:0").unwrap();
    let saddr = sl.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let mut res = None;
        serve(&sl, &prog, &[], "127.0.0.1:1", &opts, Some(1), |r| res = Some(r)).unwrap();
        res.unwrap()
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
