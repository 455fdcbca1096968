//! Running all three roles of a session: in threads over in-memory channels (tests,
//! `--in-process`) or over TCP on loopback. Separate machines use the same pieces
//! (`PartyVm`, `Dealer`, the TCP transports) from the CLI.

use crate::ahead::{Ahead, Plan};
use crate::dealer::{Base, Dealer};
use crate::error::VmError;
use crate::interp::{Output, PartyReport, PartyVm, Values};
use crate::material::Material;
use crate::net::hello::Hello;
use crate::net::local::{dealer_channel, LocalTransport};
use crate::net::role::Role;
use crate::net::tcp::TcpTransport;
use crate::net::{FrameSink, FrameSource, Prefetched, Transport, DEFAULT_TIMEOUT, LENGTH_TIMEOUT};
use crate::prg::{Prg, Seed};
use std::time::{Duration, Instant};
use veil_isa::{validate, Party, Program};

/// How to run a session.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Receive all dealer material before the online phase starts (so online time excludes
    /// the dealer). Otherwise material streams in while the parties run.
    pub prefetch: bool,
    /// How long a party waits for a message.
    pub timeout: Duration,
    /// Use TCP on loopback between the parties instead of in-memory channels.
    pub tcp: bool,
    /// Limit on each party's buffer memory, in bytes.
    pub max_memory: u64,
    /// Run local kernels compiled by the JIT (default when the `jit` feature is on) rather
    /// than interpreted; results are bit-identical.
    pub jit: bool,
    /// Fixed PRG seeds of the client and the server instead of fresh random ones, so that two
    /// runs draw the same masks (for tests comparing executions; never in deployment). The
    /// server's setup seed (its weight masks) is derived from its seed.
    pub seeds: Option<[crate::prg::Seed; 2]>,
    /// Keep every value after its last use (tests that compare whole buffer tables).
    pub keep_values: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            prefetch: true,
            timeout: DEFAULT_TIMEOUT,
            tcp: false,
            max_memory: crate::interp::DEFAULT_MAX_MEMORY,
            jit: cfg!(feature = "jit"),
            seeds: None,
            keep_values: false,
        }
    }
}

/// What a session produced and measured.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// Outputs revealed to the client.
    pub outputs: Vec<Output>,
    /// The client's measurements.
    pub client: PartyReport,
    /// The server's measurements.
    pub server: PartyReport,
    /// Bytes the dealer sent (corrections, seeds excluded), frames included.
    pub dealer_bytes: u64,
    /// Time until the server held all dealer material (prefetch only).
    pub offline_time: Duration,
    /// Wall time of the online phase (setup and body).
    pub online_time: Duration,
}

/// Inputs and weights of one party.
#[derive(Clone, Debug, Default)]
pub struct PartyData {
    /// Weights (the program's weight declarations of this party, and public ones).
    pub weights: Vec<(String, Values)>,
    /// Inputs for the run.
    pub inputs: Vec<(String, Values)>,
}

/// The server's setup seed (its weight masks for the epoch) derived from its body seed, so
/// fixed seeds fix both.
pub fn setup_seed(server: Seed) -> Seed {
    let w = Prg::new(server).words(3);
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&w[1].to_le_bytes());
    s[8..].copy_from_slice(&w[2].to_le_bytes());
    s
}

#[allow(clippy::too_many_arguments)] // one role's whole wiring
fn party(
    prog: &Program,
    me: Party,
    seed: Seed,
    corrections: Option<Box<dyn FrameSource>>,
    peer: Box<dyn Transport>,
    data: &PartyData,
    opts: &RunOptions,
    len_sink: Option<Box<dyn FrameSink>>,
) -> Result<(Vec<Output>, PartyReport), VmError> {
    let setup = match me {
        Party::Server => Material::new(me, setup_seed(seed), None),
        Party::Client => Material::none(me),
    };
    let mut vm = PartyVm::new(prog, me, setup, peer, opts.max_memory)?;
    if let Some(s) = len_sink {
        vm.set_len_sink(s);
    }
    vm.set_jit(opts.jit);
    vm.keep_values(opts.keep_values);
    vm.load_weights(&data.weights)?;
    vm.run_setup()?;
    vm.set_material(Material::new(me, seed, corrections));
    vm.set_inputs(&data.inputs)?;
    vm.run_body()?;
    Ok((vm.outputs(), vm.report()))
}

