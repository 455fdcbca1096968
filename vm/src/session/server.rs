//! The server: one thread keeps the link to the dealer (epochs, the material pool, rotation),
//! the others serve client sessions, each with any number of inferences.

use super::epoch::{self, setup_has_round, Epoch};
use super::pool::{Entry, FileSource, Pool, Take};
use super::wire::{ClientMsg, FromDealer, Id, ServerMsg, ToDealer, Welcome, MAX_CONTROL};
use super::{random_id, NetOptions, QueryReport, SessionReport};
use crate::error::VmError;
use crate::interp::{PartyVm, SharedWeights};
use crate::material::Material;
use crate::net::background::Background;
use crate::net::frame::write_bytes;
use crate::net::hello::{hex, Hello};
use crate::net::role::Role;
use crate::net::tcp::{Conn, TcpTransport};
use crate::net::{Expect, FrameSource, Outgoing, Transport, TransportError};
use sha2::{Digest, Sha256};
use std::io::{BufWriter, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use veil_isa::lifetime;
use veil_isa::{Party, Program};

/// What the server reports as it runs.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "a handful of events per session")]
pub enum ServerEvent {
    /// Trying to reach the dealer (seconds waited so far).
    WaitingForDealer(u64),
    /// The dealer is reachable (again).
    DealerUp,
    /// The dealer went away or refused: new sessions are refused until it is back.
    DealerDown(String),
    /// A new epoch's weights were masked (`bytes` recorded for new clients).
    Epoch {
        /// Its id.
        id: Id,
        /// Bytes of the masked weights.
        bytes: u64,
        /// Time to mask them.
        time: Duration,
        /// A rotation (not the first epoch).
        rotated: bool,
    },
    /// One inference of material is in the pool.
    Material {
        /// Its size.
        bytes: u64,
        /// Time the dealer took.
        time: Duration,
        /// Entries ready now.
        ready: usize,
    },
    /// A session ended.
    Session(Result<SessionReport, VmError>),
}

/// Commands to a running server.
#[derive(Default)]
pub struct ServeControl {
    /// Start a new epoch (new weight masks) as soon as possible.
    pub rotate: AtomicBool,
    /// Stop accepting sessions and return (sessions in progress finish first).
    pub stop: AtomicBool,
}

/// The state the dealer thread and the sessions share.
struct Shared<'a> {
    prog: &'a Program,
    weights: SharedWeights,
    digest: [u8; 32],
    dealer: &'a str,
    opts: &'a NetOptions,
    dir: PathBuf,
    pool: Pool,
    epoch: Mutex<Option<Arc<Epoch>>>,
    /// Why sessions are refused now (empty: they are not).
    down: Mutex<String>,
    /// Not yet connected to the dealer once: sessions wait rather than being refused.
    starting: AtomicBool,
    instance: Id,
    /// The most bytes one dealer frame of this program can have.
    max_frame: u64,
    /// The most bytes of dealer material one inference can have (at full length), frame
    /// headers included.
    max_material: u64,
    /// What one session needs ([`lifetime::footprint`], computed once).
    footprint: lifetime::Footprint,
}

impl Shared<'_> {
    fn hello(&self, session: Id) -> Hello {
        Hello { role: Role::Server, session, program: self.prog.hash() }
    }

    fn set_down(&self, why: &str) {
        *self.down.lock().expect("status") = why.to_string();
    }

    fn is_down(&self) -> Option<String> {
        let s = self.down.lock().expect("status");
        (!s.is_empty()).then(|| s.clone())
    }

    fn current(&self) -> Option<Arc<Epoch>> {
        self.epoch.lock().expect("epoch").clone()
    }
}

/// A digest of the server's weights: an epoch is for one set of weights, so a server that
/// restarts with other weights gets a new epoch and no client keeps stale masked weights.
fn digest(w: &SharedWeights) -> [u8; 32] {
    let mut h = Sha256::new();
    for (b, v) in w {
        h.update(b.0.to_le_bytes());
        h.update((v.len() as u64).to_le_bytes());
        for chunk in v.chunks(1 << 16) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
            h.update(&bytes);
        }
    }
    h.finalize().into()
}

