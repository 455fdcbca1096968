//! `veil compile / run / serve / dealer / connect / cost / demo` end to end as processes, and
//! their bad inputs: clear errors, exit code 1, no hang, nothing half-written.

mod common;

use common::{fails_with, ok, root, tmp, veil, BERT, DATA};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BERT_DYN: &str =
    "tests/fixtures/models/bert-tiny-random/model.torchscript_opset17_dynamic.onnx";
const GPT2: &str = "tests/fixtures/models/gpt2-tiny-random/model.dynamo_opset18.onnx";

fn compile(model: &str, out: &Path, extra: &[&str]) {
    let o = out.display().to_string();
    let mut args = vec!["compile", model, "-o", &o];
    args.extend_from_slice(extra);
    ok(&veil(&args));
}

/// A directory with BERT-tiny (`bert.*`) and GPT-2-tiny (`gpt.*`) compiled once, for the tests
/// that only read programs (compiling is the slow part of each test).
fn compiled() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tmp("compiled");
        compile(BERT, &d.join("bert.vbc"), &[]);
        compile(GPT2, &d.join("gpt.vbc"), &[]);
        d
    })
}

#[test]
fn compile_writes_three_files_and_nothing_private_for_the_client() {
    let d = tmp("compile");
    let prog = d.join("bert.vbc");
    compile(BERT, &prog, &[]);
    let client = std::fs::read(d.join("bert.client")).unwrap();
    let server = std::fs::read(d.join("bert.server.safetensors")).unwrap();
    assert!(server.len() > 2_000_000, "the server file holds the weights");
    // No window of four values of any server weight appears in the client's files, in the
    // encoding each uses: f32 in the client's part, fixed point in the program's constants.
    let st = safetensors_windows(&server);
    assert!(st.len() > 100, "{} windows", st.len());
    let prog_bytes = std::fs::read(&prog).unwrap();
    let frac = veil_isa::Program::from_bytes(&prog_bytes).unwrap().frac_bits;
    for w in &st {
        assert!(!contains(&client, w), "a server weight leaked into the client file");
        assert!(
            !contains(&prog_bytes, &fixed_point(w, frac)),
            "a server weight leaked into the program"
        );
    }
    // Negative control: layer 1's weights made public are in the program as constants, and the
    // search finds them there (a search for their f32 bytes finds nothing: constants are stored
    // in fixed point).
    let public = d.join("bert-public.vbc");
    compile(BERT, &public, &["--public", "*.layer.1.*"]);
    let public_bytes = std::fs::read(&public).unwrap();
    let found = st.iter().filter(|w| contains(&public_bytes, &fixed_point(w, frac))).count();
    let as_f32 = st.iter().filter(|w| contains(&public_bytes, w)).count();
    eprintln!("{found} of {} server windows found in fixed point, {as_f32} as f32", st.len());
    assert!(
        found >= 10,
        "only {found} of {} windows found in the program with public weights",
        st.len()
    );
    assert_eq!(as_f32, 0);
    assert!(!std::fs::read_dir(&d).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".partial")));
    let out = ok(&veil(&["cost", &prog.display().to_string(), "--net", "wan"]));
    assert!(out.contains("by layer:") && out.contains("layer1") && out.contains("WAN"), "{out}");
}

/// 16-byte windows from the data of a safetensors file (every 4096th, to keep it quick).
fn safetensors_windows(bytes: &[u8]) -> Vec<Vec<u8>> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let data = &bytes[8 + n..];
    data.chunks(4096)
        .filter(|c| c.len() >= 16 && c[..16].iter().any(|&b| b != 0))
        .map(|c| c[..16].to_vec())
        .collect()
}

