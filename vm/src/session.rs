//! Sessions across machines: the server and the dealer listen, the client connects to both.
//!
//! 1. The client connects to the server; both exchange hellos (protocol version, role,
//!    session id chosen by the client, program hash) and refuse a mismatch.
//! 2. Each party connects to the dealer with the same session id and program hash.
//! 3. When both parties of a session have arrived, the dealer sends each its PRG seed, then
//!    streams the server's correction frames and an end-of-stream frame.
//! 4. The parties run the program; the client decodes the outputs.
//!
//! Every step has a timeout, so a missing or stalled peer ends the session with an error.

use crate::dealer::Dealer;
use crate::error::VmError;
use crate::interp::{Output, PartyReport, PartyVm, Values};
use crate::material::Material;
use crate::net::tcp::{
    connect_retry, greet_party, handshake, open, Hello, Role, TcpSink, TcpSource, TcpTransport,
};
use crate::net::tls::{Link, TlsConfig};
use crate::net::{FrameSink, FrameSource, Prefetched, TransportError};
use crate::prg::{Prg, Seed};
use std::collections::HashMap;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use veil_isa::{validate, Party, Program};

/// Options shared by the networked roles.
#[derive(Clone, Debug)]
pub struct NetOptions {
    /// How long to wait for any peer message.
    pub timeout: Duration,
    /// Receive all dealer material before the online phase (server).
    pub prefetch: bool,
    /// Limit on a party's buffer memory, bytes.
    pub max_memory: u64,
    /// Run local kernels compiled by the JIT (default when compiled in) or interpret them.
    pub jit: bool,
    /// Most client sessions a server runs at once; further clients wait in the listen queue.
    pub concurrent: usize,
    /// TLS identity and trust for every connection; `None` is plain TCP (`--insecure`).
    pub tls: Option<TlsConfig>,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            timeout: crate::net::DEFAULT_TIMEOUT,
            prefetch: true,
            max_memory: crate::interp::DEFAULT_MAX_MEMORY,
            jit: cfg!(feature = "jit"),
            concurrent: 4,
            tls: None,
        }
    }
}

/// What one party of a networked session measured.
#[derive(Clone, Debug)]
pub struct SessionReport {
    /// Session id.
    pub session: [u8; 16],
    /// The party's measurements.
    pub report: PartyReport,
    /// Time until all dealer material was received (server with prefetch).
    pub offline_time: Duration,
}

fn receive_seed(src: &mut dyn FrameSource) -> Result<Seed, VmError> {
    let f = src.recv_frame()?;
    f.as_slice().try_into().map_err(|_| {
        VmError::Transport(TransportError::Malformed {
            peer: "dealer".into(),
            what: format!("seed frame of {} bytes", f.len()),
        })
    })
}

fn dealer_link(
    addr: impl ToSocketAddrs,
    hello: Hello,
    timeout: Duration,
    tls: Option<&TlsConfig>,
) -> Result<TcpSource, VmError> {
    let s = connect_retry(addr, "dealer", timeout)?;
    let mut s = open(s, tls, "dealer", timeout)?;
    handshake(&mut s, hello, Role::Dealer, false, timeout)?;
    Ok(TcpSource::new(s, timeout)?)
}

/// Runs the client side of one session: connects to the server and the dealer, supplies the
/// inputs, returns the outputs revealed to the client and what it measured.
pub fn run_client(
    prog: &Program,
    inputs: &[(String, Values)],
    server: impl ToSocketAddrs,
    dealer: impl ToSocketAddrs,
    opts: &NetOptions,
    progress: Option<Box<dyn FnMut(usize, usize) + Send + '_>>,
) -> Result<(Vec<Output>, SessionReport), VmError> {
    validate(prog)?;
    let session = Prg::random_seed();
    let hello = Hello { role: Role::Client, session, program: prog.hash() };
    let tls = opts.tls.as_ref();
    let peer = TcpTransport::connect(server, hello, opts.timeout, tls)?;
    let mut src = dealer_link(dealer, hello, opts.timeout, tls)?;
    let seed = receive_seed(&mut src)?;
    let mut vm = PartyVm::new(
        prog,
        Party::Client,
        Material::new(Party::Client, seed, None),
        Box::new(peer),
        opts.max_memory,
    )?;
    if prog.dynamic.is_some() {
        vm.set_len_sink(Box::new(src.into_sink("dealer")));
    }
    vm.set_jit(opts.jit);
    if let Some(p) = progress {
        vm.on_progress(p);
    }
    vm.set_inputs(inputs)?;
    vm.run_setup()?;
    vm.run_body()?;
    Ok((vm.outputs(), SessionReport { session, report: vm.report(), offline_time: Duration::ZERO }))
}

