//! When each party needs each buffer: which hold data for the whole session, and after which
//! step a value is dead. The VM allocates a buffer when a step first writes it and returns it
//! to its pool after the step that last reads it, so a session holds its live values and its
//! persistent data, not every buffer of the program; the cost report declares that peak.
//!
//! A party's view: the other party's private buffers are never written here (it reads them as
//! zeros); a dealer instruction writes its outputs but reads nothing locally (the dealer
//! computed them); `open`, `open_b` and `reveal` read their source again at the `exchange`
//! that completes them, so it lives until then.

use crate::ops::Instr;
use crate::program::{Kind, Program};
use crate::{Buf, Party};

/// True when party `me` holds no data of its own for a buffer of kind `k` (the other
/// party's private values).
pub fn foreign(k: Kind, me: Party) -> bool {
    matches!(k, Kind::Private(p) if p != me)
}

/// The buffers `ins` reads on `me`'s side, excluding the other party's private ones (always
/// zeros here) and everything a dealer instruction names as input (the dealer's business).
pub fn local_reads(p: &Program, ins: &Instr, me: Party, out: &mut Vec<Buf>) {
    if ins.is_dealer() {
        return;
    }
    ins.each_buffer(|b, w| {
        if !w && !foreign(p.buffers[b.0 as usize].kind, me) {
            out.push(b);
        }
    });
}

/// The buffers `ins` writes on `me`'s side.
pub fn local_writes(p: &Program, ins: &Instr, me: Party, out: &mut Vec<Buf>) {
    ins.each_buffer(|b, w| {
        if w && !foreign(p.buffers[b.0 as usize].kind, me) {
            out.push(b);
        }
    });
}

/// Whether `ins` overwrites all of `b` (only a strided copy may write part of it).
fn kills(ins: &Instr, b: Buf) -> bool {
    !matches!(ins, Instr::Copy { d, .. } if *d == b)
}

/// Buffers whose data party `me` keeps for the whole session: weights and constants, inputs
/// and revealed outputs, values the setup computes that the body reads, and anything the body
/// reads before writing it.
pub fn persistent(p: &Program, me: Party) -> Vec<bool> {
    let n = p.buffers.len();
    let mut keep = vec![false; n];
    for io in p.weights.iter().chain(&p.inputs).chain(&p.outputs) {
        keep[io.buf.0 as usize] = true;
    }
    for c in &p.consts {
        keep[c.buf.0 as usize] = true;
    }
    let mut written = vec![false; n];
    for ins in &p.setup {
        let (mut r, mut w) = (Vec::new(), Vec::new());
        local_reads(p, ins, me, &mut r);
        local_writes(p, ins, me, &mut w);
        // Read before the setup writes it: data from before the setup.
        for b in r {
            if !written[b.0 as usize] {
                keep[b.0 as usize] = true;
            }
        }
        for b in w {
            written[b.0 as usize] = true;
        }
    }
    let mut in_body = vec![false; n];
    let (mut r, mut w) = (Vec::new(), Vec::new());
    for ins in &p.body {
        r.clear();
        w.clear();
        local_reads(p, ins, me, &mut r);
        local_writes(p, ins, me, &mut w);
        for b in &r {
            let i = b.0 as usize;
            if written[i] || !in_body[i] {
                keep[i] = true;
            }
        }
        for b in &w {
            in_body[b.0 as usize] = true;
            written[b.0 as usize] = false;
        }
    }
    for (i, b) in p.buffers.iter().enumerate() {
        if foreign(b.kind, me) {
            keep[i] = false;
        }
    }
    keep
}

/// After which step each value dies, for one section as the VM runs it.
#[derive(Clone, Debug, Default)]
pub struct Deaths {
    start: Vec<u32>,
    bufs: Vec<Buf>,
}

impl Deaths {
    /// The buffers whose value is dead after step `s`.
    pub fn after(&self, s: usize) -> &[Buf] {
        &self.bufs[self.start[s] as usize..self.start[s + 1] as usize]
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.start.len().saturating_sub(1)
    }