/// Four little-endian f32 values as a program's constants store them: 64-bit fixed point with
/// `frac` fractional bits.
fn fixed_point(window: &[u8], frac: u8) -> Vec<u8> {
    window
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
        .flat_map(|x| veil_compiler::backend::lower::encode(x, frac).to_le_bytes())
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn run_over_tcp_processes_matches_onnxruntime() {
    let prog = compiled().join("bert.vbc");
    let outdir = tmp("run").join("out");
    let mut args = vec![
        "run".to_string(),
        prog.display().to_string(),
        "--output".into(),
        outdir.display().to_string(),
    ];
    args.extend(common::bert_input_flags());
    let so = ok(&veil(&args));
    assert!(so.contains("vs plaintext reference"), "{so}");
    assert!(so.contains("by op kind:") && so.contains("softmax"), "{so}");
    // Every process's peak memory, the dealer's included (Linux reads it from /proc).
    if cfg!(target_os = "linux") {
        assert!(so.contains("client peak RSS") && so.contains("dealer peak RSS"), "{so}");
    }
    let got = veil_compiler::npy::read(&outdir.join("last_hidden_state.npy")).unwrap().to_f64_vec();
    let want =
        veil_compiler::npy::read(&root().join(DATA).join("output_0.npy")).unwrap().to_f64_vec();
    let max = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = got.iter().zip(&want).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 1e-2 * max, "{err} vs {max}");
}

#[test]
fn demo_runs() {
    let so = ok(&veil(&["demo"]));
    assert!(so.contains("max abs error vs onnxruntime") && so.contains("ok:"), "{so}");
}

#[test]
fn program_for_another_sequence_length() {
    let d = tmp("seq");
    let prog = d.join("bert64.vbc");
    compile(BERT_DYN, &prog, &["--seq", "64"]);
    let mut args = vec!["run".to_string(), prog.display().to_string(), "--in-process".into()];
    args.extend(common::bert_input_flags());
    fails_with(&veil(&args), "the model needs i64[1,64]");
}

#[test]
fn missing_input_and_unknown_input() {
    let prog = compiled().join("bert.vbc");
    let p = prog.display().to_string();
    let ids = format!("input_ids={DATA}/input_0.npy");
    fails_with(&veil(&["run", &p, "--input", &ids]), "missing inputs: attention_mask");
    fails_with(&veil(&["run", &p, "--input", "nope=x.npy"]), "has no input `nope`");
}

#[test]
fn files_of_another_compile_are_refused() {
    let d = compiled();
    let bert = d.join("bert.vbc");
    // The server started with the wrong weights file.
    let w = d.join("gpt.server.safetensors").display().to_string();
    let o =
        veil(&["serve", &bert.display().to_string(), "--weights", &w, "--listen", "127.0.0.1:0"]);
    fails_with(&o, "was compiled with another program");
    // The client with the wrong client file.
    let c = d.join("gpt.client").display().to_string();
    let mut args =
        vec!["connect".to_string(), bert.display().to_string(), "--client-part".into(), c];
    args.extend(common::bert_input_flags());
    fails_with(&veil(&args), "was compiled with another program");
    // A damaged program.
    let bad = tmp("mismatch").join("bad.vbc");
    let mut bytes = std::fs::read(&bert).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&bad, bytes).unwrap();
    fails_with(&veil(&["cost", &bad.display().to_string()]), "bad.vbc");
}

/// `veil connect` to `server` and `dealer` over plain TCP with BERT-tiny's inputs.
fn plain_connect(program: String, server: String, dealer: String, timeout: &str) -> Vec<String> {
    let mut args = vec!["connect".to_string(), program, "--server".into(), server];
    args.extend(["--dealer".into(), dealer, "--timeout".into(), timeout.into()]);
    args.push("--insecure".into());
    args.extend(common::bert_input_flags());
    args
}

