//! Programs whose sequence length is chosen at run time (encrypted token pruning).
//!
//! The compiler emits the program at its maximum length `max_len` and records, for every
//! buffer length and every body size field that depends on the live length `n`, a polynomial
//! `c0 + c1·n + c2·n²` that reproduces it (found by compiling the model at several lengths). A
//! `setlen` instruction reveals a new `n`; the VM and the dealer then run the rest of the body
//! from [`Dynamic::instantiate`]d code. Buffers keep their storage (sizes only shrink), and
//! data computed before a `setlen` stays valid when its live part is a prefix: the compiler
//! only lets values cross a `setlen` with the token axis outermost.

use crate::operand::{Buf, Reader, Writer};
use crate::program::{Program, MAX_BUF_LEN};
use crate::segment::Segments;
use crate::DecodeError;

/// `c0 + c1·n + c2·n²`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Poly(pub [i64; 3]);

impl Poly {
    /// The value at `n` (None on overflow).
    pub fn at(&self, n: u32) -> Option<i64> {
        let n = n as i64;
        let [a, b, c] = self.0;
        a.checked_add(b.checked_mul(n)?)?.checked_add(c.checked_mul(n.checked_mul(n)?)?)
    }

    /// The polynomial through `(n_i, y_i)` for three distinct `n_i`, if its coefficients are
    /// integers.
    pub fn fit(pts: [(u32, i64); 3]) -> Option<Poly> {
        let [(x0, y0), (x1, y1), (x2, y2)] = pts.map(|(x, y)| (x as i128, y as i128));
        // Newton's divided differences, exact in integers.
        let d01 = y1 - y0;
        let d12 = y2 - y1;
        let (h01, h12, h02) = (x1 - x0, x2 - x1, x2 - x0);
        if h01 == 0 || h12 == 0 || h02 == 0 || d01 % h01 != 0 || d12 % h12 != 0 {
            return None;
        }
        let (s01, s12) = (d01 / h01, d12 / h12);
        if (s12 - s01) % h02 != 0 {
            return None;
        }
        let c2 = (s12 - s01) / h02;
        // y = y0 + s01·(n - x0) + c2·(n - x0)(n - x1). With sizes near 2^63 and lengths near
        // 2^32, c2·x0·x1 exceeds even i128.
        let c1 = s01.checked_sub(c2.checked_mul(x0 + x1)?)?;
        let c0 = y0.checked_sub(s01.checked_mul(x0)?)?.checked_add(c2.checked_mul(x0 * x1)?)?;
        let c = [c0, c1, c2].map(|c| i64::try_from(c).ok());
        Some(Poly([c[0]?, c[1]?, c[2]?]))
    }

    fn encode(&self, w: &mut Writer) {
        for c in self.0 {
            w.ivar(c);
        }
    }

    fn decode(r: &mut Reader) -> Result<Poly, DecodeError> {
        Ok(Poly([r.ivar()?, r.ivar()?, r.ivar()?]))
    }
}

/// A body size field that depends on the live length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynField {
    /// Index of the instruction in the body.
    pub instr: u32,
    /// Index into the instruction's [`crate::Instr::slots`].
    pub slot: u32,
    /// Its value as a function of the live length.
    pub poly: Poly,
}

/// The dynamic section of a program.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Dynamic {
    /// The length the program was emitted at (the largest it runs).
    pub max_len: u32,
    /// Buffer lengths that depend on the live length.
    pub buffers: Vec<(Buf, Poly)>,
    /// Body size fields that depend on the live length.
    pub fields: Vec<DynField>,
}

