//! The deployed path against peers that lie about their role or stop cooperating: roles are
//! the certificates', a pinned dealer is the only one accepted, and a client that stops
//! reading loses its slot within the timeout.

mod common;
use common::*;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use veil_isa::{Party, Program};
use veil_vm::interp::encode_weights;
use veil_vm::net::hello::Hello;
use veil_vm::net::keygen::{generate, KeySet};
use veil_vm::net::role::Role;
use veil_vm::net::tcp::Conn;
use veil_vm::session::{deal, serve, ClientSession, NetOptions, ServeControl, ServerEvent};
use veil_vm::Values;

fn program(n: u32) -> Program {
    let mut b = builder();
    let x = b.input("x", Party::Client, &[n], F);
    let w = b.weight("w", Party::Server, false, &[n], F);
    let p = b.mul_priv(x, w, 1);
    let r = b.relu(p, F);
    b.output("r", r, Party::Client, &[n], F);
    b.finish()
}

fn with(k: &KeySet, role: &str, timeout: u64) -> NetOptions {
    NetOptions {
        timeout: Duration::from_secs(timeout),
        tls: Some(k.config(role).unwrap()),
        ..NetOptions::default()
    }
}

/// Starts a dealer with `dealer_opts` and a server with `server_opts` (weights of `n`
/// elements); returns their addresses, the server's events and a stop function.
#[allow(clippy::type_complexity)]
fn deploy(
    prog: &Arc<Program>,
    n: usize,
    dealer_opts: NetOptions,
    server_opts: NetOptions,
) -> (String, String, Arc<Mutex<Vec<String>>>, Box<dyn FnOnce()>) {
    let dl = TcpListener::bind("127.0.0.1:0").unwrap();
    let sl = TcpListener::bind("127.0.0.1:0").unwrap();
    let (daddr, saddr) =
        (dl.local_addr().unwrap().to_string(), sl.local_addr().unwrap().to_string());
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(Mutex::new(Vec::new()));
    let dealer = std::thread::spawn({
        let (p, stop) = (prog.clone(), stop.clone());
        move || deal(&dl, p, &dealer_opts, None, &stop, |_| {}).unwrap()
    });
    let control = Arc::new(ServeControl::default());
    let server = std::thread::spawn({
        let (p, da, ctl, ev) = (prog.clone(), daddr.clone(), control.clone(), events.clone());
        move || {
            let w = encode_weights(&p, Party::Server, &[("w".into(), Values::F64(vec![-2.0; n]))])
                .unwrap();
            serve(&sl, &p, w, &da, &server_opts, None, &ctl, |e| {
                let line = match e {
                    ServerEvent::Session(Err(e)) => format!("session failed: {e}"),
                    e => format!("{e:?}"),
                };
                ev.lock().unwrap().push(line)
            })
            .unwrap()
        }
    });
    let stopper = Box::new(move || {
        control.stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        dealer.join().unwrap();
    });
    (daddr, saddr, events, stopper)
}

