//! A pruned program's material, made before the query.
//!
//! After a pruning point the material is that of the program at the revealed length, so the
//! dealer used to make it during the query, on the machine's cores beside both parties. Most
//! of it need not wait. Each output of a dealer instruction is drawn from its own PRG stream
//! (`Prg::stream`), so a party's draws at `m` rows are the first words of its draws at
//! `max_len`. For an instruction that maps storage prefixes to storage prefixes (elementwise
//! ones, and products whose rows are the tokens against a fixed matrix) the dealer's values at
//! `m` are then the prefixes of its values at `max_len`, and so is the correction it sends.
//!
//! [`Ahead::make`] deals the body once at `max_len` and keeps the frame of every such
//! instruction ([`Step::Stored`]); during the query the dealer cuts each stored frame to the
//! live length and sends it. What mixes positions (products over the token axis, a row
//! broadcast over a row whose length varies), what reads such values, and what a live instruction reads, is dealt
//! during the query as before ([`Step::Live`]). The frames are byte for byte what live
//! dealing sends (`tests/ahead.rs`).

use crate::dealer::{Base, Dealer};
use crate::error::VmError;
use crate::prg::Seed;
use std::sync::Arc;
use veil_isa::cost::CorrectionPart as Part;
use veil_isa::{Instr, Program};

/// What the dealer does with a body instruction when material was made ahead.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Dealt during the query, at the live length.
    Live,
    /// Its frame at `max_len`, cut to the live length.
    Stored,
    /// Nothing: it only draws masks, which no live instruction reads.
    Skip,
}

/// Per body instruction of a dynamic program, how its material is made.
#[derive(Clone, Debug)]
pub struct Plan {
    /// One step per body instruction.
    pub steps: Vec<Step>,
}

impl Plan {
    /// The plan of `p` (every step [`Step::Live`] for a program without a dynamic section).
    pub fn new(p: &Program) -> Plan {
        let Some(d) = p.dynamic.as_ref() else {
            return Plan { steps: vec![Step::Live; p.body.len()] };
        };
        let mut poly = vec![None; p.buffers.len()];
        for (b, q) in &d.buffers {
            poly[b.0 as usize] = Some(*q);
        }
        let dynamic_fields: std::collections::HashSet<(u32, u32)> =
            d.fields.iter().map(|f| (f.instr, f.slot)).collect();
        // Forward: whether a dealer-known value at a shorter length is the prefix of itself
        // at `max_len` (true for what the setup left: it never changes length).
        let mut prefix = vec![true; p.buffers.len()];
        let mut keeps = vec![false; p.body.len()];
        for (i, ins) in p.body.iter().enumerate() {
            let bufs = ins.buffers();
            if !ins.is_dealer() {
                bufs.iter().filter(|(_, w)| *w).for_each(|(b, _)| prefix[b.0 as usize] = true);
                continue;
            }
            let dynf = |slot: u32| dynamic_fields.contains(&(i as u32, slot));
            let ok = keeps_prefixes(ins, &poly, &dynf)
                && bufs.iter().all(|(b, w)| *w || prefix[b.0 as usize]);
            keeps[i] = ok;
            for (b, w) in bufs {
                if w {
                    prefix[b.0 as usize] = ok;
                }
            }
        }
        // Backward: an instruction whose output a live one reads is live too.
        let mut needed = vec![false; p.buffers.len()];
        let mut steps = vec![Step::Live; p.body.len()];
        for (i, ins) in p.body.iter().enumerate().rev() {
            let bufs = ins.buffers();
            let writes_needed = bufs.iter().any(|(b, w)| *w && needed[b.0 as usize]);
            for (b, w) in &bufs {
                if *w {
                    needed[b.0 as usize] = false;
                }
            }
            if !ins.is_dealer() {
                continue;
            }
            let live = !keeps[i] || writes_needed;
            if live {
                for (b, w) in &bufs {
                    if !*w {
                        needed[b.0 as usize] = true;
                    }
                }
            }
            steps[i] = match (live, has_frame(ins)) {
                (true, _) => Step::Live,
                (false, true) => Step::Stored,
                (false, false) => Step::Skip,
            };
        }
        Plan { steps }
    }
}

/// Whether dealing `ins` at a shorter length gives the storage prefixes of its outputs at
/// `max_len`, given inputs that are prefixes (`dynf(slot)`: that size field varies).
fn keeps_prefixes(
    ins: &Instr,
    poly: &[Option<veil_isa::Poly>],
    dynf: &dyn Fn(u32) -> bool,
) -> bool {
    let varies = |b: &veil_isa::Buf| poly[b.0 as usize].is_some();
    match ins {
        // Draws: a prefix of the output's own stream.
        Instr::DMask { .. } | Instr::DPriv { .. } | Instr::DBits { .. } => true,
        // Element `i` of each output from element `i` of each input (a table from one
        // element's digit, a contiguous block per element).
        Instr::DTrunc { .. }
        | Instr::DAnd { .. }
        | Instr::DBit { .. }
        | Instr::DTable { .. }
        | Instr::DBit2A { .. } => true,
        // `b` broadcast in blocks of `inner` (see `kernels::binary`): a prefix when the block
        // does not change, or when there is one block (`a` is `b` with each element
        // repeated `inner` times, e.g. a row's scale over its row).
        Instr::DProd { a, b, inner, .. } => {
            let one_block = match (poly[a.0 as usize], poly[b.0 as usize]) {
                (Some(pa), Some(pb)) => pb.0.map(|c| c * *inner as i64) == pa.0,
                _ => false,
            };
            !dynf(0) && (!varies(b) || one_block)
        }
        // Rows against a fixed matrix: the first rows of the product are the product of the
        // first rows. Over the token axis (k or n varies, or a varying right side) they are
        // not.
        Instr::DMatMul { b, batch, .. } => {
            *batch == 1 && !dynf(0) && !dynf(2) && !dynf(3) && !varies(b)
        }
        // Case-major, each case drawn and corrected as a part of its own.
        Instr::DCase { .. } => true,
        _ => false,
    }
}

