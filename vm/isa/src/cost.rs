//! What each instruction costs: online bytes per party, rounds, dealer bytes.
//!
//! The VM's transport and dealer count exactly what these functions predict, frame headers
//! included, so the compiler's prediction and the measurement are equal by construction (and a
//! test checks it).

use crate::ops::Instr;
use crate::program::{Program, Tag};
use std::collections::BTreeMap;
use std::ops::AddAssign;

/// Bytes of header on every online message and every dealer correction frame
/// (u32 length + u32 sequence number).
pub const FRAME_HEADER: u64 = 8;

/// Communication cost.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Online rounds (exchanges).
    pub rounds: u64,
    /// Online bytes sent by the client and by the server.
    pub sent: [u64; 2],
    /// Dealer bytes (correction stream to the server, frames included).
    pub dealer: u64,
}

impl Cost {
    /// Online bytes in both directions.
    pub fn online(&self) -> u64 {
        self.sent[0] + self.sent[1]
    }
}

impl AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        self.rounds += o.rounds;
        self.sent[0] += o.sent[0];
        self.sent[1] += o.sent[1];
        self.dealer += o.dealer;
    }
}

/// Bits the dealer sends per element of a `dtrunc`'s `msb` output. Its shares are only ever
/// used times the wrap factor `pk`, a multiple of `2^(w-t)` (`s = rhi - pk·msb`, and `pk²·msb`
/// in a square), so a share's low `64 - (w - t)` bits are all that matter; the rest is not
/// sent.
pub fn msb_share_bits(t: u8, w: u8) -> u8 {
    (64 - w.saturating_sub(t) as u32).clamp(1, 64) as u8
}

/// One part of the correction frame the dealer sends the server for an instruction, in the
/// order sent: `n` ring values packed to their low `bits`, or `n` packed bits in whole words.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CorrectionPart {
    /// `n` values of `bits` bits, densely packed.
    Ring {
        /// Values.
        n: usize,
        /// Bits sent per value.
        bits: u8,
    },
    /// `n` bits in `ceil(n/64)` little-endian words.
    Bits {
        /// Bits.
        n: usize,
    },
}

impl CorrectionPart {
    /// Bytes on the wire.
    pub fn bytes(self) -> usize {
        match self {
            CorrectionPart::Ring { n, bits } => (n * bits as usize).div_ceil(8),
            CorrectionPart::Bits { n } => 8 * n.div_ceil(64),
        }
    }
}

/// The parts of the correction the dealer sends the server for one instruction (none when
/// both parties derive their material from their own seeds). A `dtrunc`'s `msb` goes narrow
/// ([`msb_share_bits`]), a `dprod` at its declared width, a `dcase` one part per case.
pub fn correction_parts(ins: &Instr, p: &Program) -> Vec<CorrectionPart> {
    let len = |b: &crate::Buf| p.buffers[b.0 as usize].len as usize;
    let ring = |n, bits| CorrectionPart::Ring { n, bits };
    use Instr::*;
    match ins {
        DProd { d, bits, .. } => vec![ring(len(d), *bits)],
        DMatMul { d, .. } | DBit2A { d, .. } => vec![ring(len(d), 64)],
        DCase { d, .. } => vec![ring(len(d) / 4, 64); 4],
        DTrunc { hi, t, w, .. } => vec![ring(len(hi), 64), ring(len(hi), msb_share_bits(*t, *w))],
        DAnd { d, .. } | DBit { d, .. } => vec![CorrectionPart::Bits { n: len(d) }],
        DTable { lt, eq, .. } => {
            vec![CorrectionPart::Bits { n: len(lt) }, CorrectionPart::Bits { n: len(eq) }]
        }
        DMask { .. } | DPriv { .. } | DBits { .. } => Vec::new(),
        Add { .. }
        | Sub { .. }
        | Mul { .. }
        | Neg { .. }
        | AddImm { .. }
        | MulImm { .. }
        | Shl { .. }
        | MatMul { .. }
        | Sum { .. }
        | Copy { .. }
        | TruncPost { .. }
        | Sel { .. }
        | XorB { .. }
        | AndB { .. }
        | NotB { .. }
        | Lookup { .. }
        | BitOf { .. }
        | Open { .. }
        | OpenB { .. }
        | Send { .. }
        | Reveal { .. }
        | Exchange {}
        | CumSum { .. }
        | SetLen { .. } => Vec::new(),
    }
}

