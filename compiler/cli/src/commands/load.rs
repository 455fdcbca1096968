//! `veil bench --serve PROGRAM`: the load benchmark. Real `veil dealer`, `veil serve` and
//! `veil connect` processes over TLS on this machine: the latency of a query against a server
//! that was idle long enough to fill its pool (a first client and a returning one, each timed
//! as a whole process), then N concurrent clients × M queries at each concurrency level:
//! per-query latency (p50, p95, max), throughput, online bytes per query, the peak RSS of
//! every process, and every output checked against the plaintext reference. Writes
//! load.json, load.md and load-latency.svg.

use crate::commands::run::{TempDir, Throwaway};
use crate::outcome::{max_err, reference};
use crate::party::{client_part, program};
use crate::report::bytes;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Options of the load benchmark.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// Run the load benchmark on this compiled program (its client part and server weights
    /// next to it) instead of the suite.
    #[arg(long, value_name = "PROGRAM.vbc")]
    pub serve: Option<PathBuf>,
    /// Concurrent clients at each level (comma-separated).
    #[arg(long, value_name = "N[,N...]", value_delimiter = ',', default_value = "1,2,4")]
    pub clients: Vec<usize>,
    /// Queries each client runs through its one session.
    #[arg(long, value_name = "M", default_value_t = 8)]
    pub queries: usize,
    /// The server's --concurrent (clients beyond it wait in its listen queue).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub concurrent: usize,
    /// The server's --pool.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub pool: usize,
    /// Seconds any role waits for a peer message.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Skip the comparison with the plaintext reference (its plaintext runs take time).
    #[arg(long)]
    pub no_check: bool,
}

/// A child process whose stderr lines are kept (and echoed) as it runs.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    addr: String,
}