    /// True when there are no steps.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The deaths of the section `code` run as `steps` (each the indices of the instructions it
/// executes, in order: one instruction, or a fused kernel's members) by party `me`, whose
/// persistent buffers are `keep`. The steps may cover only part of the section (a pruned
/// program runs up to a `setlen`, then continues in an instance): what the instructions from
/// `rest` on read before writing stays alive.
pub fn deaths(
    p: &Program,
    code: &[Instr],
    steps: &[&[usize]],
    rest: usize,
    me: Party,
    keep: &[bool],
) -> Deaths {
    let live = live_from(p, code, &[rest], me).pop().map(|(_, l)| l).unwrap_or_default();
    deaths_with(p, code, steps, &live, me, keep)
}

/// Per position `rest` of `at` (ascending, each at most `code.len()`), the buffers that
/// `code[rest..]` reads before a write replaces their value: what [`deaths`] keeps alive past
/// steps that end there. One backward pass for all positions (a pruned body asks at each
/// `setlen`, and a forward scan of the rest of the body per `setlen` cost about as much as
/// checking it). Depends on buffer ids and kinds only, so it holds for every instance of a
/// dynamic program.
pub fn live_from(p: &Program, code: &[Instr], at: &[usize], me: Party) -> Vec<(usize, Vec<bool>)> {
    let mut live = vec![false; p.buffers.len()];
    let mut out = Vec::with_capacity(at.len());
    let mut wanted = at.iter().rev().peekable();
    let (mut r, mut w) = (Vec::new(), Vec::new());
    let mut i = code.len();
    loop {
        while let Some(&&rest) = wanted.peek() {
            if rest < i {
                break;
            }
            if rest == i {
                out.push((rest, live.clone()));
            }
            wanted.next();
        }
        if i == 0 || wanted.peek().is_none() {
            break;
        }
        i -= 1;
        let ins = &code[i];
        r.clear();
        w.clear();
        local_reads(p, ins, me, &mut r);
        local_writes(p, ins, me, &mut w);
        // Forward, a read counts unless an earlier instruction of the rest killed the value;
        // an instruction's own write lands after its reads.
        for &b in &w {
            if kills(ins, b) {
                live[b.0 as usize] = false;
            }
        }
        for b in &r {
            live[b.0 as usize] = true;
        }
    }
    out.reverse();
    out
}

/// [`deaths`] with what is live past the steps given (`live`, from [`live_from`]).
pub fn deaths_with(
    p: &Program,
    code: &[Instr],
    steps: &[&[usize]],
    live_after: &[bool],
    me: Party,
    keep: &[bool],
) -> Deaths {
    // Per step, flat: what it reads (opens' sources again at the exchange) and writes.
    let mut read_at: Vec<u32> = Vec::with_capacity(steps.len() + 1);
    let mut reads: Vec<Buf> = Vec::new();
    let mut write_at: Vec<u32> = Vec::with_capacity(steps.len() + 1);
    let mut writes: Vec<(Buf, bool)> = Vec::new();
    let mut queued: Vec<Buf> = Vec::new();
    let mut w = Vec::new();
    for members in steps {
        read_at.push(reads.len() as u32);
        write_at.push(writes.len() as u32);
        for &i in members.iter() {
            let ins = &code[i];
            local_reads(p, ins, me, &mut reads);
            w.clear();
            local_writes(p, ins, me, &mut w);
            writes.extend(w.iter().map(|&b| (b, kills(ins, b))));
            match ins {
                Instr::Open { a, .. } | Instr::OpenB { a, .. } | Instr::Reveal { a, .. }
                    if !foreign(p.buffers[a.0 as usize].kind, me) =>
                {
                    queued.push(*a);
                }
                Instr::Exchange {} => reads.append(&mut queued),
                _ => {}
            }
        }
    }
    read_at.push(reads.len() as u32);
    write_at.push(writes.len() as u32);
    let reads_of = |s: usize| &reads[read_at[s] as usize..read_at[s + 1] as usize];
    let writes_of = |s: usize| &writes[write_at[s] as usize..write_at[s + 1] as usize];
    let mut live = live_after.to_vec();
    live.resize(p.buffers.len(), false);
    // Backwards: a value dies after the last step that touches it while it is not live.
    let mut dead_after: Vec<Buf> = Vec::new();
    let mut start_rev: Vec<u32> = Vec::with_capacity(steps.len() + 1);
    for s in (0..steps.len()).rev() {
        start_rev.push(dead_after.len() as u32);
        let from = dead_after.len();
        for &b in reads_of(s).iter().chain(writes_of(s).iter().map(|(b, _)| b)) {
            let i = b.0 as usize;
            if !live[i] && !keep[i] && !dead_after[from..].contains(&b) {
                dead_after.push(b);
            }
        }
        for &(b, kill) in writes_of(s) {
            if kill {
                live[b.0 as usize] = false;
            }
        }
        for b in reads_of(s) {
            live[b.0 as usize] = true;
        }
    }
    start_rev.push(dead_after.len() as u32);
    // Reverse into step order.
    let mut out = Deaths {
        start: Vec::with_capacity(steps.len() + 1),
        bufs: Vec::with_capacity(dead_after.len()),
    };
    for k in (0..steps.len()).rev() {
        out.start.push(out.bufs.len() as u32);
        out.bufs.extend_from_slice(&dead_after[start_rev[k] as usize..start_rev[k + 1] as usize]);
    }
    out.start.push(out.bufs.len() as u32);
    out
}

/// One step per instruction, in program order (the interpreter's plan).
pub fn each_instruction(len: usize) -> Vec<[usize; 1]> {
    (0..len).map(|i| [i]).collect()
}

/// The memory one party's session needs, in bytes.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Weights this party loads (a server shares them among its sessions).
    pub weights: u64,
    /// Other data kept for the whole session: constants, inputs, outputs, setup results.
    pub kept: u64,
    /// The most the setup holds live at once besides the above.
    pub setup_peak: u64,
    /// The most one run of the body holds live at once besides the above.
    pub body_peak: u64,
    /// Buffers of the connections: the largest part of a message staged on its way into
    /// its buffer, and for the server the largest frame of dealer material, plus the two
    /// streams' 1 MiB read buffers.
    pub transport: u64,
}