/// Whether the dealer sends the server a frame for `ins`.
fn has_frame(ins: &Instr) -> bool {
    !matches!(ins, Instr::DMask { .. } | Instr::DPriv { .. } | Instr::DBits { .. })
}

/// Cuts a frame made with parts `full` to parts `now` (same kinds, no longer): each part's
/// first values, the bits past them cleared, as if it had been made at the shorter length.
pub(crate) fn cut(frame: Vec<u8>, full: &[Part], now: &[Part]) -> Result<Vec<u8>, String> {
    if full == now {
        return Ok(frame);
    }
    let total: usize = full.iter().map(|p| p.bytes()).sum();
    if full.len() != now.len() || total != frame.len() {
        return Err(format!(
            "a stored frame of {} bytes does not have the parts {full:?}",
            frame.len()
        ));
    }
    let mut out = Vec::with_capacity(now.iter().map(|p| p.bytes()).sum());
    let mut at = 0;
    for (&f, &n) in full.iter().zip(now) {
        let (valid, keep) = match (f, n) {
            (Part::Ring { n: a, bits: x }, Part::Ring { n: b, bits: y }) if x == y && b <= a => {
                (b * x as usize, n.bytes())
            }
            (Part::Bits { n: a }, Part::Bits { n: b }) if b <= a => (b, n.bytes()),
            _ => return Err(format!("part {n:?} is not a prefix of {f:?}")),
        };
        let start = out.len();
        out.extend_from_slice(&frame[at..at + keep]);
        // Clear the bits past the last value kept (a live frame has zeros there).
        for (k, byte) in out[start..].iter_mut().enumerate().skip(valid / 8) {
            let lo = 8 * k;
            *byte &= if lo >= valid { 0 } else { (1u8 << (valid - lo)) - 1 };
        }
        at += f.bytes();
    }
    Ok(out)
}

/// A pruned program's material made at `max_len`, before the query, for one set of seeds.
pub struct Ahead {
    /// The parties' seeds (client, server) the material was made for.
    pub seeds: [Seed; 2],
    pub(crate) plan: Arc<Plan>,
    /// Per body instruction, its frame at `max_len` ([`Step::Stored`] only).
    pub(crate) frames: Vec<Option<Vec<u8>>>,
    bytes: u64,
}

impl Ahead {
    /// Deals the body of dynamic program `prog` at its maximum length for `seeds` and keeps
    /// the frames `plan` stores.
    pub fn make(
        prog: &Program,
        base: Arc<Base>,
        seeds: [Seed; 2],
        plan: Arc<Plan>,
    ) -> Result<Ahead, VmError> {
        let mut d = Dealer::recording(prog, base, seeds, plan.clone());
        d.deal_whole_body()?;
        let frames = d.take_recorded();
        let bytes = frames.iter().flatten().map(|f| f.len() as u64).sum();
        Ok(Ahead { seeds, plan, frames, bytes })
    }

    /// Bytes of the stored frames (at `max_len`).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bits;

    #[test]
    fn a_cut_frame_is_the_frame_made_at_the_shorter_length() {
        let vals: Vec<u64> = (0..200u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
        let bitv: Vec<u64> = vals[..4].to_vec();
        let frame = |n: usize, nb: usize| {
            let mut f = Vec::new();
            bits::pack(&vals[..n], 13, &mut f);
            bits::pack(&vals[..n], 64, &mut f);
            let mut b = bitv[..nb.div_ceil(64)].to_vec();
            bits::clear_tail(&mut b, nb);
            b.iter().for_each(|w| f.extend_from_slice(&w.to_le_bytes()));
            f
        };
        let parts = |n: usize, nb: usize| {
            vec![Part::Ring { n, bits: 13 }, Part::Ring { n, bits: 64 }, Part::Bits { n: nb }]
        };
        for (n, nb) in [(200, 250), (199, 200), (37, 65), (1, 1), (8, 64), (5, 63)] {
            let cut = cut(frame(200, 250), &parts(200, 250), &parts(n, nb)).unwrap();
            assert_eq!(cut, frame(n, nb), "{n} values, {nb} bits");
        }
        assert!(cut(frame(10, 10), &parts(10, 10), &parts(11, 10)).is_err());
        assert!(cut(frame(10, 10)[1..].to_vec(), &parts(10, 10), &parts(5, 5)).is_err());
    }
}
