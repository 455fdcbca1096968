//! Networked sessions on loopback: a dealer and a server listening, clients connecting; many
//! inferences per session, the pool, the epoch's masked weights cached by returning clients,
//! and the failures that end one session while the server serves the next.

mod common;
use common::*;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use veil_isa::{Party, Program};
use veil_vm::interp::encode_weights;
use veil_vm::session::client::ClientEvent;
use veil_vm::session::{deal, serve, ClientSession, NetOptions, ServeControl, ServerEvent};
use veil_vm::Values;

/// relu(scale · x · w) for a client input x and a server weight w of `n` elements.
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

/// A client's inputs: n values in [-4, 4), shifted by `k` so each query differs.
fn inputs(n: usize, k: usize) -> Vec<(String, Values)> {
    let xs: Vec<f64> = (0..n).map(|i| ((i + 3 * k) % 64) as f64 / 8.0 - 4.0).collect();
    vec![("x".into(), Values::F64(xs))]
}

/// Checks relu(-2x) for the inputs.
fn check(out: &[veil_vm::Output], inputs: &[(String, Values)]) {
    let Values::F64(xs) = &inputs[0].1 else { unreachable!() };
    for (i, &x) in xs.iter().enumerate() {
        let want = (-2.0 * x).max(0.0);
        assert!((out[0].data[i] - want).abs() < 1e-3, "element {i}: {} vs {want}", out[0].data[i]);
    }
}

/// A dealer and a server on loopback, in threads, with what they reported.
struct Deployment {
    daddr: String,
    saddr: String,
    stop_dealer: Arc<AtomicBool>,
    control: Arc<ServeControl>,
    dealer: Option<JoinHandle<()>>,
    server: Option<JoinHandle<()>>,
    events: Arc<Mutex<Vec<String>>>,
    sessions: Arc<Mutex<Vec<Result<veil_vm::session::SessionReport, String>>>>,
}

impl Deployment {
    fn start(
        prog: &Arc<Program>,
        opts: &NetOptions,
        server_opts: &NetOptions,
        n: usize,
    ) -> Deployment {
        let dl = TcpListener::bind("127.0.0.1:0").unwrap();
        let sl = TcpListener::bind("127.0.0.1:0").unwrap();
        let (daddr, saddr) =
            (dl.local_addr().unwrap().to_string(), sl.local_addr().unwrap().to_string());
        let stop_dealer = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let dealer = std::thread::spawn({
            let (p, o, stop, ev) =
                (prog.clone(), opts.clone(), stop_dealer.clone(), events.clone());
            move || {
                deal(&dl, p, &o, None, &stop, move |e| {
                    ev.lock().unwrap().push(format!("dealer {e:?}"))
                })
                .unwrap()
            }
        });
        let control = Arc::new(ServeControl::default());
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let server = std::thread::spawn({
            let (p, o, da, ctl, ev, ss) = (
                prog.clone(),
                server_opts.clone(),
                daddr.clone(),
                control.clone(),
                events.clone(),
                sessions.clone(),
            );
            move || {
                let w =
                    encode_weights(&p, Party::Server, &[("w".into(), Values::F64(vec![-2.0; n]))])
                        .unwrap();
                serve(&sl, &p, w, &da, &o, None, &ctl, |e| match e {
                    ServerEvent::Session(r) => {
                        ss.lock().unwrap().push(r.map_err(|e| e.to_string()))
                    }
                    e => ev.lock().unwrap().push(format!("server {e:?}")),
                })
                .unwrap()
            }
        });
        Deployment {
            daddr,
            saddr,
            stop_dealer,
            control,
            dealer: Some(dealer),
            server: Some(server),
            events,
            sessions,
        }
    }

    fn saw(&self, what: &str) -> bool {
        self.events.lock().unwrap().iter().any(|e| e.contains(what))
    }