/// Runs dealer, client and server of one session in threads of this process.
pub fn run_session(
    prog: &Program,
    client: &PartyData,
    server: &PartyData,
    opts: &RunOptions,
) -> Result<RunResult, VmError> {
    validate(prog)?;
    let seeds = opts.seeds.unwrap_or_else(|| [Prg::random_seed(), Prg::random_seed()]);
    let (sink, mut source) = dealer_channel();
    // A dynamic program's dealer learns each pruned length from the client.
    let dynamic = prog.dynamic.is_some();
    let (len_sink, len_source) = dealer_channel();
    let len_source = len_source.with_timeout(LENGTH_TIMEOUT);
    let t0 = Instant::now();
    // A dynamic program's material depends on the lengths revealed during the run: with
    // `prefetch`, what can be made before them is made first (`ahead`), the rest streams.
    let ahead = dynamic && opts.prefetch;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let dealer_thread = {
        let prog = prog.clone();
        std::thread::spawn(move || -> Result<u64, VmError> {
            let base = std::sync::Arc::new(Base::new(&prog, setup_seed(seeds[1]))?);
            let mut d = if ahead {
                let plan = std::sync::Arc::new(Plan::new(&prog));
                let made = Ahead::make(&prog, base.clone(), seeds, plan)?;
                let _ = ready_tx.send(());
                Dealer::with_ahead(&prog, base, made, Box::new(sink))?
            } else {
                Dealer::new(&prog, base, seeds, Box::new(sink))
            };
            if dynamic {
                d.set_lengths(Box::new(len_source));
            }
            d.deal_body()?;
            d.finish()?;
            Ok(d.bytes())
        })
    };
    if ahead && ready_rx.recv().is_err() {
        // The dealer stopped before the material was made: its error says why.
        return Err(match dealer_thread.join().expect("dealer thread does not panic") {
            Err(e) => e,
            Ok(_) => VmError::Dealer {
                section: "body",
                index: 0,
                name: "body",
                msg: "the dealer stopped before making the material".into(),
            },
        });
    }
    let prefetch = opts.prefetch && !dynamic;
    let corrections: Box<dyn FrameSource> =
        if prefetch { Box::new(Prefetched::drain(&mut source)?) } else { Box::new(source) };
    let offline_time = if prefetch || ahead { t0.elapsed() } else { Duration::ZERO };
    let t1 = Instant::now();
    let (ct, st): (Box<dyn Transport>, Box<dyn Transport>) = if opts.tcp {
        let (c, s) = tcp_pair(prog, opts.timeout)?;
        (Box::new(c), Box::new(s))
    } else {
        let (c, s) = LocalTransport::pair();
        (Box::new(c.with_timeout(opts.timeout)), Box::new(s.with_timeout(opts.timeout)))
    };
    let (client_res, server_res) = std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            party(prog, Party::Server, seeds[1], Some(corrections), st, server, opts, None)
        });
        let len_sink: Option<Box<dyn FrameSink>> =
            if dynamic { Some(Box::new(len_sink)) } else { None };
        let c = party(prog, Party::Client, seeds[0], None, ct, client, opts, len_sink);
        (c, h.join().expect("server thread does not panic"))
    });
    let online_time = t1.elapsed();
    let dealer_res = dealer_thread.join().expect("dealer thread does not panic");
    let (client_res, server_res) = match (client_res, server_res) {
        (Ok(c), Ok(s)) => (c, s),
        (c, s) => return Err(root_cause([c.err(), s.err(), dealer_res.err()])),
    };
    let dealer_bytes = dealer_res?;
    let (outputs, client_rep) = client_res;
    let (_, server_rep) = server_res;
    Ok(RunResult {
        outputs,
        client: client_rep,
        server: server_rep,
        dealer_bytes,
        offline_time,
        online_time,
    })
}

/// Of the errors of the roles of a failed session, the one that explains it: a party's own
/// failure rather than the other's report that the connection closed.
pub fn root_cause(errors: [Option<VmError>; 3]) -> VmError {
    let mut errors: Vec<VmError> = errors.into_iter().flatten().collect();
    let secondary = |e: &VmError| {
        matches!(
            e,
            VmError::Transport(
                crate::net::TransportError::Closed { .. }
                    | crate::net::TransportError::Timeout { .. }
            )
        )
    };
    let pos = errors.iter().position(|e| !secondary(e)).unwrap_or(0);
    errors.swap_remove(pos)
}

/// A connected pair of TCP transports on loopback (client end, server end).
pub fn tcp_pair(
    prog: &Program,
    timeout: Duration,
) -> Result<(TcpTransport, TcpTransport), VmError> {
    let io = |e| crate::net::TransportError::Io {
        peer: "loopback".into(),
        during: String::new(),
        os: e,
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
    let addr = listener.local_addr().map_err(io)?.to_string();
    let hash = prog.hash();
    let session = Prg::random_seed();
    let server = std::thread::spawn(move || {
        TcpTransport::accept(
            &listener,
            Hello { role: Role::Server, session: [0; 16], program: hash },
            timeout,
            None,
        )
    });
    // Plain TCP: both ends are this process (networked roles use TLS, see `session`).
    let c = TcpTransport::connect(
        &addr,
        Hello { role: Role::Client, session, program: hash },
        timeout,
        None,
    )?;
    let (s, _) = server.join().expect("accept thread does not panic")?;
    Ok((c, s))
}