/// Serves client sessions on `listener`, up to `opts.concurrent` at once, each in its own
/// thread with its own VM over weights encoded once, at most `max_sessions` in all if given,
/// until `control.stop`. A session's failure is reported through `on_event` and ends only
/// that session. The dealer at `dealer` is kept connected in a thread of its own.
#[allow(clippy::too_many_arguments, reason = "the server role's whole wiring")]
pub fn serve(
    listener: &TcpListener,
    prog: &Program,
    weights: SharedWeights,
    dealer: &str,
    opts: &NetOptions,
    max_sessions: Option<usize>,
    control: &ServeControl,
    on_event: impl Fn(ServerEvent) + Sync,
) -> Result<(), VmError> {
    veil_isa::validate(prog)?;
    if let Some(why) = crate::dealer::epoch_setup_problem(prog) {
        return Err(VmError::Dealer { section: "setup", index: 0, name: "setup", msg: why });
    }
    // Every file of the pool and of the epoch is unlinked as soon as it is created, so the
    // default needs no directory of its own (one would outlive a server stopped by a signal).
    let dir = opts.pool_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&dir).map_err(|e| disk(&dir, e))?;
    let max_frame =
        prog.body.iter().map(|i| veil_isa::cost::correction_bytes(i, prog)).max().unwrap_or(0);
    let shared = Shared {
        prog,
        digest: digest(&weights),
        weights,
        dealer,
        opts,
        dir: dir.clone(),
        pool: Pool::new(opts.pool.max(1)),
        epoch: Mutex::new(None),
        down: Mutex::new("the server is still connecting to its dealer".into()),
        starting: AtomicBool::new(true),
        instance: random_id(),
        max_frame,
        max_material: veil_isa::cost::program_cost(prog).body.dealer + (1 << 20),
        footprint: lifetime::footprint(prog, Party::Server),
    };
    let slots = Slots::new(opts.concurrent.max(1));
    let (shared, slots, on_event) = (&shared, &slots, &on_event);
    let finished = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let finished = &finished;
        scope.spawn(move || dealer_thread(shared, control, finished, on_event));
        let mut accepted = 0;
        let _ = listener.set_nonblocking(true);
        while max_sessions.is_none_or(|m| accepted < m) && !control.stop.load(Ordering::Relaxed) {
            // Accept only with a free slot: waiting clients stay in the listen queue.
            if !slots.take_for(Duration::from_millis(200)) {
                continue;
            }
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    slots.give();
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => {
                    slots.give();
                    on_event(ServerEvent::Session(Err(TransportError::Io {
                        peer: "client".into(),
                        during: " accepting".into(),
                        os: e,
                    }
                    .into())));
                    continue;
                }
            };
            let _ = stream.set_nonblocking(false);
            accepted += 1;
            scope.spawn(move || {
                let r = serve_session(shared, stream);
                slots.give();
                on_event(ServerEvent::Session(r));
            });
        }
        // Sessions in progress finish (the scope waits); then the dealer thread ends.
        slots.drain();
        finished.store(true, Ordering::Relaxed);
        shared.pool.reset(None);
    });
    if let Some(e) = shared.current() {
        drop(e);
        *shared.epoch.lock().expect("epoch") = None;
    }
    Ok(())
}

fn disk(p: &Path, e: std::io::Error) -> VmError {
    VmError::Transport(TransportError::Io {
        peer: "local disk".into(),
        during: format!(" at {}", p.display()),
        os: e,
    })
}

/// A counting semaphore for session slots.
struct Slots {
    free: Mutex<usize>,
    all: usize,
    freed: Condvar,
}

impl Slots {
    fn new(n: usize) -> Slots {
        Slots { free: Mutex::new(n), all: n, freed: Condvar::new() }
    }

    /// Takes a slot, waiting up to `d` for one; false if none came.
    fn take_for(&self, d: Duration) -> bool {
        let mut n = self.free.lock().expect("slot count");
        if *n == 0 {
            n = self.freed.wait_timeout(n, d).expect("slot count").0;
        }
        if *n == 0 {
            return false;
        }
        *n -= 1;
        true
    }

    fn give(&self) {
        *self.free.lock().expect("slot count") += 1;
        self.freed.notify_all();
    }

    /// Waits until every slot is free again.
    fn drain(&self) {
        let mut n = self.free.lock().expect("slot count");
        while *n < self.all {
            n = self.freed.wait(n).expect("slot count");
        }
    }
}