impl Footprint {
    /// The peak of a session: kept data plus the larger of the two sections' live sets,
    /// and the connections' buffers.
    pub fn session(&self) -> u64 {
        self.kept + self.setup_peak.max(self.body_peak) + self.transport
    }

    /// The peak of a session that runs inferences only (a server's, whose setup ran once
    /// for its epoch): kept data plus the body's live set and the connections' buffers.
    pub fn serving(&self) -> u64 {
        self.kept + self.body_peak + self.transport
    }

    /// Weights plus one session.
    pub fn total(&self) -> u64 {
        self.weights + self.session()
    }
}

fn words_bytes(p: &Program, b: Buf) -> u64 {
    let d = &p.buffers[b.0 as usize];
    8 * d.kind.words(d.len) as u64
}

/// The most a section holds live at once when run instruction by instruction.
fn section_peak(p: &Program, code: &[Instr], me: Party, keep: &[bool]) -> u64 {
    let steps = each_instruction(code.len());
    let steps: Vec<&[usize]> = steps.iter().map(|s| &s[..]).collect();
    let deaths = deaths(p, code, &steps, code.len(), me, keep);
    let mut held = vec![false; p.buffers.len()];
    let (mut cur, mut peak) = (0u64, 0u64);
    let mut w = Vec::new();
    for (i, ins) in code.iter().enumerate() {
        w.clear();
        local_writes(p, ins, me, &mut w);
        for &b in &w {
            let k = b.0 as usize;
            if !keep[k] && !held[k] {
                held[k] = true;
                cur += words_bytes(p, b);
            }
        }
        peak = peak.max(cur);
        for &b in deaths.after(i) {
            let k = b.0 as usize;
            if held[k] {
                held[k] = false;
                cur -= words_bytes(p, b);
            }
        }
    }
    peak
}