/// Bytes of correction the dealer sends the server for one instruction (frame headers
/// excluded; 0 when both parties derive their material from their own seeds).
pub fn correction_bytes(ins: &Instr, p: &Program) -> u64 {
    correction_parts(ins, p).iter().map(|c| c.bytes() as u64).sum()
}

/// The cost of one instruction. Message parts count their payload; each `exchange` counts one
/// round and one frame header per party.
pub fn instr_cost(ins: &Instr, p: &Program) -> Cost {
    let len = |b: crate::Buf| p.buffers[b.0 as usize].len as u64;
    let mut c = Cost::default();
    use Instr::*;
    match ins {
        Open { a, bits, lo, .. } => {
            let bytes = (len(*a) * (*bits - *lo) as u64).div_ceil(8);
            c.sent = [bytes, bytes];
        }
        OpenB { a, .. } => {
            let bytes = len(*a).div_ceil(8);
            c.sent = [bytes, bytes];
        }
        Send { a, from, .. } => c.sent[from.index()] = 8 * len(*a),
        Reveal { a, to, .. } => c.sent[to.other().index()] = 8 * len(*a),
        Exchange {} => {
            c.rounds = 1;
            c.sent = [FRAME_HEADER, FRAME_HEADER];
        }
        DMask { .. }
        | DPriv { .. }
        | DProd { .. }
        | DMatMul { .. }
        | DTrunc { .. }
        | DBits { .. }
        | DAnd { .. }
        | DTable { .. }
        | DBit { .. }
        | DBit2A { .. }
        | DCase { .. } => {
            let bytes = correction_bytes(ins, p);
            if bytes > 0 {
                c.dealer = bytes + FRAME_HEADER;
            }
        }
        Add { .. }
        | Sub { .. }
        | Mul { .. }
        | Neg { .. }
        | AddImm { .. }
        | MulImm { .. }
        | Shl { .. }
        | MatMul { .. }
        | Sum { .. }
        | Copy { .. }
        | TruncPost { .. }
        | Sel { .. }
        | XorB { .. }
        | AndB { .. }
        | NotB { .. }
        | Lookup { .. }
        | BitOf { .. }
        | CumSum { .. }
        | SetLen { .. } => {}
    }
    c
}

/// Predicted cost of a program: setup, body, and the body split by tag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramCost {
    /// Once per program load.
    pub setup: Cost,
    /// Once per inference.
    pub body: Cost,
    /// The body's cost per tag.
    pub by_tag: BTreeMap<Tag, Cost>,
}

/// Sums [`instr_cost`] over a program (a dynamic program at its maximum length throughout).
pub fn program_cost(p: &Program) -> ProgramCost {
    let mut pc = ProgramCost::default();
    for ins in &p.setup {
        pc.setup += instr_cost(ins, p);
    }
    body_cost(p, p, 0, p.body.len(), &mut pc);
    pc
}

/// The cost of a dynamic program whose `setlen`s set `lengths` in turn (a length repeated
/// past the list's end): what a pruned run measures.
pub fn program_cost_at(p: &Program, lengths: &[u32]) -> Result<ProgramCost, String> {
    let Some(d) = &p.dynamic else { return Ok(program_cost(p)) };
    let mut pc = ProgramCost::default();
    for ins in &p.setup {
        pc.setup += instr_cost(ins, p);
    }
    let mut cur: Option<Program> = None;
    let mut from = 0;
    let mut k = 0;
    let mut now = d.max_len;
    loop {
        let q = cur.as_ref().unwrap_or(p);
        let stop = (from..q.body.len()).find(|&i| matches!(q.body[i], Instr::SetLen { .. }));
        body_cost(p, q, from, stop.unwrap_or(q.body.len()), &mut pc);
        let Some(i) = stop else { return Ok(pc) };
        let n = lengths.get(k).or(lengths.last()).copied().unwrap_or(now);
        cur = Some(d.shrink(p, q, now, n)?);
        now = n;
        from = i + 1;
        k += 1;
    }
}

fn body_cost(p: &Program, q: &Program, from: usize, to: usize, pc: &mut ProgramCost) {
    for (ins, &t) in q.body[from..to].iter().zip(&q.body_tags[from..to]) {
        let c = instr_cost(ins, q);
        pc.body += c;
        if c != Cost::default() {
            let tag = p
                .tags
                .get(t as usize)
                .cloned()
                .unwrap_or(Tag { layer: "?".into(), op: "?".into() });
            *pc.by_tag.entry(tag).or_default() += c;
        }
    }
}