fn spawn(args: &[String]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut c =
        common::command().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(c.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").expect("listening").to_string();
    (c, addr)
}

#[test]
fn three_roles_as_separate_commands_and_a_client_with_another_program() {
    let d = compiled();
    let bert = d.join("bert.vbc");
    let gpt = d.join("gpt.vbc");
    let b = bert.display().to_string();
    // TLS between the processes, with certificates from `veil keygen`.
    let kdir = common::tmp("keys");
    let keys = kdir.join("deployment");
    let k = keys.display().to_string();
    let so = ok(&veil(&["keygen", "--name", "127.0.0.1", "-o", &k]));
    assert!(so.contains("server.pem"), "{so}");
    fails_with(&veil(&["keygen", "-o", &k]), "does not overwrite");
    let other = kdir.join("stranger");
    let o2 = other.display().to_string();
    ok(&veil(&["keygen", "-o", &o2]));
    let (mut dealer, daddr) = spawn(&[
        "dealer".into(),
        b.clone(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--tls".into(),
        k.clone(),
    ]);
    let (mut server, saddr) = spawn(&[
        "serve".into(),
        b.clone(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--dealer".into(),
        daddr.clone(),
        "--sessions".into(),
        "4".into(),
        "--timeout".into(),
        "10".into(),
        "--tls".into(),
        k.clone(),
    ]);
    // No TLS flags: a clear message before anything connects.
    let mut args = vec!["connect".to_string(), b.clone(), "--server".into(), saddr.clone()];
    args.extend(common::bert_input_flags());
    fails_with(&veil(&args), "connections are TLS: give --tls DIR");
    // Certificates from another CA: refused in the TLS handshake.
    args.extend([
        "--dealer".into(),
        daddr.clone(),
        "--tls".into(),
        o2,
        "--timeout".into(),
        "10".into(),
    ]);
    fails_with(&veil(&args), "certificate");
    // A client with the wrong program is refused at the handshake; the server keeps serving.
    let gid = format!(
        "input_ids={}/tests/fixtures/models/gpt2-tiny-random/test_data_set_0/input_0.npy",
        root().display()
    );
    let o = veil(&[
        "connect",
        &gpt.display().to_string(),
        "--server",
        &saddr,
        "--dealer",
        &daddr,
        "--input",
        &gid,
        "--timeout",
        "10",
        "--tls",
        &k,
    ]);
    fails_with(&o, "program");
    // The right client succeeds.
    let mut args = vec![
        "connect".to_string(),
        b,
        "--server".into(),
        saddr,
        "--dealer".into(),
        daddr,
        "--tls".into(),
        k,
    ];
    args.extend(common::bert_input_flags());
    let so = ok(&veil(&args));
    assert!(so.contains("output `last_hidden_state`"), "{so}");
    assert!(so.contains("masked weights: 4.2 MB downloaded (once per epoch)"), "{so}");
    // The same client again: a new session, the masked weights from its cache.
    let so = ok(&veil(&args));
    assert!(so.contains("masked weights: from the cache (nothing downloaded)"), "{so}");
    let t0 = Instant::now();
    assert!(server.wait().unwrap().success() || t0.elapsed() < Duration::from_secs(30));
    let _ = dealer.kill();
    let _ = dealer.wait();
}

#[test]
fn missing_dealer_ends_every_side_with_an_error() {
    let bert = compiled().join("bert.vbc");
    let b = bert.display().to_string();
    // Nothing listens at the dealer's address.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let daddr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let (server, saddr) = spawn(&[
        "serve".into(),
        b.clone(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--dealer".into(),
        daddr.clone(),
        "--sessions".into(),
        "1".into(),
        "--timeout".into(),
        "3".into(),
        "--insecure".into(),
    ]);
    let args = plain_connect(b, saddr, daddr, "3");
    let t0 = Instant::now();
    let o = veil(&args);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("dealer"), "{err}");
    let so = server.wait_with_output().unwrap();
    assert_eq!(so.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&so.stderr).contains("session failed"));
    assert!(t0.elapsed() < Duration::from_secs(30), "no hang");
}

#[test]
fn a_stalled_then_killed_server_process_ends_the_client_with_an_error() {
    let b = compiled().join("bert.vbc").display().to_string();
    let (mut dealer, daddr) = spawn(&[
        "dealer".into(),
        b.clone(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--insecure".into(),
    ]);
    let (mut server, saddr) = spawn(&[
        "serve".into(),
        b.clone(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--dealer".into(),
        daddr.clone(),
        "--insecure".into(),
    ]);
    // The server process stops answering (SIGSTOP): the client gives up after its timeout.
    let pid = server.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let args = plain_connect(b, saddr, daddr, "2");
    let t0 = Instant::now();
    fails_with(&veil(&args), "no message from the server within 2 s");
    assert!(t0.elapsed() < Duration::from_secs(20), "no hang");
    // Killed outright: nothing hangs, and the dealer is still there for other sessions.
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    let _ = server.wait();
    assert!(dealer.try_wait().unwrap().is_none(), "the dealer keeps serving");
    let _ = dealer.kill();
    let _ = dealer.wait();
}