/// What party `me` needs to run a session of `p` (a dynamic program at its full length).
pub fn footprint(p: &Program, me: Party) -> Footprint {
    footprint_with(p, me, &persistent(p, me))
}

/// [`footprint`] for the buffers `keep` that `me` keeps ([`persistent`], computed once).
pub fn footprint_with(p: &Program, me: Party, keep: &[bool]) -> Footprint {
    let mut f = Footprint::default();
    let mut is_weight = vec![false; p.buffers.len()];
    for io in &p.weights {
        is_weight[io.buf.0 as usize] = true;
    }
    for (i, k) in keep.iter().enumerate() {
        if *k {
            let b = words_bytes(p, Buf(i as u32));
            if is_weight[i] {
                f.weights += b;
            } else {
                f.kept += b;
            }
        }
    }
    f.setup_peak = section_peak(p, &p.setup, me, keep);
    f.body_peak = section_peak(p, &p.body, me, keep);
    let part = p
        .setup
        .iter()
        .chain(&p.body)
        .map(|i| match i {
            Instr::Open { a, bits, lo, .. } => {
                (words_bytes(p, *a) * (*bits - *lo) as u64).div_ceil(64)
            }
            Instr::OpenB { a, .. } | Instr::Send { a, .. } | Instr::Reveal { a, .. } => {
                words_bytes(p, *a)
            }
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    let frame = match me {
        Party::Server => {
            p.body.iter().map(|i| crate::cost::correction_bytes(i, p)).max().unwrap_or(0)
        }
        Party::Client => 0,
    };
    f.transport = part + frame + (2 << 20);
    f
}

/// What the dealer holds for a program: the values of the server's weight masks, kept for
/// the epoch (what the body's dealer instructions read of the setup), and the most it holds
/// at once while making one inference's material.
pub fn dealer_footprint(p: &Program) -> (u64, u64) {
    let n = p.buffers.len();
    let mut setup = vec![false; n];
    for ins in &p.setup {
        if ins.is_dealer() {
            for (b, w) in ins.buffers() {
                if w {
                    setup[b.0 as usize] = true;
                }
            }
        }
    }
    // Last dealer read of each value, walking back.
    let mut last = vec![usize::MAX; n];
    let mut base = vec![false; n];
    let mut written = vec![false; n];
    for (i, ins) in p.body.iter().enumerate() {
        for (b, w) in ins.buffers() {
            let k = b.0 as usize;
            if w {
                written[k] = true;
            } else if ins.is_dealer() {
                last[k] = i;
                if setup[k] && !written[k] {
                    base[k] = true;
                }
            }
        }
    }
    let base_bytes = (0..n).filter(|&k| base[k]).map(|k| words_bytes(p, Buf(k as u32))).sum();
    let (mut cur, mut peak) = (0u64, 0u64);
    let mut held = vec![false; n];
    for (i, ins) in p.body.iter().enumerate() {
        if ins.is_dealer() {
            for (b, w) in ins.buffers() {
                let k = b.0 as usize;
                if w && !held[k] && last[k] != usize::MAX {
                    held[k] = true;
                    cur += words_bytes(p, b);
                }
            }
        }
        peak = peak.max(cur);
        for (b, _) in ins.buffers() {
            let k = b.0 as usize;
            if held[k] && last[k] == i {
                held[k] = false;
                cur -= words_bytes(p, b);
            }
        }
    }
    (base_bytes, peak)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::ProgramBuilder;

    /// x·W for a client input and a server weight, then a masked opening and a reveal.
    fn program() -> Program {
        let mut b = ProgramBuilder::new(16);
        let x = b.input("x", Party::Client, &[4, 8], 16);
        let w = b.weight("w", Party::Server, false, &[8, 8], 16);
        let y = b.matmul_priv(x, w, 1, 4, 8, 8);
        let z = b.trunc(y, 16);
        b.output("y", z, Party::Client, &[4, 8], 16);
        b.finish()
    }

    #[test]
    fn the_backward_pass_finds_what_a_forward_scan_of_the_rest_finds_at_every_position() {
        // The forward scan `deaths` ran per `setlen` before `live_from` replaced it.
        let forward = |p: &Program, code: &[Instr], rest: usize, me: Party| {
            let mut live = vec![false; p.buffers.len()];
            let mut killed = vec![false; p.buffers.len()];
            let (mut r, mut w) = (Vec::new(), Vec::new());
            for ins in code.iter().skip(rest) {
                r.clear();
                w.clear();
                local_reads(p, ins, me, &mut r);
                local_writes(p, ins, me, &mut w);
                for b in &r {
                    if !killed[b.0 as usize] {
                        live[b.0 as usize] = true;
                    }
                }
                for &b in &w {
                    if kills(ins, b) {
                        killed[b.0 as usize] = true;
                    }
                }
            }
            live
        };
        let p = program();
        let mut some_live = false;
        for me in [Party::Client, Party::Server] {
            for code in [&p.setup, &p.body] {
                let all: Vec<usize> = (0..=code.len() + 1).collect();
                let got = live_from(&p, code, &all, me);
                // Every position up to the end; one past it has nothing to report.
                assert_eq!(got.len(), code.len() + 1);
                some_live |= got.iter().any(|(_, l)| l.contains(&true));
                for (rest, live) in got {
                    assert_eq!(live, forward(&p, code, rest, me), "{me:?} from #{rest}");
                }
            }
        }
        assert!(some_live, "a trivial program proves nothing");
    }

    #[test]
    fn the_server_drops_the_weight_mask_after_the_setup_and_the_client_keeps_its_copy() {
        let p = program();
        let mask = p
            .setup
            .iter()
            .find_map(|i| match i {
                Instr::DPriv { d } => Some(*d),
                _ => None,
            })
            .expect("the weight's mask");
        let sent = p
            .setup
            .iter()
            .find_map(|i| match i {
                Instr::Send { d, .. } => Some(*d),
                _ => None,
            })
            .expect("the masked weight");
        let server = persistent(&p, Party::Server);
        let client = persistent(&p, Party::Client);
        // The body reads the mask only in the dealer's product: the server can drop it.
        assert!(!server[mask.0 as usize]);
        assert!(client[sent.0 as usize], "the client multiplies with F = W + B every run");
        assert!(!server[sent.0 as usize], "F is the client's");
        let w = p.weights[0].buf.0 as usize;
        assert!(server[w] && !client[w]);
        // Every value of the body dies exactly once, after its last use.
        for me in [Party::Client, Party::Server] {
            let keep = persistent(&p, me);
            let steps = each_instruction(p.body.len());
            let steps: Vec<&[usize]> = steps.iter().map(|s| &s[..]).collect();
            let d = deaths(&p, &p.body, &steps, p.body.len(), me, &keep);
            assert_eq!(d.len(), p.body.len());
            let mut freed = std::collections::HashMap::new();
            for s in 0..d.len() {
                for b in d.after(s) {
                    assert!(!keep[b.0 as usize]);
                    *freed.entry(*b).or_insert(0) += 1;
                }
            }
            assert!(!freed.is_empty());
        }
        let f = footprint(&p, Party::Server);
        assert_eq!(f.weights, 8 * 64);
        assert!(f.body_peak > 0 && f.setup_peak > 0);
    }

    #[test]
    fn an_opened_source_lives_until_its_exchange() {
        let p = program();
        let me = Party::Client;
        let keep = persistent(&p, me);
        let steps = each_instruction(p.body.len());
        let steps: Vec<&[usize]> = steps.iter().map(|s| &s[..]).collect();
        let d = deaths(&p, &p.body, &steps, p.body.len(), me, &keep);
        for (i, ins) in p.body.iter().enumerate() {
            if let Instr::Open { a, .. } = ins {
                assert!(!d.after(i).contains(a), "{} dies at its open", ins.disas());
                let ex =
                    (i..p.body.len()).find(|&j| matches!(p.body[j], Instr::Exchange {})).unwrap();
                let died = (i..p.body.len()).find(|&j| d.after(j).contains(a));
                assert!(died.is_some_and(|j| j >= ex), "{} must live to #{ex}", ins.disas());
            }
        }
    }
}