/// Keeps the dealer connected: the epoch, rotations, the pool. When the dealer goes away the
/// pool is dropped (its tickets die with the dealer's memory) and sessions are refused until
/// it is back.
fn dealer_thread(
    s: &Shared,
    control: &ServeControl,
    finished: &AtomicBool,
    on_event: &(impl Fn(ServerEvent) + Sync),
) {
    let timeout = s.opts.timeout;
    let mut last_rotation = Instant::now();
    while !finished.load(Ordering::Relaxed) {
        let mut waiting = |secs| on_event(ServerEvent::WaitingForDealer(secs));
        let conn = Conn::dial(
            s.dealer,
            Role::Dealer,
            s.hello(s.instance),
            timeout,
            s.opts.tls.as_ref(),
            &mut waiting,
        );
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                let why = format!("its dealer is unavailable ({e})");
                s.set_down(&why);
                on_event(ServerEvent::DealerDown(why));
                sleep_unless(finished, Duration::from_secs(2));
                continue;
            }
        };
        let r = (|| -> Result<(), VmError> {
            let mut rotate = false;
            loop {
                let ep = ask_epoch(&mut conn, s.digest, rotate)?;
                if s.current().map(|e| e.id) != Some(ep.0) {
                    let t0 = Instant::now();
                    let e =
                        Epoch::prepare(s.prog, &s.weights, ep.0, ep.1, &s.dir, s.opts.max_memory)?;
                    let bytes = e.setup.as_ref().map_or(0, |x| x.1);
                    let first = s.current().is_none();
                    *s.epoch.lock().expect("epoch") = Some(Arc::new(e));
                    on_event(ServerEvent::Epoch {
                        id: ep.0,
                        bytes,
                        time: t0.elapsed(),
                        rotated: !first,
                    });
                }
                // Tickets made before this link opened died with the dealer's last link.
                s.pool.reset(Some(ep.0));
                if !s.starting.load(Ordering::Relaxed) && s.is_down().is_some() {
                    on_event(ServerEvent::DealerUp);
                }
                s.set_down("");
                s.starting.store(false, Ordering::Relaxed);
                rotate = false;
                last_rotation = Instant::now();
                while !finished.load(Ordering::Relaxed) {
                    let due = s.opts.rotate_every.is_some_and(|d| last_rotation.elapsed() >= d);
                    if control.rotate.swap(false, Ordering::Relaxed) || due {
                        rotate = true;
                        break;
                    }
                    // A pruned program's material is made during its run (it depends on the lengths).
                    if s.prog.dynamic.is_none() && s.pool.wants() {
                        let t0 = Instant::now();
                        let e = make_entry(s, ep.0, finished)?;
                        let bytes = e.bytes;
                        s.pool.add(e);
                        on_event(ServerEvent::Material {
                            bytes,
                            time: t0.elapsed(),
                            ready: s.pool.ready(),
                        });
                        continue;
                    }
                    s.pool.wait_change(Duration::from_secs(1));
                    ping(&mut conn)?;
                }
                if !rotate {
                    return Ok(());
                }
            }
        })();
        conn.shutdown();
        if let Err(e) = r {
            if finished.load(Ordering::Relaxed) {
                break;
            }
            let why = format!("its dealer at {} is unavailable ({e})", s.dealer);
            s.set_down(&why);
            s.pool.reset(None);
            on_event(ServerEvent::DealerDown(why));
            sleep_unless(finished, Duration::from_secs(1));
        }
    }
}

