//! One server, one dealer, eight clients at once over TLS on loopback (the bundled BERT-tiny):
//! every client gets its own correct output, and a misbehaving client in the middle of them
//! ends only its own session.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::{client_run, compile, CompileOptions};
use veil_compiler::frontend::onnx::{import_file, ImportOptions};
use veil_compiler::ir::Tensor;
use veil_compiler::npy;
use veil_vm::session::{deal, run_client, serve, NetOptions};

const CLIENTS: usize = 8;

#[test]
fn eight_concurrent_clients_each_get_their_own_correct_output() {
    let dir = common::repo().join("tests/fixtures/models/bert-tiny-random");
    let opts = ImportOptions { seq: Some(128), ..ImportOptions::default() };
    let mut g = import_file(&dir.join("model.dynamo_opset17.onnx"), &opts).unwrap();
    veil_compiler::passes::run(&mut g, &mut veil_compiler::passes::import_pipeline()).unwrap();
    let names: Vec<String> = g.inputs.iter().map(|&v| g.values[v].name.clone()).collect();
    let reference = g.clone();
    let c = compile(g, &|_| Vis::Server, &CompileOptions::default()).unwrap();
    let prog = Arc::new(c.program.clone());

    // Eight different inputs: the two stored test sets, then token ids shifted per client.
    let mut inputs: Vec<HashMap<String, Tensor>> = Vec::new();
    for k in 0..CLIENTS {
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
    let saddr = sl.local_addr().unwrap();
    let sessions = CLIENTS + 1; // and one client that breaks off
    let dealer = std::thread::spawn({
        let (prog, net) = (prog.clone(), net_as("dealer"));
        move || deal(&dl, prog, &net, Some(CLIENTS), |_| {})
    });
    let results = Arc::new(Mutex::new(Vec::new()));
    let server = std::thread::spawn({
        let (prog, net, daddr, results) =
            (prog.clone(), net_as("server"), daddr.clone(), results.clone());
        let weights: Vec<_> =
            c.server_weights.iter().map(|(n, t)| (n.clone(), common::values(t))).collect();
        move || {
            serve(&sl, &prog, &weights, &daddr, &net, Some(sessions), |r| {
                results.lock().unwrap().push(r.map(|s| s.report.body.rounds))
            })
        }
    });

    // A client that speaks garbage instead of TLS and hangs up: only its session fails.
    {
        let mut s = std::net::TcpStream::connect(saddr).unwrap();
        s.write_all(&[b'x'; 61]).unwrap(); // a hello's length, not a hello
    }

    let clients: Vec<_> = inputs
        .iter()
        .map(|inp| {
            let (prog, client, net, daddr) =
                (prog.clone(), c.client.clone(), net.clone(), daddr.clone());
            let inp = inp.clone();
            std::thread::spawn(move || {
                let (feeds, own) = client_run::preprocess(&client, &inp).unwrap();
                let vals: Vec<_> =
                    feeds.iter().map(|(n, t)| (n.clone(), common::values(t))).collect();
                let (outs, _) = run_client(&prog, &vals, saddr, daddr.as_str(), &net, None)
                    .unwrap_or_else(|e| panic!("client: {e}"));
                let revealed: Vec<_> = outs
                    .iter()
                    .map(|o| (o.name.clone(), o.shape.clone(), o.data.clone()))
                    .collect();
                client_run::assemble(&client, &revealed, &own).unwrap()
            })
        })
        .collect();
    for (k, h) in clients.into_iter().enumerate() {
        let got = h.join().unwrap()[0].1.to_f64_vec();
        let want = veil_compiler::eval::run(&reference, &inputs[k]).unwrap()[0].to_f64_vec();
        let max = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let err = common::max_abs_diff(&got, &want);
        // The end-to-end tolerance of the two-party tests: 1% of the output's range.
        assert!(err < 0.01 * max, "client {k}: max abs error {err} of max {max}");
    }
    server.join().unwrap().unwrap();
    dealer.join().unwrap().unwrap();
    let results = results.lock().unwrap();
    assert_eq!(results.len(), sessions);
    let failed: Vec<String> =
        results.iter().filter_map(|r| r.as_ref().err().map(|e| e.to_string())).collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("TLS handshake"), "{failed:?}");
}