    /// Waits until an event containing `what` was reported.
    fn wait_for(&self, what: &str, limit: Duration) {
        let t0 = Instant::now();
        while !self.saw(what) {
            assert!(
                t0.elapsed() < limit,
                "no `{what}` within {limit:?}: {:?}",
                self.events.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) -> Vec<Result<veil_vm::session::SessionReport, String>> {
        self.control.stop.store(true, Ordering::Relaxed);
        self.server.take().unwrap().join().unwrap();
        self.stop_dealer.store(true, Ordering::Relaxed);
        self.dealer.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.sessions.lock().unwrap())
    }
}

fn opts(timeout: u64) -> NetOptions {
    NetOptions { timeout: Duration::from_secs(timeout), ..NetOptions::default() }
}

#[test]
fn one_session_runs_many_inferences_and_a_returning_client_downloads_no_weights() {
    let n = 64;
    let prog = Arc::new(program(n as u32, 1));
    let o = opts(20);
    let d = Deployment::start(&prog, &o, &NetOptions { pool: 2, ..o.clone() }, n);
    let cache = std::env::temp_dir().join(format!("veil-test-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let copts = NetOptions { cache: Some(cache.clone()), ..o.clone() };
    let mut s = ClientSession::connect(&prog, &d.saddr, &d.daddr, &copts).unwrap();
    assert_eq!(s.setup().rounds, 1, "a first client receives the masked weights");
    assert_eq!(s.setup().received, 8 + 8 * n as u64);
    for k in 0..4 {
        let x = inputs(n, k);
        let (out, q) = s.infer(&x).unwrap();
        check(&out, &x);
        assert_eq!(q.online.rounds, veil_isa::cost::program_cost(&prog).body.rounds);
    }
    let first = s.close().unwrap();
    assert_eq!(first.queries.len(), 4);
    // The same client again, in a new session: its cache holds the epoch's masked weights.
    let mut s = ClientSession::connect(&prog, &d.saddr, &d.daddr, &copts).unwrap();
    assert_eq!(s.setup().rounds, 0, "a returning client downloads nothing");
    let x = inputs(n, 9);
    check(&s.infer(&x).unwrap().0, &x);
    s.close().unwrap();
    // A damaged cache is a miss, not a wrong result.
    for e in std::fs::read_dir(&cache).unwrap() {
        let p = e.unwrap().path();
        let mut b = std::fs::read(&p).unwrap();
        b.truncate(b.len() - 3);
        std::fs::write(&p, b).unwrap();
    }
    let mut s = ClientSession::connect(&prog, &d.saddr, &d.daddr, &copts).unwrap();
    assert_eq!(s.setup().rounds, 1);
    check(&s.infer(&x).unwrap().0, &x);
    s.close().unwrap();
    let sessions = d.stop();
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    let setup: Vec<u64> = sessions.iter().map(|r| r.as_ref().unwrap().setup.sent).collect();
    assert_eq!(setup.iter().filter(|&&b| b == 0).count(), 1, "{setup:?}");
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn the_pool_and_the_epoch_leave_no_file_behind_while_serving() {
    // A server stopped by a signal runs no cleanup: whatever its pool directory holds stays
    // on disk (649 MB of masked weights per BERT-base server). So nothing may be named there
    // even while it serves: the epoch's recording and the pool's entries are unlinked files.
    let n = 64;
    let prog = Arc::new(program(n as u32, 1));
    let o = opts(20);
    let dir = std::env::temp_dir().join(format!("veil-test-pool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let so = NetOptions { pool: 2, pool_dir: Some(dir.clone()), ..o.clone() };
    let d = Deployment::start(&prog, &o, &so, n);
    d.wait_for("ready: 2", Duration::from_secs(20));
    assert!(d.saw("server Epoch"), "the epoch was masked");
    let named = || std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect::<Vec<_>>();
    assert_eq!(named(), Vec::<std::path::PathBuf>::new(), "files named in the pool directory");
    // Two first-time clients at once replay the one unlinked recording at their own positions.
    let clients: Vec<_> = (0..2)
        .map(|k| {
            let (p, sa, da, co) = (prog.clone(), d.saddr.clone(), d.daddr.clone(), o.clone());
            std::thread::spawn(move || {
                let mut s = ClientSession::connect(&p, &sa, &da, &co).unwrap();
                assert_eq!(s.setup().received, 8 + 8 * n as u64, "the whole recording");
                let x = inputs(n, k);
                check(&s.infer(&x).unwrap().0, &x);
                s.close().unwrap();
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(named(), Vec::<std::path::PathBuf>::new());
    let sessions = d.stop();
    assert!(sessions.iter().all(|r| r.is_ok()), "{sessions:?}");
    std::fs::remove_dir(&dir).unwrap();
}

#[test]
fn a_dry_pool_makes_queries_wait_for_material_not_fail() {
    let n = 64;
    let prog = Arc::new(program(n as u32, 1));
    let o = opts(20);
    let d = Deployment::start(&prog, &o, &NetOptions { pool: 1, ..o.clone() }, n);
    let waited = Arc::new(Mutex::new(0usize));
    let w2 = waited.clone();
    let ev: Box<dyn FnMut(ClientEvent) + Send> = Box::new(move |e| {
        if matches!(e, ClientEvent::WaitingForMaterial) {
            *w2.lock().unwrap() += 1;
        }
    });
    let mut s = ClientSession::connect_with(&prog, &d.saddr, &d.daddr, &o, Some(ev)).unwrap();
    // Queries back to back: the pool holds one entry, so most find it empty and wait for the
    // dealer; none fails.
    let mut waits = Vec::new();
    for k in 0..5 {
        let x = inputs(n, k);
        let (out, q) = s.infer(&x).unwrap();
        check(&out, &x);
        waits.push(q.material_wait);
    }
    s.close().unwrap();
    let sessions = d.stop();
    assert!(sessions[0].is_ok(), "{sessions:?}");
    assert_eq!(sessions[0].as_ref().unwrap().queries.len(), 5);
    eprintln!("material waits {waits:?}, wait messages {}", waited.lock().unwrap());
}

#[test]
fn a_client_that_goes_away_between_queries_frees_its_slot() {
    let n = 64;
    let prog = Arc::new(program(n as u32, 1));
    let o = opts(20);
    let d = Deployment::start(&prog, &o, &NetOptions { concurrent: 1, ..o.clone() }, n);
    {
        let mut s = ClientSession::connect(&prog, &d.saddr, &d.daddr, &o).unwrap();
        let x = inputs(n, 1);
        check(&s.infer(&x).unwrap().0, &x);
        // Dropped without a goodbye: the connection closes between queries.
    }
    // The only slot is free again: the next client is served at once.
    let t0 = Instant::now();
    let mut s = ClientSession::connect(&prog, &d.saddr, &d.daddr, &o).unwrap();
    let x = inputs(n, 2);
    check(&s.infer(&x).unwrap().0, &x);
    s.close().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let sessions = d.stop();
    let errors: Vec<&String> = sessions.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(errors.len(), 1, "{sessions:?}");
    assert!(errors[0].contains("closed the connection"), "{errors:?}");
}

#[test]
fn a_stopped_dealer_makes_the_server_refuse_new_sessions_cleanly() {
    let n = 64;
    let prog = Arc::new(program(n as u32, 1));
    let o = opts(20);
    let d = Deployment::start(&prog, &o, &NetOptions { pool: 2, ..o.clone() }, n);
    d.wait_for("ready: 2", Duration::from_secs(20));
    d.stop_dealer.store(true, Ordering::Relaxed);
    d.wait_for("DealerDown", Duration::from_secs(20));
    let e = match ClientSession::connect(&prog, &d.saddr, &d.daddr, &o) {
        Ok(_) => panic!("a session started without a dealer"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("refused") && e.contains("dealer"), "{e}");
    let sessions = d.stop();
    assert!(sessions.iter().all(|r| r.is_err()), "{sessions:?}");
}

#[test]
fn a_client_with_another_program_or_bad_inputs_fails_alone() {
    let n = 64;
    let prog = Arc::new(program(n as u32, 1));
    let other = program(n as u32, 3);
    let o = opts(20);
    let d = Deployment::start(&prog, &o, &o, n);
    let e = ClientSession::connect(&other, &d.saddr, &d.daddr, &o).err().unwrap().to_string();
    assert!(e.contains("different program"), "{e}");
    let mut s = ClientSession::connect(&prog, &d.saddr, &d.daddr, &o).unwrap();
    let e = s.infer(&[("x".into(), Values::F64(vec![1.0; 3]))]).unwrap_err().to_string();
    assert!(e.contains("has 3 elements"), "{e}");
    // The session is still usable after a refused input.
    let x = inputs(n, 0);
    check(&s.infer(&x).unwrap().0, &x);
    s.close().unwrap();
    let sessions = d.stop();
    assert_eq!(sessions.iter().filter(|r| r.is_ok()).count(), 1, "{sessions:?}");
}

/// Connects to the server as a client, handshakes, and writes `bytes` raw where the first
/// message is due, then hangs up.
fn misbehaving_client(prog: &Program, saddr: &str, bytes: &[u8]) {
    use veil_vm::net::hello::{handshake, Hello};
    use veil_vm::net::role::Role;
    use veil_vm::net::tls::Link;
    let t = Duration::from_secs(10);
    let hello = Hello { role: Role::Client, session: [1; 16], program: prog.hash() };
    let mut s = Link::plain(std::net::TcpStream::connect(saddr).unwrap());
    handshake(&mut s, hello, Role::Server, t).unwrap();
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
    let n = 64;
    let prog = Arc::new(program(n as u32, 1));
    let o = opts(20);
    let d = Deployment::start(&prog, &o, &o, n);
    d.wait_for("Epoch", Duration::from_secs(20));
    // Oversized: a header announcing a gigabyte where a control message is due.
    misbehaving_client(&prog, &d.saddr, &frame(1 << 30, 0, &[]));
    // Replayed or out of order: message 7 where message 0 is due.
    misbehaving_client(&prog, &d.saddr, &frame(0, 7, &[]));
    // Truncated: 10 of the 1000 bytes announced, then the connection closes.
    misbehaving_client(&prog, &d.saddr, &frame(1000, 0, &[0; 10]));
    let mut s = ClientSession::connect(&prog, &d.saddr, &d.daddr, &o).unwrap();
    let x = inputs(n, 0);
    check(&s.infer(&x).unwrap().0, &x);
    s.close().unwrap();
    let sessions = d.stop();
    let errors: Vec<&String> = sessions.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(errors.len(), 3, "{sessions:?}");
    let all = format!("{errors:?}");
    for want in [
        "announces 1073741824 bytes",
        "replayed or out of order",
        "closed the connection during message 0",
    ] {
        assert!(all.contains(want), "no `{want}` in {all}");
    }
}

#[test]
fn a_party_stalling_at_the_dealer_delays_no_other_session() {
    let n = 64;
    let prog = Arc::new(program(n as u32, 1));
    let o = opts(30);
    let d = Deployment::start(&prog, &o, &o, n);
    // Connects to the dealer and says nothing.
    let stalled = std::net::TcpStream::connect(&d.daddr).unwrap();
    let t0 = Instant::now();
    let mut s = ClientSession::connect(&prog, &d.saddr, &d.daddr, &o).unwrap();
    let x = inputs(n, 0);
    check(&s.infer(&x).unwrap().0, &x);
    s.close().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "waited {:?} behind the stalled party",
        t0.elapsed()
    );
    drop(stalled);
    d.stop();
}

#[test]
fn each_inference_gets_fresh_independent_seeds_and_a_ticket_is_good_once() {
    use veil_vm::net::hello::Hello;
    use veil_vm::net::role::Role;
    use veil_vm::net::tcp::Conn;
    use veil_vm::net::Expect;
    use veil_vm::session::wire::{FromDealer, ToDealer, MAX_CONTROL};
    let prog = Arc::new(program(16, 1));
    let o = opts(20);
    let dl = TcpListener::bind("127.0.0.1:0").unwrap();
    let daddr = dl.local_addr().unwrap().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let dealer = std::thread::spawn({
        let (p, o, stop) = (prog.clone(), o.clone(), stop.clone());
        move || deal(&dl, p, &o, None, &stop, |_| {}).unwrap()
    });
    let dial = |role, session| {
        let h = Hello { role, session, program: prog.hash() };
        Conn::dial(&daddr, Role::Dealer, h, o.timeout, None, &mut |_| {}).unwrap()
    };
    let answer =
        |c: &mut Conn| FromDealer::decode(&c.recv(Expect::AtMost(MAX_CONTROL)).unwrap()).unwrap();
    let instance = [9; 16];
    let mut control = dial(Role::Server, instance);
    control.send(&ToDealer::Epoch { digest: [1; 32], rotate: false }.encode(), true).unwrap();
    let FromDealer::Epoch { id, seed: epoch_seed } = answer(&mut control) else {
        panic!("an epoch")
    };
    let mut seen = vec![epoch_seed];
    for k in 0..3u8 {
        let ticket = [k + 1; 16];
        let mut m = dial(Role::Server, ticket);
        m.send(&ToDealer::Material { epoch: id, live: false, instance }.encode(), true).unwrap();
        let FromDealer::Seed(server) = answer(&mut m) else { panic!("the server's seed") };
        while !m.recv(Expect::AtMost(1 << 30)).unwrap().is_empty() {}
        let mut c = dial(Role::Client, ticket);
        let FromDealer::Seed(client) = answer(&mut c) else { panic!("the client's seed") };
        // The client's seed is not the server's (the server would unmask the client's
        // activations), nor any seed of another inference or of the epoch.
        for s in [server, client] {
            assert!(!seen.contains(&s), "inference {k}: a seed was given out twice");
            seen.push(s);
        }
        // Whoever asks again with the same ticket gets nothing.
        let mut again = dial(Role::Client, ticket);
        assert!(matches!(answer(&mut again), FromDealer::Refused(_)));
    }
    drop(control);
    stop.store(true, Ordering::Relaxed);
    dealer.join().unwrap();
}