impl Dynamic {
    pub(crate) fn encode(&self, w: &mut Writer) {
        w.uvar(self.max_len as u64);
        w.uvar(self.buffers.len() as u64);
        for (b, p) in &self.buffers {
            w.uvar(b.0 as u64);
            p.encode(w);
        }
        w.uvar(self.fields.len() as u64);
        for f in &self.fields {
            w.uvar(f.instr as u64);
            w.uvar(f.slot as u64);
            f.poly.encode(w);
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Dynamic, DecodeError> {
        let mut d = Dynamic { max_len: r.u32()?, ..Dynamic::default() };
        for _ in 0..r.count()? {
            let b = Buf(r.u32()?);
            d.buffers.push((b, Poly::decode(r)?));
        }
        for _ in 0..r.count()? {
            let instr = r.u32()?;
            let slot = r.u32()?;
            d.fields.push(DynField { instr, slot, poly: Poly::decode(r)? });
        }
        Ok(d)
    }

    /// Problems of the section against its program: ids out of range, or polynomials that do
    /// not reproduce the program's own sizes at `max_len`.
    pub(crate) fn check(&self, p: &Program, errs: &mut Vec<String>) {
        if self.max_len == 0 {
            errs.push("dynamic section with maximum length 0".into());
        }
        for (b, poly) in &self.buffers {
            match p.buf(*b) {
                None => errs.push(format!("dynamic length for missing buffer {b}")),
                Some(d) if poly.at(self.max_len) != Some(d.len as i64) => errs.push(format!(
                    "dynamic length of {b} is {:?} at {}, the buffer is {}",
                    poly.at(self.max_len),
                    self.max_len,
                    d.len
                )),
                _ => {}
            }
        }
        for f in &self.fields {
            let Some(ins) = p.body.get(f.instr as usize) else {
                errs.push(format!("dynamic field of missing body instruction {}", f.instr));
                continue;
            };
            match ins.slots().get(f.slot as usize) {
                None => errs.push(format!(
                    "dynamic field {} of body #{} `{}` does not exist",
                    f.slot,
                    f.instr,
                    ins.name()
                )),
                Some(&v) if f.poly.at(self.max_len) != Some(v) => errs.push(format!(
                    "dynamic field {} of body #{} `{}` is {:?} at {}, the instruction has {v}",
                    f.slot,
                    f.instr,
                    ins.name(),
                    f.poly.at(self.max_len),
                    self.max_len
                )),
                _ => {}
            }
        }
    }

    /// The program with every dynamic size taken at live length `n` (1 ≤ n ≤ `max_len`):
    /// buffer lengths, body size fields, and constants cut to their buffers (constants are
    /// loaded once, at the maximum length; the instance never reloads them). The result
    /// still needs [`crate::validate`].
    pub fn instantiate(&self, p: &Program, n: u32) -> Result<Program, String> {
        let mut q = p.clone();
        q.dynamic = None;
        self.resize(p, &mut q, n)?;
        Ok(q)
    }

    /// Takes `q` to live length `n` in place: `q` is `p` without its dynamic section, or an
    /// instance of `p` at a length of at least `n` made by [`Dynamic::instantiate`] or by this
    /// function. Only sizes change (buffer lengths, body size fields, constants cut to their
    /// buffers); instructions, buffer ids and kinds stay `p`'s. No buffer may grow past its
    /// length in `q` (lengths only shrink). What the VM and the dealer do at each `setlen`
    /// of a run after the first, instead of cloning the program again: on BERT-base (367,004
    /// instructions) a clone and the drop of the previous instance took 8.5 ms per `setlen`,
    /// writing the 41,764 dynamic lengths and 1,168 fields takes well under 1 ms.
    pub fn resize(&self, p: &Program, q: &mut Program, n: u32) -> Result<(), String> {
        if n == 0 || n > self.max_len {
            return Err(format!("sequence length {n} outside 1..={}", self.max_len));
        }
        if q.buffers.len() != p.buffers.len() || q.body.len() != p.body.len() {
            return Err("the instance is not of this program".into());
        }
        for (b, poly) in &self.buffers {
            let decl = p.buffers.get(b.0 as usize).ok_or_else(|| format!("{b} is out of range"))?;
            let max = decl.len as i64;
            let v = poly.at(n).filter(|&v| (1..=max.min(MAX_BUF_LEN as i64)).contains(&v));
            let v = v.ok_or_else(|| {
                format!(
                    "buffer {b} would have {:?} elements at length {n} (at most {max})",
                    poly.at(n)
                )
            })?;
            let now = &mut q.buffers[b.0 as usize].len;
            if v > *now as i64 {
                return Err(format!("{b} would grow from {now} to {v} elements at length {n}"));
            }
            *now = v as u32;
        }
        let mut i = 0;
        while i < self.fields.len() {
            let at = self.fields[i].instr as usize;
            let ins = q.body.get_mut(at).ok_or_else(|| format!("body #{at} is out of range"))?;
            let name = ins.name();
            let mut slots = ins.slots_mut();
            let mut taken: Vec<Option<crate::operand::SlotMut<'_>>> =
                slots.drain(..).map(Some).collect();
            while i < self.fields.len() && self.fields[i].instr as usize == at {
                let f = &self.fields[i];
                let slot =
                    taken.get_mut(f.slot as usize).and_then(Option::take).ok_or_else(|| {
                        format!(
                            "body #{at} `{name}`: size field {} missing or patched twice",
                            f.slot
                        )
                    })?;
                let v = f.poly.at(n).ok_or("size overflows")?;
                slot.set(v).map_err(|e| format!("body #{at} `{name}` at length {n}: {e}"))?;
                i += 1;
            }
        }
        for c in &mut q.consts {
            let len = q.buffers.get(c.buf.0 as usize).map_or(0, |b| b.len as usize);
            c.data.truncate(len);
        }
        Ok(())
    }
}

impl Dynamic {
    /// The program going on at length `n` after running at `now` as `current` (the loaded
    /// program or an earlier instance of it): what the VM and the dealer both switch to at a
    /// `setlen`. Lengths only shrink, so no buffer may need more storage than in `current`;
    /// the instance is validated.
    pub fn shrink(
        &self,
        p: &Program,
        current: &Program,
        now: u32,
        n: u32,
    ) -> Result<Program, String> {
        if n == 0 || n > now {
            return Err(format!("revealed length {n} outside 1..={now}"));
        }
        let q = self.instantiate(p, n)?;
        crate::validate::validate_instance(&q).map_err(|e| e.to_string())?;
        shrinks(current, &q, n)?;
        Ok(q)
    }

    /// As [`Dynamic::shrink`], in place ([`Dynamic::resize`] of `q`, the program at length
    /// `now`: a copy of `p` or an earlier instance), for a party or dealer that runs the
    /// instance from body instruction `from` (after the `setlen` that revealed `n`) through
    /// the next `setlen` only: checks that segment ([`Segments::check`]: the instructions
    /// that run, not the whole program again), carrying the validator's state in `checked`
    /// from one `setlen` of the run to the next.
    pub fn shrink_segment(
        &self,
        p: &Program,
        q: &mut Program,
        now: u32,
        n: u32,
        from: usize,
        checked: &mut Segments,
    ) -> Result<(), String> {
        if n == 0 || n > now {
            return Err(format!("revealed length {n} outside 1..={now}"));
        }
        self.resize(p, q, n)?;
        checked.check(q, from).map_err(|e| e.to_string())
    }
}

/// Lengths only shrink: no buffer of `q` may need more storage than in `current`.
fn shrinks(current: &Program, q: &Program, n: u32) -> Result<(), String> {
    let grows =
        q.buffers.iter().zip(&current.buffers).enumerate().find(|(_, (b, c))| b.len > c.len);
    if let Some((i, (b, c))) = grows {
        return Err(format!("b{i} would grow from {} to {} elements at length {n}", c.len, b.len));
    }
    if q.buffers.len() != current.buffers.len() {
        return Err(format!(
            "{} buffers at length {n}, {} before",
            q.buffers.len(),
            current.buffers.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_section_is_an_error_not_a_panic() {
        // `program_cost_at` and the fuzzers reach `instantiate` without `validate`.
        let mut p = Program::default();
        p.body.push(crate::Instr::Sum { d: Buf(0), a: Buf(0), outer: 1, mid: 4, inner: 1 });
        let poly = Poly([0, 1, 0]);
        let bad_buf = Dynamic { max_len: 4, buffers: vec![(Buf(9), poly)], fields: vec![] };
        assert!(bad_buf.instantiate(&p, 2).unwrap_err().contains("out of range"));
        for (instr, slot) in [(5, 0), (0, 9)] {
            let d = Dynamic {
                max_len: 4,
                buffers: vec![],
                fields: vec![DynField { instr, slot, poly }],
            };
            assert!(d.instantiate(&p, 2).is_err());
        }
    }

    #[test]
    fn fit_refuses_coefficients_beyond_i128_instead_of_overflowing() {
        // c2 = 2^64 - 1 and x0·x1 ≈ 2^64: their product is past i128.
        let x = u32::MAX;
        let pts = [(x, i64::MAX), (x - 1, i64::MIN), (x - 2, i64::MAX)];
        assert_eq!(Poly::fit(pts), None);
        // c0 = 2^63 does not fit a coefficient; i64::MAX does (it was a sentinel before).
        assert_eq!(Poly::fit([(1, i64::MAX), (2, i64::MAX - 1), (3, i64::MAX - 2)]), None);
        assert_eq!(
            Poly::fit([(0, i64::MAX), (1, i64::MAX), (2, i64::MAX)]),
            Some(Poly([i64::MAX, 0, 0]))
        );
    }

    #[test]
    fn fit_recovers_integer_quadratics_and_refuses_the_rest() {
        let f = |n: i64| 3 + 5 * n + 12 * n * n;
        let p = Poly::fit([(128, f(128)), (127, f(127)), (126, f(126))]).unwrap();
        assert_eq!(p, Poly([3, 5, 12]));
        assert_eq!(p.at(7), Some(f(7)));
        let c = Poly::fit([(9, 64), (8, 64), (7, 64)]).unwrap();
        assert_eq!(c, Poly([64, 0, 0]));
        // n / 2 rounded up is not a polynomial: refused, or caught by a fourth point.
        let half = |n: u32| n.div_ceil(2) as i64;
        match Poly::fit([(128, half(128)), (127, half(127)), (126, half(126))]) {
            None => {}
            Some(p) => assert_ne!(p.at(125), Some(half(125))),
        }
    }
}