fn wait_for(events: &Mutex<Vec<String>>, what: &str, limit: Duration) -> String {
    let t0 = Instant::now();
    loop {
        if let Some(e) = events.lock().unwrap().iter().find(|e| e.contains(what)) {
            return e.clone();
        }
        assert!(t0.elapsed() < limit, "no `{what}` within {limit:?}: {:?}", events.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_dealer_with_the_servers_certificate_is_refused_by_server_and_client() {
    let k = generate(&["127.0.0.1".to_string()]).unwrap();
    let prog = Arc::new(program(8));
    // The flaw of finding 1: whoever holds the server's key runs a dealer with it.
    let (daddr, saddr, events, stop) =
        deploy(&prog, 8, with(&k, "server", 5), with(&k, "server", 5));
    let e = wait_for(&events, "DealerDown", Duration::from_secs(20));
    assert!(e.contains("presented the server's certificate where the dealer's was due"), "{e}");
    // The client refuses it too, before any seed could be handed over.
    let hello = Hello { role: Role::Client, session: [1; 16], program: prog.hash() };
    let c = with(&k, "client", 5);
    let e = Conn::dial(&daddr, Role::Dealer, hello, c.timeout, c.tls.as_ref(), &mut |_| {})
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("presented the server's certificate where the dealer's was due"),
        "{e}"
    );
    // And no session starts.
    assert!(ClientSession::connect(&prog, &saddr, &daddr, &c).is_err());
    stop();
}

#[test]
fn roles_are_the_certificates_and_a_pinned_dealer_is_the_only_one() {
    let k = generate(&["127.0.0.1".to_string()]).unwrap();
    let other = generate(&["127.0.0.1".to_string()]).unwrap();
    let prog = Arc::new(program(8));
    let (daddr, saddr, _events, stop) =
        deploy(&prog, 8, with(&k, "dealer", 10), with(&k, "server", 10));
    let x = vec![("x".to_string(), Values::F64(vec![-1.0; 8]))];
    // Negative control: the right certificates work end to end.
    let mut s = ClientSession::connect(&prog, &saddr, &daddr, &with(&k, "client", 10)).unwrap();
    assert!((s.infer(&x).unwrap().0[0].data[0] - 2.0).abs() < 1e-3);
    s.close().unwrap();
    // A client that presents the dealer's certificate to the server is refused.
    assert!(ClientSession::connect(&prog, &saddr, &daddr, &with(&k, "dealer", 10)).is_err());
    let e = wait_for(&_events, "session failed", Duration::from_secs(5));
    assert!(e.contains("presented the dealer's certificate where the client's was due"), "{e}");
    // Another CA's client is refused.
    assert!(ClientSession::connect(&prog, &saddr, &daddr, &with(&other, "client", 10)).is_err());
    // A hello that claims another role than the certificate names: a client posing as the
    // server at the dealer.
    let c = with(&k, "client", 10);
    let hello = Hello { role: Role::Server, session: [2; 16], program: prog.hash() };
    let e = Conn::dial(&daddr, Role::Dealer, hello, c.timeout, c.tls.as_ref(), &mut |_| {});
    if let Ok(mut conn) = e {
        // The dealer answers nothing and closes.
        assert!(conn.recv(veil_vm::net::Expect::AtMost(64)).is_err());
    }
    // Pinning: the client accepts only the dealer whose key it pinned.
    let dir = std::env::temp_dir().join(format!("veil-pin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pin = |set: &KeySet, name: &str| {
        let p = dir.join(name);
        std::fs::write(&p, &set.roles.iter().find(|r| r.0 == "dealer").unwrap().1).unwrap();
        let mut o = with(&k, "client", 10);
        o.tls.as_mut().unwrap().pin(Role::Dealer, &p).unwrap();
        o
    };
    let mut s = ClientSession::connect(&prog, &saddr, &daddr, &pin(&k, "right.pem")).unwrap();
    assert!(s.infer(&x).is_ok());
    s.close().unwrap();
    let mut s = ClientSession::connect(&prog, &saddr, &daddr, &pin(&other, "wrong.pem")).unwrap();
    let e = s.infer(&x).unwrap_err().to_string();
    assert!(e.contains("not the pinned one"), "{e}");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
    stop();
}

#[test]
fn a_client_that_stops_reading_loses_its_slot_within_the_timeout() {
    use veil_vm::net::frame::{read_vec, write_bytes};
    use veil_vm::net::Expect;
    // 1M weights: the masked weights (8 MB) overflow the socket buffers of a client that
    // does not read them, so the server's write blocks.
    let n = 1 << 20;
    let prog = Arc::new(program(n as u32));
    let o = NetOptions { timeout: Duration::from_secs(2), concurrent: 1, ..NetOptions::default() };
    let (daddr, saddr, events, stop) = deploy(&prog, n, o.clone(), o.clone());
    wait_for(&events, "Epoch", Duration::from_secs(30));
    // The stalled client: handshakes, asks for the masked weights, never reads them.
    let t = Duration::from_secs(5);
    let stalled = std::net::TcpStream::connect(&saddr).unwrap();
    let mut link = veil_vm::net::tls::Link::plain(stalled);
    let hello = Hello { role: Role::Client, session: [3; 16], program: prog.hash() };
    veil_vm::net::hello::handshake(&mut link, hello, Role::Server, t).unwrap();
    write_bytes(&mut link, 0, &[], true, t).unwrap();
    read_vec(&mut link, 0, "server", t, Expect::AtMost(4096)).unwrap();
    write_bytes(&mut link, 1, &[1, 0], true, t).unwrap();
    read_vec(&mut link, 1, "server", t, Expect::AtMost(4096)).unwrap();
    // Now it stops. The next genuine client still gets the only slot.
    let t0 = Instant::now();
    let mut s = ClientSession::connect(
        &prog,
        &saddr,
        &daddr,
        &NetOptions { timeout: Duration::from_secs(30), ..o },
    )
    .unwrap();
    let x = vec![("x".to_string(), Values::F64(vec![-1.0; n]))];
    assert!((s.infer(&x).unwrap().0[0].data[5] - 2.0).abs() < 1e-3);
    s.close().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(20), "served after {:?}", t0.elapsed());
    let failed = wait_for(&events, "session failed", Duration::from_secs(1));
    assert!(
        failed.contains("no message from the client") || failed.contains("too few bytes"),
        "{failed}"
    );
    drop(link);
    stop();
}