impl Proc {
    fn spawn(name: &str, args: &[String]) -> Result<Proc> {
        let exe = std::env::current_exe().context("locating the veil binary")?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the {name}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().expect("piped");
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(|l| l.ok()) {
                eprintln!("  {l}");
                l2.lock().expect("lines").push(l);
            }
        });
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        out.read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            bail!("the {name} did not start; see its messages above");
        };
        let addr = addr.to_string();
        // Drain the rest of stdout so the child never blocks on it.
        std::thread::spawn(move || for _ in out.lines() {});
        Ok(Proc { child, lines, addr })
    }

    /// Waits until a stderr line contains `what` (after `from` lines).
    fn wait_for(&self, what: &str, from: usize, limit: Duration) -> Result<()> {
        let t0 = Instant::now();
        loop {
            if self.lines.lock().expect("lines").iter().skip(from).any(|l| l.contains(what)) {
                return Ok(());
            }
            if t0.elapsed() > limit {
                bail!("no `{what}` from the process within {} s", limit.as_secs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn seen(&self) -> usize {
        self.lines.lock().expect("lines").len()
    }

    fn peak_rss(&self) -> u64 {
        crate::party::peak_rss_of(&self.child.id().to_string())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `veil connect` process's measurements.
#[derive(Clone, Debug, Default, Serialize)]
struct ClientRun {
    /// Wall time of the whole process.
    wall_secs: f64,
    /// Per query: latency, online-phase time, material wait, bytes.
    queries: Vec<serde_json::Value>,
    /// Bytes of masked weights it received before its first query.
    setup_received: u64,
    peak_rss: u64,
}

#[allow(clippy::too_many_arguments, reason = "one client process's whole command line")]
fn client(
    prog: &Path,
    server: &str,
    dealer: &str,
    keys: &Path,
    cache: &Path,
    seed: u64,
    queries: usize,
    out: &Path,
    timeout: u64,
) -> Result<std::process::Child> {
    let exe = std::env::current_exe()?;
    Ok(Command::new(exe)
        .args(["connect", &prog.display().to_string(), "--server", server, "--dealer", dealer])
        .args(["--tls", &keys.display().to_string(), "--cache", &cache.display().to_string()])
        .args(["--random-inputs", &seed.to_string(), "--repeat", &queries.to_string()])
        .args(["--output", &out.display().to_string(), "--report-json"])
        .args(["--timeout", &timeout.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

fn finish(child: std::process::Child, t0: Instant) -> Result<ClientRun> {
    let o = child.wait_with_output()?;
    let wall = t0.elapsed().as_secs_f64();
    if !o.status.success() {
        bail!("a client failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let mut r = ClientRun { wall_secs: wall, ..ClientRun::default() };
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(l)?;
        if v.get("session").is_some() {
            r.setup_received = v["setup_received"].as_u64().unwrap_or(0);
            r.peak_rss = v["peak_rss"].as_u64().unwrap_or(0);
        } else {
            r.queries.push(v);
        }
    }
    Ok(r)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One concurrency level's figures.
#[derive(Serialize)]
struct Level {
    clients: usize,
    queries_per_client: usize,
    latency_p50: f64,
    latency_p95: f64,
    latency_max: f64,
    body_p50: f64,
    material_wait_p50: f64,
    throughput_per_min: f64,
    wall_secs: f64,
    online_bytes_per_query: u64,
    rounds_per_query: u64,
    server_peak_rss: u64,
    dealer_peak_rss: u64,
    client_peak_rss_max: u64,
    max_rel_error: Option<f64>,
}

/// The idle-server measurement: one query of a first and of a returning client.
#[derive(Serialize)]
struct Idle {
    first_wall_secs: f64,
    first_setup_bytes: u64,
    first_latency_secs: f64,
    returning_wall_secs: f64,
    returning_setup_bytes: u64,
    returning_latency_secs: f64,
    online_secs: f64,
    client_peak_rss: u64,
}

#[derive(Serialize)]
struct Report {
    program: String,
    pool: usize,
    concurrent: usize,
    idle: Idle,
    levels: Vec<Level>,
}

/// What the dealer prints when a pruned program's material for the next query is ready.
const AHEAD_MADE: &str = "pruned material made ahead for the next query";

/// Waits until a deployed server can answer a query at once: a full pool of material, or for
/// a pruned program (whose material depends on the revealed counts, so the server keeps no
/// pool of it) the dealer's material made ahead. Only log lines past `since` (the dealer's
/// and the server's line counts) count.
fn wait_ready(
    (dealer, server): (&Proc, &Proc),
    pruned: bool,
    since: (usize, usize),
    pool: usize,
) -> Result<()> {
    let limit = Duration::from_secs(3600);
    match pruned {
        true => dealer.wait_for(AHEAD_MADE, since.0, limit),
        false => server.wait_for(&format!("{pool} ready"), since.1, limit),
    }
}

/// Starts a dealer and a server and waits until the server can answer at once
/// ([`wait_ready`]).
fn deploy(prog: &Path, keys: &Path, a: &LoadArgs, pruned: bool) -> Result<(Proc, Proc)> {
    let p = prog.display().to_string();
    let k = keys.display().to_string();
    let t = a.timeout.to_string();
    let dealer = Proc::spawn(
        "dealer",
        &["dealer", &p, "--listen", "127.0.0.1:0", "--tls", &k, "--timeout", &t].map(String::from),
    )?;
    let server = Proc::spawn(
        "server",
        &[
            "serve",
            &p,
            "--listen",
            "127.0.0.1:0",
            "--dealer",
            &dealer.addr,
            "--tls",
            &k,
            "--timeout",
            &t,
            "--concurrent",
            &a.concurrent.to_string(),
            "--pool",
            &a.pool.to_string(),
        ]
        .map(String::from),
    )?;
    wait_ready((&dealer, &server), pruned, (0, 0), a.pool)?;
    Ok((dealer, server))
}

/// Runs the load benchmark and writes its report to `out`.
pub fn run(prog_path: &Path, a: &LoadArgs, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let p = program(prog_path)?;
    let c = client_part(prog_path, None, &p)?;
    let keys = Throwaway::new()?;
    let kd = keys.dir.0.clone();
    let scratch = TempDir::new("veil-load")?;
    let check = |dir: &Path, seed: u64, n: usize| -> Result<f64> {
        if a.no_check {
            return Ok(0.0);
        }
        let mut worst = 0f64;
        for k in 0..n {
            let inputs = crate::model::random_reals(&c.graph, seed + k as u64, "--inputs")?;
            let Some(r) = reference(&p, None, &inputs)? else {
                bail!("no plaintext reference for {} (pass --no-check)", prog_path.display());
            };
            for (i, (name, _)) in c.outputs.iter().enumerate() {
                let f = dir
                    .join(k.to_string())
                    .join(format!("{}.npy", crate::commands::eval::file_name(name)));
                let got = veil_compiler::npy::read(&f)
                    .with_context(|| format!("reading {}", f.display()))?;
                let (e, m) = max_err(&got, &r[i]);
                worst = worst.max(e / m.max(1e-30));
            }
        }
        Ok(worst)
    };

    // 1. Idle: a first client and a returning one, each against a full pool.
    eprintln!("== idle server: one query of a first and of a returning client");
    let pruned = p.dynamic.is_some();
    let (dealer, server) = deploy(prog_path, &kd, a, pruned)?;
    let cache = scratch.0.join("cache");
    let idle_run = |name: &str| -> Result<ClientRun> {
        let since = (dealer.seen(), server.seen());
        let dir = scratch.0.join(name);
        let t0 = Instant::now();
        let ch = client(prog_path, &server.addr, &dealer.addr, &kd, &cache, 1, 1, &dir, a.timeout)?;
        let r = finish(ch, t0)?;
        let e = check(&dir, 1, 1)?;
        eprintln!("  {name}: {:.2} s as a process; error {e:.2e} of max |y|", r.wall_secs);
        // The consumed entry is made again before the next measurement.
        wait_ready((&dealer, &server), pruned, since, a.pool)?;
        Ok(r)
    };
    let first = idle_run("first")?;
    let returning = idle_run("returning")?;
    let q =
        |r: &ClientRun, key: &str| r.queries.first().and_then(|v| v[key].as_f64()).unwrap_or(0.0);
    let idle = Idle {
        first_wall_secs: first.wall_secs,
        first_setup_bytes: first.setup_received,
        first_latency_secs: q(&first, "latency_secs"),
        returning_wall_secs: returning.wall_secs,
        returning_setup_bytes: returning.setup_received,
        returning_latency_secs: q(&returning, "latency_secs"),
        online_secs: q(&returning, "body_secs"),
        client_peak_rss: first.peak_rss.max(returning.peak_rss),
    };
    drop(server);
    drop(dealer);

    // 2. Concurrency levels, each against a fresh server and dealer (per-level peak RSS).
    let mut levels = Vec::new();
    for &n in &a.clients {
        eprintln!("== {n} concurrent client(s) × {} queries", a.queries);
        let (dealer, server) = deploy(prog_path, &kd, a, pruned)?;
        let t0 = Instant::now();
        let mut kids = Vec::new();
        for i in 0..n {
            let dir = scratch.0.join(format!("c{n}-{i}"));
            let seed = 1000 * (i as u64 + 1);
            kids.push((
                dir.clone(),
                seed,
                client(
                    prog_path,
                    &server.addr,
                    &dealer.addr,
                    &kd,
                    &cache,
                    seed,
                    a.queries,
                    &dir,
                    a.timeout,
                )?,
            ));
        }
        let mut runs = Vec::new();
        for (dir, seed, ch) in kids {
            runs.push((dir, seed, finish(ch, t0)?));
        }
        let wall = t0.elapsed().as_secs_f64();
        let (server_rss, dealer_rss) = (server.peak_rss(), dealer.peak_rss());
        drop(server);
        drop(dealer);
        let mut worst = 0f64;
        for (dir, seed, _) in &runs {
            worst = worst.max(check(dir, *seed, a.queries)?);
        }
        let all: Vec<&serde_json::Value> =
            runs.iter().flat_map(|(_, _, r)| r.queries.iter()).collect();
        let sorted = |key: &str| {
            let mut v: Vec<f64> = all.iter().filter_map(|q| q[key].as_f64()).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let lat = sorted("latency_secs");
        let body = sorted("body_secs");
        let wait = sorted("material_wait_secs");
        let sum = |key: &str| all.iter().filter_map(|q| q[key].as_u64()).sum::<u64>();
        let nq = all.len().max(1) as u64;
        let level = Level {
            clients: n,
            queries_per_client: a.queries,
            latency_p50: percentile(&lat, 0.5),
            latency_p95: percentile(&lat, 0.95),
            latency_max: lat.last().copied().unwrap_or(0.0),
            body_p50: percentile(&body, 0.5),
            material_wait_p50: percentile(&wait, 0.5),
            throughput_per_min: 60.0 * all.len() as f64 / wall,
            wall_secs: wall,
            online_bytes_per_query: (sum("sent") + sum("received")) / nq,
            rounds_per_query: sum("rounds") / nq,
            server_peak_rss: server_rss,
            dealer_peak_rss: dealer_rss,
            client_peak_rss_max: runs.iter().map(|r| r.2.peak_rss).max().unwrap_or(0),
            max_rel_error: (!a.no_check).then_some(worst),
        };
        eprintln!(
            "  latency p50 {:.2} s, p95 {:.2} s, max {:.2} s; {:.2} queries/min; server {} RSS",
            level.latency_p50,
            level.latency_p95,
            level.latency_max,
            level.throughput_per_min,
            bytes(level.server_peak_rss)
        );
        levels.push(level);
    }
    let rep = Report {
        program: prog_path.display().to_string(),
        pool: a.pool,
        concurrent: a.concurrent,
        idle,
        levels,
    };
    write_atomic(&out.join("load.json"), &serde_json::to_string_pretty(&rep)?)?;
    write_atomic(&out.join("load.md"), &markdown(&rep))?;
    let series: Vec<(String, Vec<(f64, f64)>)> = vec![
        ("p50".into(), rep.levels.iter().map(|l| (l.clients as f64, l.latency_p50)).collect()),
        ("p95".into(), rep.levels.iter().map(|l| (l.clients as f64, l.latency_p95)).collect()),
        (
            "online phase p50".into(),
            rep.levels.iter().map(|l| (l.clients as f64, l.body_p50)).collect(),
        ),
    ];
    let svg = crate::svg::lines(
        "Query latency against concurrent clients",
        "concurrent clients",
        "seconds",
        &series,
    );
    write_atomic(&out.join("load-latency.svg"), &svg)?;
    print!("{}", markdown(&rep));
    println!("wrote {}/{{load.json, load.md, load-latency.svg}}", out.display());
    Ok(())
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp: PathBuf = path.with_extension("partial");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn markdown(r: &Report) -> String {
    let i = &r.idle;
    let mut s = format!(
        "## Serving `{}` (pool {}, --concurrent {})\n\nOne query against a server that was idle long enough to fill its pool, each client a whole `veil connect` process:\n\n| client | masked weights received | process wall time | query latency | online phase | wall / online |\n|---|---|---|---|---|---|\n",
        r.program, r.pool, r.concurrent
    );
    for (name, wall, setup, lat) in [
        ("first", i.first_wall_secs, i.first_setup_bytes, i.first_latency_secs),
        ("returning", i.returning_wall_secs, i.returning_setup_bytes, i.returning_latency_secs),
    ] {
        s += &format!(
            "| {name} | {} | {wall:.2} s | {lat:.2} s | {:.2} s | {:.2}× |\n",
            bytes(setup),
            i.online_secs,
            wall / i.online_secs.max(1e-9)
        );
    }
    s += &format!("\nClient peak RSS {}.\n\n", bytes(i.client_peak_rss));
    s += "| clients × queries | latency p50 | p95 | max | online p50 | material wait p50 | throughput | online bytes/query | rounds | server RSS | dealer RSS | client RSS (max) | max error |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for l in &r.levels {
        s += &format!(
            "| {} × {} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2}/min | {} | {} | {} | {} | {} | {} |\n",
            l.clients,
            l.queries_per_client,
            l.latency_p50,
            l.latency_p95,
            l.latency_max,
            l.body_p50,
            l.material_wait_p50,
            l.throughput_per_min,
            bytes(l.online_bytes_per_query),
            l.rounds_per_query,
            bytes(l.server_peak_rss),
            bytes(l.dealer_peak_rss),
            bytes(l.client_peak_rss_max),
            l.max_rel_error.map_or("—".into(), |e| format!("{e:.2e}")),
        );
    }
    s
}