/// Serves client sessions on `listener`, up to `opts.concurrent` at once, each in its own
/// thread with its own dealer material and VM (the weights are loaded once and shared), at
/// most `max_sessions` in all if given. A session's failure (a bad peer, a timeout, a wrong
/// program) is reported through `on_session` and ends only that session.
pub fn serve(
    listener: &TcpListener,
    prog: &Program,
    weights: &[(String, Values)],
    dealer: &str,
    opts: &NetOptions,
    max_sessions: Option<usize>,
    on_session: impl Fn(Result<SessionReport, VmError>) + Sync,
) -> Result<(), VmError> {
    validate(prog)?;
    let slots = Slots::new(opts.concurrent.max(1));
    let (slots, on_session) = (&slots, &on_session);
    std::thread::scope(|scope| {
        let mut accepted = 0;
        while max_sessions.is_none_or(|m| accepted < m) {
            // Accept only with a free slot: waiting clients stay in the listen queue.
            slots.take();
            accepted += 1;
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) => {
                    slots.give();
                    on_session(Err(TransportError::Io { peer: "client".into(), source: e }.into()));
                    continue;
                }
            };
            scope.spawn(move || {
                let r = serve_stream(stream, prog, weights, dealer, opts);
                slots.give();
                on_session(r);
            });
        }
    });
    Ok(())
}

/// A counting semaphore for session slots.
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    fn new(n: usize) -> Slots {
        Slots { free: Mutex::new(n), freed: Condvar::new() }
    }

    fn take(&self) {
        let mut n = self.free.lock().expect("slot count");
        while *n == 0 {
            n = self.freed.wait(n).expect("slot count");
        }
        *n -= 1;
    }

    fn give(&self) {
        *self.free.lock().expect("slot count") += 1;
        self.freed.notify_one();
    }
}

/// Serves one client session: accepts it on `listener`, then runs it.
pub fn serve_one(
    listener: &TcpListener,
    prog: &Program,
    weights: &[(String, Values)],
    dealer: &str,
    opts: &NetOptions,
) -> Result<SessionReport, VmError> {
    let (stream, _) =
        listener.accept().map_err(|e| TransportError::Io { peer: "client".into(), source: e })?;
    serve_stream(stream, prog, weights, dealer, opts)
}

/// Runs the session of a client that has connected on `stream`.
fn serve_stream(
    stream: TcpStream,
    prog: &Program,
    weights: &[(String, Values)],
    dealer: &str,
    opts: &NetOptions,
) -> Result<SessionReport, VmError> {
    let hello = Hello { role: Role::Server, session: [0; 16], program: prog.hash() };
    let tls = opts.tls.as_ref();
    let (peer, client_hello) = TcpTransport::accepted(stream, hello, opts.timeout, tls)?;
    let session = client_hello.session;
    let mut src = dealer_link(dealer, Hello { session, ..hello }, opts.timeout, tls)?;
    let seed = receive_seed(&mut src)?;
    let t0 = Instant::now();
    // The material after a pruning point depends on the length revealed there: a dynamic
    // program streams it.
    let corrections: Box<dyn FrameSource> = if opts.prefetch && prog.dynamic.is_none() {
        Box::new(Prefetched::drain(&mut src)?)
    } else {
        Box::new(src)
    };
    let offline_time = t0.elapsed();
    let mut vm = PartyVm::new(
        prog,
        Party::Server,
        Material::new(Party::Server, seed, Some(corrections)),
        Box::new(peer),
        opts.max_memory,
    )?;
    vm.set_jit(opts.jit);
    vm.load_weights(weights)?;
    vm.run_setup()?;
    vm.run_body()?;
    Ok(SessionReport { session, report: vm.report(), offline_time })
}

