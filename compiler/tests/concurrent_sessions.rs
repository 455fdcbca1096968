//! One server, one dealer, four clients at once over TLS on loopback (the bundled BERT-tiny),
//! two inferences each through one session: every inference gets its own correct output, and
//! a misbehaving client in the middle of them ends only its own session.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::{client_run, compile, CompileOptions};
use veil_compiler::frontend::onnx::{import_file, ImportOptions};
use veil_compiler::ir::Tensor;
use veil_compiler::npy;
use veil_vm::session::{deal, serve, ClientSession, NetOptions, ServeControl, ServerEvent};

const CLIENTS: usize = 4;
const QUERIES: usize = 2;

#[test]
fn four_concurrent_clients_of_two_inferences_each_get_their_own_correct_outputs() {
    let dir = common::repo().join("tests/fixtures/models/bert-tiny-random");
    let opts = ImportOptions { seq: Some(128), ..ImportOptions::default() };
    let mut g = import_file(&dir.join("model.dynamo_opset17.onnx"), &opts).unwrap();
    veil_compiler::passes::run(&mut g, &mut veil_compiler::passes::import_pipeline()).unwrap();
    let names: Vec<String> = g.inputs.iter().map(|&v| g.values[v].name.clone()).collect();
    let reference = g.clone();
    let c = compile(g, &|_| Vis::Server, &CompileOptions::default()).unwrap();
    let prog = Arc::new(c.program.clone());

    // Eight different inputs: the two stored test sets, then token ids shifted per inference.
    let mut inputs: Vec<HashMap<String, Tensor>> = Vec::new();
    for k in 0..CLIENTS * QUERIES {
        let set = dir.join(format!("test_data_set_{}", k % 2));
        let mut m = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            let mut t = npy::read(&set.join(format!("input_{i}.npy"))).unwrap();
            if n == "input_ids" {
                if let veil_compiler::ir::Data::I64(v) = &mut t.data {
                    for x in v.iter_mut() {
                        *x = (*x + 37 * k as i64) % 1024;
                    }
                }
            }
            m.insert(n.clone(), t);
        }
        inputs.push(m);
    }

    // Over mutually authenticated TLS, as deployed; every role from one keygen.
    let keys = veil_vm::net::keygen::generate(&["127.0.0.1".to_string()]).unwrap();
    let net_as = |role: &str| NetOptions {
        timeout: Duration::from_secs(120),
        concurrent: CLIENTS,
        tls: Some(keys.config(role).unwrap()),
        ..NetOptions::default()
    };
    let net = net_as("client");
    let dl = TcpListener::bind("127.0.0.1:0").unwrap();
    let sl = TcpListener::bind("127.0.0.1:0").unwrap();
    let daddr = dl.local_addr().unwrap().to_string();
    let saddr = sl.local_addr().unwrap().to_string();
    let sessions = CLIENTS + 1; // and one client that breaks off
    let stop = Arc::new(AtomicBool::new(false));
    let dealer = std::thread::spawn({
        let (prog, net, stop) = (prog.clone(), net_as("dealer"), stop.clone());
        move || deal(&dl, prog, &net, None, &stop, |_| {})
    });
    let results = Arc::new(Mutex::new(Vec::new()));
    let server = std::thread::spawn({
        let (prog, net, daddr, results) =
            (prog.clone(), net_as("server"), daddr.clone(), results.clone());
        let weights: Vec<_> =
            c.server_weights.iter().map(|(n, t)| (n.clone(), common::values(t))).collect();
        move || {
            let w =
                veil_vm::interp::encode_weights(&prog, veil_isa::Party::Server, &weights).unwrap();
            serve(&sl, &prog, w, &daddr, &net, Some(sessions), &ServeControl::default(), |e| {
                if let ServerEvent::Session(r) = e {
                    results.lock().unwrap().push(r.map(|s| s.queries.len()))
                }
            })
        }
    });

    // A client that speaks garbage instead of TLS and hangs up: only its session fails.
    {
        let mut s = std::net::TcpStream::connect(&saddr).unwrap();
        s.write_all(&[b'x'; 61]).unwrap(); // a hello's length, not a hello
    }

    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| {
            let (prog, client, net, daddr, saddr) =
                (prog.clone(), c.client.clone(), net.clone(), daddr.clone(), saddr.clone());
            let mine: Vec<HashMap<String, Tensor>> =
                inputs[k * QUERIES..(k + 1) * QUERIES].to_vec();
            std::thread::spawn(move || {
                let mut s = ClientSession::connect(&prog, &saddr, &daddr, &net)
                    .unwrap_or_else(|e| panic!("client {k}: {e}"));
                let mut outs = Vec::new();
                for inp in &mine {
                    let (feeds, own) = client_run::preprocess(&client, inp).unwrap();
                    let vals: Vec<_> =
                        feeds.iter().map(|(n, t)| (n.clone(), common::values(t))).collect();
                    let (o, _) = s.infer(&vals).unwrap_or_else(|e| panic!("client {k}: {e}"));
                    let revealed: Vec<_> = o
                        .iter()
                        .map(|o| (o.name.clone(), o.shape.clone(), o.data.clone()))
                        .collect();
                    outs.push(client_run::assemble(&client, &revealed, &own).unwrap());
                }
                s.close().unwrap();
                outs
            })
        })
        .collect();
    for (k, h) in clients.into_iter().enumerate() {
        for (q, got) in h.join().unwrap().into_iter().enumerate() {
            let got = got[0].1.to_f64_vec();
            let i = k * QUERIES + q;
            let want = veil_compiler::eval::run(&reference, &inputs[i]).unwrap()[0].to_f64_vec();
            let max = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            let err = common::max_abs_diff(&got, &want);
            // The end-to-end tolerance of the two-party tests: 1% of the output's range.
            assert!(
                err < 0.01 * max,
                "client {k}, inference {q}: max abs error {err} of max {max}"
            );
        }
    }
    server.join().unwrap().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    dealer.join().unwrap().unwrap();
    let results = results.lock().unwrap();
    assert_eq!(results.len(), sessions);
    let failed: Vec<String> =
        results.iter().filter_map(|r| r.as_ref().err().map(|e| e.to_string())).collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(results.iter().filter(|r| matches!(r, Ok(q) if *q == QUERIES)).count(), CLIENTS);
    assert!(failed[0].contains("TLS handshake"), "{failed:?}");
}