fn sleep_unless(flag: &AtomicBool, d: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < d && !flag.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn dealer_answer(conn: &mut Conn) -> Result<FromDealer, VmError> {
    let m = conn.recv(Expect::AtMost(MAX_CONTROL))?;
    let m = FromDealer::decode(&m)
        .map_err(|what| TransportError::Malformed { peer: "dealer".into(), what })?;
    if let FromDealer::Refused(why) = m {
        return Err(TransportError::Refused { peer: "dealer".into(), why }.into());
    }
    Ok(m)
}

fn ask_epoch(conn: &mut Conn, digest: [u8; 32], rotate: bool) -> Result<(Id, [u8; 16]), VmError> {
    conn.send(&ToDealer::Epoch { digest, rotate }.encode(), true)?;
    match dealer_answer(conn)? {
        FromDealer::Epoch { id, seed } => Ok((id, seed)),
        m => Err(unexpected(&format!("{m:?}"), "an epoch")),
    }
}

fn ping(conn: &mut Conn) -> Result<(), VmError> {
    conn.send(&ToDealer::Ping.encode(), true)?;
    match dealer_answer(conn)? {
        FromDealer::Pong => Ok(()),
        m => Err(unexpected(&format!("{m:?}"), "a pong")),
    }
}

fn unexpected(got: &str, want: &str) -> VmError {
    TransportError::Malformed { peer: "dealer".into(), what: format!("{got} where {want} was due") }
        .into()
}

/// Opens a material connection for `ticket` and asks for one inference of `epoch`; returns
/// the connection and the server's seed.
fn ask_material(
    s: &Shared,
    ticket: Id,
    epoch: Id,
    live: bool,
) -> Result<(Conn, [u8; 16]), VmError> {
    let mut conn = Conn::dial(
        s.dealer,
        Role::Dealer,
        s.hello(ticket),
        s.opts.timeout,
        s.opts.tls.as_ref(),
        &mut |_| {},
    )?;
    conn.send(&ToDealer::Material { epoch, live, instance: s.instance }.encode(), true)?;
    match dealer_answer(&mut conn)? {
        FromDealer::Seed(seed) => Ok((conn, seed)),
        m => Err(unexpected(&format!("{m:?}"), "a seed")),
    }
}

/// Receives one inference of material into an unlinked file of the pool (abandoned when the
/// server finishes meanwhile).
fn make_entry(s: &Shared, epoch: Id, finished: &AtomicBool) -> Result<Entry, VmError> {
    let t0 = Instant::now();
    let ticket = random_id();
    let (mut conn, seed) = ask_material(s, ticket, epoch, false)?;
    let path = s.dir.join(format!("veil-material-{}-{}", std::process::id(), hex(&ticket[..8])));
    let file = epoch::unlinked_file(&path).map_err(|e| disk(&path, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut seq = 0u32;
    let mut bytes = 0u64;
    loop {
        if finished.load(Ordering::Relaxed) {
            conn.shutdown();
            return Err(TransportError::Closed {
                peer: "dealer".into(),
                during: " (the server stopped while material was being made)".into(),
            }
            .into());
        }
        let f = conn.recv(Expect::AtMost(s.max_frame))?;
        write_bytes(&mut w, seq, &f, false, Duration::ZERO).map_err(|e| disk(&path, e))?;
        seq = seq.wrapping_add(1);
        bytes += veil_isa::cost::FRAME_HEADER + f.len() as u64;
        if f.is_empty() {
            break;
        }
    }
    w.flush().map_err(|e| disk(&path, e))?;
    let file = w.into_inner().map_err(|e| disk(&path, e.into_error()))?;
    Ok(Entry { ticket, epoch, seed, file, bytes, made_in: t0.elapsed() })
}

/// Free memory the kernel reports (Linux; `None` elsewhere).
fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let l = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    l.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Serves one client session on `stream`: the welcome, the setup when the client lacks the
/// epoch's masked weights, then its inferences until it says goodbye.
fn serve_session(s: &Shared, stream: TcpStream) -> Result<SessionReport, VmError> {
    let opts = s.opts;
    let (peer, theirs) =
        TcpTransport::accepted(stream, s.hello([0; 16]), opts.timeout, opts.tls.as_ref())?;
    let session = theirs.session;
    // A server still starting (its first connection to the dealer, the first epoch's
    // masking) keeps an early client waiting instead of refusing it.
    let t0 = Instant::now();
    while s.starting.load(Ordering::Relaxed) && t0.elapsed() < opts.timeout {
        std::thread::sleep(Duration::from_millis(20));
    }
    let epoch = s.current();
    let f = &s.footprint;
    let refusal = match (&epoch, s.is_down()) {
        (_, Some(why)) => Some(why),
        (None, None) => Some("the server has no epoch yet".into()),
        _ if f.serving() > opts.max_memory => Some(format!(
            "a session needs {} MB, more than the server's --session-memory of {} MB",
            f.serving() >> 20,
            opts.max_memory >> 20
        )),
        _ => match mem_available() {
            Some(free) if free < f.serving() => Some(format!(
                "the server has {} MB of free memory, a session needs {} MB: try again later",
                free >> 20,
                f.serving() >> 20
            )),
            _ => None,
        },
    };
    let mut peer = peer;
    let epoch = match (refusal, epoch) {
        (None, Some(e)) => e,
        (why, _) => {
            let why = why.unwrap_or_default();
            let msg = Outgoing::Bytes(Welcome::Refused(why.clone()).encode());
            let _ = peer.exchange_into(msg, Expect::AtMost(MAX_CONTROL), &mut |_| {});
            return Err(TransportError::Refused { peer: "server (this side)".into(), why }.into());
        }
    };
    let mut vm = PartyVm::new(
        s.prog,
        Party::Server,
        Material::none(Party::Server),
        Box::new(peer),
        opts.max_memory,
    )?;
    vm.set_jit(opts.jit);
    vm.share_weights(&s.weights);
    if !epoch.kept.is_empty() {
        vm.restore_setup(epoch.kept.clone())?;
    }
    expect_client(
        &vm.control(Welcome::Ok { epoch: epoch.id }.encode(), MAX_CONTROL)?,
        &[ClientMsg::Empty],
    )?;
    // Planned while the client plans its own side.
    vm.prepare_now()?;
    let mut setup = crate::net::CommStats::default();
    if setup_has_round(s.prog) {
        let m = expect_client(&vm.control(ServerMsg::Empty.encode(), MAX_CONTROL)?, &[])?;
        if m == (ClientMsg::Setup { cached: false }) {
            let (f, n) = epoch.replay().expect("a setup with a round was recorded");
            vm.replay_setup(f, n)?;
            setup = vm.report().setup;
        }
    }
    let mut queries = Vec::new();
    loop {
        let m = expect_client(
            &vm.control(ServerMsg::Empty.encode(), MAX_CONTROL)?,
            &[ClientMsg::Next, ClientMsg::Bye],
        )?;
        if m == ClientMsg::Bye {
            break;
        }
        let t0 = Instant::now();
        let (seed, source, running): ([u8; 16], Box<dyn FrameSource>, _) = loop {
            if let Some(why) = s.is_down() {
                vm.control(ServerMsg::Refused(why.clone()).encode(), MAX_CONTROL)?;
                return Err(
                    TransportError::Refused { peer: "server (this side)".into(), why }.into()
                );
            }
            if s.prog.dynamic.is_some() {
                // A pruned program's material depends on the lengths the run reveals: the
                // dealer makes it during the run, told each length by the client.
                let ticket = random_id();
                let (conn, seed) = ask_material(s, ticket, epoch.id, true)?;
                // The dealer sends what it made ahead at once: read it into memory while the
                // client gets ready (never more than the program's material at full length).
                let source = Background::new(Box::new(conn), s.max_material, s.max_frame);
                vm.control(ServerMsg::Entry { ticket, live: true }.encode(), MAX_CONTROL)?;
                break (seed, Box::new(source), s.pool.running());
            }
            match s.pool.take(epoch.id, (opts.timeout / 4).min(Duration::from_secs(10))) {
                Take::Ready(e, running) => {
                    vm.control(
                        ServerMsg::Entry { ticket: e.ticket, live: false }.encode(),
                        MAX_CONTROL,
                    )?;
                    let src = FileSource::new(e.file).map_err(|err| disk(&s.dir, err))?;
                    break (e.seed, Box::new(src), running);
                }
                Take::Empty => {
                    vm.control(ServerMsg::Wait.encode(), MAX_CONTROL)?;
                }
                Take::Stale => {
                    if let Some(why) = s.is_down() {
                        vm.control(ServerMsg::Refused(why.clone()).encode(), MAX_CONTROL)?;
                        return Err(TransportError::Refused {
                            peer: "server (this side)".into(),
                            why,
                        }
                        .into());
                    }
                    vm.control(ServerMsg::Rotated.encode(), MAX_CONTROL)?;
                    return Ok(SessionReport {
                        session,
                        epoch: epoch.id,
                        setup,
                        queries,
                        report: vm.report(),
                    });
                }
            }
        };
        let material_wait = t0.elapsed();
        let before = vm.report();
        vm.set_material(Material::new(Party::Server, seed, Some(source)));
        let t1 = Instant::now();
        let r = vm.run_body();
        drop(running);
        r?;
        let after = vm.report();
        queries.push(QueryReport {
            online: after.body.since(before.body),
            dealer_bytes: after.dealer_bytes,
            material_wait,
            body: t1.elapsed(),
            latency: t0.elapsed(),
        });
    }
    Ok(SessionReport { session, epoch: epoch.id, setup, queries, report: vm.report() })
}

/// Decodes the client's message and requires one of `allowed` (any setup message when
/// `allowed` is empty).
fn expect_client(m: &[u8], allowed: &[ClientMsg]) -> Result<ClientMsg, VmError> {
    let bad =
        |what: String| VmError::from(TransportError::Malformed { peer: "client".into(), what });
    let c = ClientMsg::decode(m).map_err(bad)?;
    let ok = if allowed.is_empty() {
        matches!(c, ClientMsg::Setup { .. })
    } else {
        allowed.contains(&c)
    };
    if !ok {
        return Err(bad(format!("{c:?} out of turn")));
    }
    Ok(c)
}