/// What the dealer did for one session.
#[derive(Clone, Debug)]
pub struct DealtSession {
    /// Session id.
    pub session: [u8; 16],
    /// Correction bytes sent to the server (frames included).
    pub bytes: u64,
    /// Time spent generating and sending.
    pub time: Duration,
}

/// Accepts parties on `listener` and deals for each session once both its client and its
/// server have connected (at most `max_sessions` if given). Each session is dealt in its own
/// thread; a failed session is reported and the dealer keeps serving.
pub fn deal(
    listener: &TcpListener,
    prog: Arc<Program>,
    opts: &NetOptions,
    max_sessions: Option<usize>,
    on_session: impl Fn(Result<DealtSession, VmError>) + Send + Sync + 'static,
) -> Result<(), VmError> {
    validate(&prog)?;
    let hello = Hello { role: Role::Dealer, session: [0; 16], program: prog.hash() };
    let stop = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel::<Result<(Link, Hello), TransportError>>();
    std::thread::scope(|scope| {
        // Accepting and greeting happen off the pairing loop, each greeting in its own thread:
        // a party that connects and then stalls delays nobody else.
        let (stop, tx) = (&stop, tx);
        scope.spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let tx = tx.clone();
                match conn {
                    Ok(s) => {
                        scope.spawn(move || {
                            let _ = tx.send(greet_party(s, hello, opts.timeout, opts.tls.as_ref()));
                        });
                    }
                    Err(e) => {
                        let _ =
                            tx.send(Err(TransportError::Io { peer: "party".into(), source: e }));
                    }
                }
            }
        });
        let mut waiting: HashMap<[u8; 16], (Role, Link)> = HashMap::new();
        let mut started = 0;
        while max_sessions.is_none_or(|m| started < m) {
            let Ok(greeted) = rx.recv() else { break };
            let (stream, theirs) = match greeted {
                Ok(x) => x,
                Err(e) => {
                    on_session(Err(e.into()));
                    continue;
                }
            };
            let (client, server) = match waiting.remove(&theirs.session) {
                Some((Role::Client, c)) if theirs.role == Role::Server => (c, stream),
                Some((Role::Server, s)) if theirs.role == Role::Client => (stream, s),
                Some((role, other)) => {
                    on_session(Err(VmError::Transport(TransportError::Handshake {
                        peer: theirs.role.name().into(),
                        what: format!("two {}s joined the same session", role.name()),
                    })));
                    drop(other);
                    continue;
                }
                None => {
                    waiting.insert(theirs.session, (theirs.role, stream));
                    continue;
                }
            };
            started += 1;
            let (prog, cb) = (prog.clone(), &on_session);
            let session = theirs.session;
            scope.spawn(move || cb(deal_session(&prog, session, client, server)));
        }
        // Wake the acceptor so that it sees the stop flag.
        stop.store(true, Ordering::Relaxed);
        if let Ok(addr) = listener.local_addr() {
            let _ = TcpStream::connect(addr);
        }
    });
    Ok(())
}

fn deal_session(
    prog: &Program,
    session: [u8; 16],
    client: Link,
    server: Link,
) -> Result<DealtSession, VmError> {
    let t0 = Instant::now();
    let seeds = [Prg::random_seed(), Prg::random_seed()];
    let mut to_client = TcpSink::new(client, "client");
    to_client.send_frame(seeds[0].to_vec())?;
    to_client.send_frame(Vec::new())?;
    let mut to_server = TcpSink::new(server, "server");
    to_server.send_frame(seeds[1].to_vec())?;
    let mut d = Dealer::new(prog, seeds, Box::new(to_server));
    // A dynamic program's client reports each pruned length on its dealer link.
    let _keep;
    if prog.dynamic.is_some() {
        d.set_lengths(Box::new(to_client.into_source(crate::net::LENGTH_TIMEOUT)?));
    } else {
        _keep = to_client;
    }
    d.deal_setup()?;
    d.deal_body()?;
    d.finish()?;
    Ok(DealtSession { session, bytes: d.bytes(), time: t0.elapsed() })
}
