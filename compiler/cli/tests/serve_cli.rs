//! Serving as processes: `veil dealer`, `veil serve` and `veil connect` with many inferences per
//! session, and what a deployment must survive — a killed dealer, a client that stops, an
//! oversized frame, a leaky program, a dealer with the server's certificate.

mod common;

use common::{command, fails_with, ok, root, tmp, veil, BERT};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// BERT-tiny compiled once for these tests.
fn bert() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let p = tmp("serve").join("bert.vbc");
        ok(&veil(&["compile", BERT, "-o", &p.display().to_string()]));
        p
    })
}

/// A role process: its address, and its stderr lines as they come.
struct Role {
    child: Child,
    addr: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Role {
    fn spawn(args: &[&str]) -> Role {
        let mut child = command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(|l| l.ok()) {
                l2.lock().unwrap().push(l);
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ").expect("listening").to_string();
        std::thread::spawn(move || for _ in out.lines() {});
        Role { child, addr, lines }
    }

    fn wait_for(&self, what: &str, limit: Duration) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.contains(what)) {
                return l.clone();
            }
            assert!(t0.elapsed() < limit, "no `{what}` in {:?}", self.lines.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn rss(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A dealer and a server for `prog` over plain TCP, with `server_args` added.
fn deploy(prog: &Path, server_args: &[&str]) -> (Role, Role) {
    let p = prog.display().to_string();
    let dealer = Role::spawn(&["dealer", &p, "--listen", "127.0.0.1:0", "--insecure"]);
    let mut args =
        vec!["serve", &p, "--listen", "127.0.0.1:0", "--dealer", &dealer.addr, "--insecure"];
    args.extend_from_slice(server_args);
    let server = Role::spawn(&args);
    (dealer, server)
}

/// BERT-tiny's two stored test sets as samples (`<input name>.npy` per subdirectory).
fn samples() -> PathBuf {
    let d = tmp("samples");
    let fixtures = root().join("tests/fixtures/models/bert-tiny-random");
    for k in 0..2 {
        let s = d.join(format!("sample{k}"));
        std::fs::create_dir_all(&s).unwrap();
        for (i, name) in ["input_ids", "attention_mask", "token_type_ids"].iter().enumerate() {
            let from = fixtures.join(format!("test_data_set_{k}/input_{i}.npy"));
            std::fs::copy(from, s.join(format!("{name}.npy"))).unwrap();
        }
    }
    d
}

fn max_rel_err(got: &Path, want: &Path) -> f64 {
    let g = veil_compiler::npy::read(got).unwrap().to_f64_vec();
    let w = veil_compiler::npy::read(want).unwrap().to_f64_vec();
    let m = w.iter().fold(0f64, |m, v| m.max(v.abs()));
    g.iter().zip(&w).fold(0f64, |e, (a, b)| e.max((a - b).abs())) / m
}

#[test]
fn one_session_of_several_inferences_matches_onnxruntime_and_a_returning_client_downloads_nothing()
{
    let (dealer, server) = deploy(bert(), &["--pool", "2"]);
    let out = tmp("many");
    let cache = tmp("many-cache");
    let args = |o: &Path| {
        vec![
            "connect".to_string(),
            bert().display().to_string(),
            "--server".into(),
            server.addr.clone(),
            "--dealer".into(),
            dealer.addr.clone(),
            "--insecure".into(),
            "--inputs".into(),
            samples().display().to_string(),
            "--repeat".into(),
            "2".into(),
            "--cache".into(),
            cache.display().to_string(),
            "--output".into(),
            o.display().to_string(),
        ]
    };
    let so = ok(&veil(&args(&out)));
    assert!(so.contains("session: 4 inference(s)"), "{so}");
    assert!(so.contains("masked weights: 4.2 MB downloaded"), "{so}");
    // Samples 0, 1, 0, 1: each output is its own sample's.
    let fixtures = root().join("tests/fixtures/models/bert-tiny-random");
    for k in 0..4 {
        let want = fixtures.join(format!("test_data_set_{}/output_0.npy", k % 2));
        let e = max_rel_err(&out.join(format!("{k}/last_hidden_state.npy")), &want);
        assert!(e < 1e-2, "inference {k}: error {e:.2e} of max |y|");
    }
    // Again, as a returning client: the masked weights come from the cache.
    let so = ok(&veil(&args(&tmp("many-again"))));
    assert!(so.contains("masked weights: from the cache (nothing downloaded)"), "{so}");
    drop(server);
    drop(dealer);
}

#[test]
fn a_killed_dealer_makes_the_server_refuse_new_sessions_and_keep_running() {
    let (mut dealer, server) = deploy(bert(), &["--pool", "2"]);
    server.wait_for("2 ready", Duration::from_secs(60));
    dealer.child.kill().unwrap();
    let _ = dealer.child.wait();
    let line = server.wait_for("refusing new sessions", Duration::from_secs(30));
    assert!(line.contains("dealer"), "{line}");
    let mut args = vec!["connect".to_string(), bert().display().to_string(), "--insecure".into()];
    args.extend(["--server".into(), server.addr.clone(), "--dealer".into(), dealer.addr.clone()]);
    args.extend(common::bert_input_flags());
    let o = veil(&args);
    fails_with(&o, "the server refused");
    assert!(String::from_utf8_lossy(&o.stderr).contains("dealer"));
    let mut server = server;
    assert!(server.child.try_wait().unwrap().is_none(), "the server keeps running");
}

#[test]
fn a_stopped_client_loses_its_slot_and_the_next_client_is_served() {
    let (dealer, server) = deploy(bert(), &["--concurrent", "1", "--timeout", "3"]);
    let p = bert().display().to_string();
    let mut stalled = command()
        .args(["connect", &p, "--server", &server.addr, "--dealer", &dealer.addr, "--insecure"])
        .args(["--inputs", &samples().display().to_string(), "--repeat", "50", "--no-cache"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Stopped (SIGSTOP) once its first inference is done, in the middle of its session.
    let mut first = String::new();
    BufReader::new(stalled.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("inference 0"), "{first}");
    let pid = stalled.id().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let t0 = Instant::now();
    let mut args = vec!["connect".to_string(), p, "--insecure".into(), "--no-cache".into()];
    args.extend(["--server".into(), server.addr.clone(), "--dealer".into(), dealer.addr.clone()]);
    args.extend(common::bert_input_flags());
    let so = ok(&veil(&args));
    assert!(so.contains("output `last_hidden_state`"), "{so}");
    assert!(t0.elapsed() < Duration::from_secs(30), "served after {:?}", t0.elapsed());
    server.wait_for("session failed", Duration::from_secs(5));
    let _ = stalled.kill();
    let _ = stalled.wait();
}

#[test]
fn an_oversized_frame_is_refused_at_its_header_without_memory() {
    use veil_vm::net::hello::{handshake, Hello};
    use veil_vm::net::role::Role as R;
    let (_dealer, server) = deploy(bert(), &[]);
    server.wait_for("ready", Duration::from_secs(60));
    let prog = veil_isa::Program::from_bytes(&std::fs::read(bert()).unwrap()).unwrap();
    let before = server.rss();
    let sock = std::net::TcpStream::connect(&server.addr).unwrap();
    let mut link = veil_vm::net::tls::Link::plain(sock);
    let hello = Hello { role: R::Client, session: [5; 16], program: prog.hash() };
    handshake(&mut link, hello, R::Server, Duration::from_secs(10)).unwrap();
    // A header announcing 1.5 GiB where a control message is due, then junk behind it.
    let mut frame = (1_500_000_000u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&0u32.to_le_bytes());
    link.write_all(&frame).unwrap();
    let junk = vec![0u8; 1 << 20];
    for _ in 0..200 {
        if link.write_all(&junk).is_err() {
            break; // the server has closed the connection
        }
    }
    let line = server.wait_for("session failed", Duration::from_secs(20));
    assert!(line.contains("announces 1500000000 bytes"), "{line}");
    let after = server.rss();
    assert!(after < before + (16 << 20), "server RSS {before} -> {after}");
    let mut rest = Vec::new();
    let _ = link.read_to_end(&mut rest);
}

#[test]
fn connect_refuses_a_leaky_program_naming_the_instruction() {
    let mut p = veil_isa::Program::from_bytes(&std::fs::read(bert()).unwrap()).unwrap();
    // The client's masked activation E = x - A: send x itself instead.
    let (send_at, unmasked) = p
        .body
        .iter()
        .enumerate()
        .find_map(|(i, ins)| match ins {
            veil_isa::Instr::Send { a, from: veil_isa::Party::Client, .. } => {
                p.body[..i].iter().rev().find_map(|j| match j {
                    veil_isa::Instr::Sub { d, a: x, .. } if d == a => Some((i, *x)),
                    _ => None,
                })
            }
            _ => None,
        })
        .expect("a masked activation sent by the client");
    if let veil_isa::Instr::Send { a, .. } = &mut p.body[send_at] {
        *a = unmasked;
    }
    let leaky = tmp("leaky").join("leaky.vbc");
    std::fs::write(&leaky, p.to_bytes()).unwrap();
    let mut args = vec!["connect".to_string(), leaky.display().to_string(), "--insecure".into()];
    args.extend(common::bert_input_flags());
    let o = veil(&args);
    fails_with(&o, "refusing to run this program");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("body #{send_at}")) && err.contains("send"), "{err}");
    // The dealer refuses it too.
    fails_with(&veil(&["dealer", &leaky.display().to_string(), "--insecure"]), "refusing to run");
}

#[test]
fn a_role_refuses_to_start_with_another_roles_certificate() {
    let keys = tmp("role-keys").join("k");
    let k = keys.display().to_string();
    ok(&veil(&["keygen", "--name", "127.0.0.1", "-o", &k]));
    let p = bert().display().to_string();
    let o = veil(&[
        "dealer",
        &p,
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &format!("{k}/server.pem"),
        "--tls-key",
        &format!("{k}/server.key"),
        "--tls-ca",
        &format!("{k}/ca.pem"),
    ]);
    fails_with(&o, "this is the server's certificate");
}

#[test]
fn connecting_where_nothing_listens_says_where_and_why_once() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = format!("127.0.0.1:{port}");
    let prog = bert().display().to_string();
    let out = veil(&[
        "connect",
        &prog,
        "--server",
        &server,
        "--dealer",
        &server,
        "--insecure",
        "--inputs",
        &samples().join("sample0").display().to_string(),
        "--timeout",
        "2",
    ]);
    fails_with(&out, "nothing listens there (is `veil serve` running");
    let err = String::from_utf8_lossy(&out.stderr);
    // It retried visibly, and no part of the message is said twice.
    assert!(err.contains("retrying"), "{err}");
    let last = err.lines().last().unwrap();
    assert_eq!(last.matches(&server).count(), 1, "{last}");
    assert!(last.matches("os error").count() <= 1, "{last}");
}
