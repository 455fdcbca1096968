//! A dynamic program from the same model compiled at several sequence lengths: the programs
//! must agree except in sizes, each size that varies is fitted by a polynomial of the length
//! and checked at the other lengths, and buffers share storage only with buffers whose lengths
//! vary alike.

use crate::dynamic::{DynField, Dynamic, Poly};
use crate::operand::Buf;
use crate::program::Program;

/// Builds a dynamic program from SSA programs ([`crate::builder::ProgramBuilder::finish_ssa`])
/// of one model compiled at several lengths. `probes` holds `(n, program)` pairs, one at
/// `max_len`; the first three distinct lengths fit each size, the others check the fit. The
/// programs must be identical except for sizes, and every constant at a shorter length must be
/// a prefix of the one at `max_len`. Returns the allocated program at `max_len` with its
/// dynamic section.
pub fn from_probes(probes: Vec<(u32, Program)>, max_len: u32) -> Result<Program, String> {
    let at = probes.iter().position(|(n, _)| *n == max_len).ok_or("no probe at the maximum")?;
    if probes.len() < 4 {
        return Err("need four lengths: three to fit each size and one to check".into());
    }
    let base = &probes[at].1;
    for (n, p) in &probes {
        same_structure(base, p).map_err(|e| format!("at length {n} (vs {max_len}): {e}"))?;
    }
    let (fit, check): (Vec<_>, Vec<_>) = {
        let mut idx: Vec<usize> = (0..probes.len()).collect();
        idx.retain(|&i| i != at);
        let fit = vec![at, idx[0], idx[1]];
        (fit, idx[2..].to_vec())
    };
    // `ys`: the size at each probe, in `probes` order.
    let solve = |ys: Vec<i64>, what: &dyn Fn() -> String| -> Result<Option<Poly>, String> {
        if ys.iter().all(|&y| y == ys[at]) {
            return Ok(None);
        }
        let pts = [0, 1, 2].map(|k| (probes[fit[k]].0, ys[fit[k]]));
        let poly = Poly::fit(pts);
        let ok = poly.is_some_and(|p| check.iter().all(|&i| p.at(probes[i].0) == Some(ys[i])));
        if !ok {
            let seen: Vec<String> =
                probes.iter().zip(&ys).map(|((n, _), y)| format!("{y} at {n}")).collect();
            return Err(format!(
                "{} is not a polynomial in the sequence length ({})",
                what(),
                seen.join(", ")
            ));
        }
        Ok(poly)
    };
    let mut buf_poly: Vec<Option<Poly>> = Vec::with_capacity(base.buffers.len());
    for i in 0..base.buffers.len() {
        let ys = probes.iter().map(|(_, p)| p.buffers[i].len as i64).collect();
        buf_poly.push(solve(ys, &|| format!("the length of b{i}"))?);
    }
    let mut fields = Vec::new();
    for (k, ins) in base.body.iter().enumerate() {
        let slots: Vec<Vec<i64>> = probes.iter().map(|(_, p)| p.body[k].slots()).collect();
        for s in 0..slots[at].len() {
            let what = || format!("size field {s} of body #{k} `{}`", ins.name());
            if let Some(poly) = solve(slots.iter().map(|v| v[s]).collect(), &what)? {
                fields.push(DynField { instr: k as u32, slot: s as u32, poly });
            }
        }
    }
    for (n, p) in &probes {
        for (c, cb) in p.consts.iter().zip(&base.consts) {
            if c.buf != cb.buf || cb.data.get(..c.data.len()) != Some(&c.data[..]) {
                return Err(format!(
                    "constant {} at length {n} is not the start of the one at {max_len}: a value \
                     laid out by sequence position would be wrong after pruning",
                    c.buf
                ));
            }
        }
    }
    // Data computed before a `setlen` and read after it is read as a prefix: only an
    // `m × row` layout (token axis outermost) stays right when the length shrinks. Inputs,
    // weights and setup results (never written in the body) exist before every `setlen`.
    let mut written_at = vec![usize::MAX; base.buffers.len()];
    for (k, ins) in base.body.iter().enumerate() {
        for (b, w) in ins.buffers() {
            if w && written_at[b.0 as usize] == usize::MAX {
                written_at[b.0 as usize] = k;
            }
        }
    }
    let setlens: Vec<usize> = (0..base.body.len())
        .filter(|&k| matches!(base.body[k], crate::Instr::SetLen { .. }))
        .collect();
    for (k, ins) in base.body.iter().enumerate() {
        for (b, w) in ins.buffers() {
            let (at, poly) = (written_at[b.0 as usize], buf_poly[b.0 as usize]);
            let crosses = !w && setlens.iter().any(|&s| (at == usize::MAX || at < s) && s < k);
            if let (true, Some(p)) = (crosses, poly) {
                if p.0[0] != 0 || p.0[2] != 0 {
                    return Err(format!(
                        "b{} (length {:?} in the sequence length) is computed or loaded before \
                         a setlen and read after it by body #{k} `{}`, but is not laid out \
                         token-first",
                        b.0,
                        p.0,
                        ins.name()
                    ));
                }
            }
        }
    }
    for io in &base.outputs {
        if buf_poly[io.buf.0 as usize].is_some() {
            return Err(format!(
                "output `{}` changes shape with the sequence length (an output over tokens \
                 cannot survive pruning; output a pooled or CLS row)",
                io.name
            ));
        }
    }
    // Buffers share storage only within a class of lengths that vary alike.
    let mut classes: std::collections::HashMap<[i64; 3], u64> = Default::default();
    let class: Vec<u64> = buf_poly
        .iter()
        .zip(&base.buffers)
        .map(|(p, d)| match p {
            None => d.len as u64,
            Some(p) => {
                let next = (1u64 << 40) + classes.len() as u64;
                *classes.entry(p.0).or_insert(next)
            }
        })
        .collect();
    let (mut prog, map) = crate::builder::allocate_mapped(base.clone(), Some(&class));
    let mut phys: Vec<Option<Poly>> = vec![None; prog.buffers.len()];
    for (l, m) in map.iter().enumerate() {
        if let (Some(b), Some(p)) = (m, buf_poly[l]) {
            phys[b.0 as usize] = Some(p);
        }
    }
    prog.dynamic = Some(Dynamic {
        max_len,
        buffers: phys
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.map(|p| (Buf(i as u32), p)))
            .collect(),
        fields,
    });
    Ok(prog)
}

/// Checks that `b` is `a` up to sizes: same buffers and kinds, same setup, same body apart from
/// size fields.
fn same_structure(a: &Program, b: &Program) -> Result<(), String> {
    if a.buffers.len() != b.buffers.len() || a.body.len() != b.body.len() {
        return Err(format!(
            "{} buffers and {} instructions, against {} and {}: the lowering depends on the \
             length in more than sizes",
            b.buffers.len(),
            b.body.len(),
            a.buffers.len(),
            a.body.len()
        ));
    }
    if let Some(i) = (0..a.buffers.len()).find(|&i| a.buffers[i].kind != b.buffers[i].kind) {
        return Err(format!("b{i} has another kind"));
    }
    // Weights may be laid out by sequence position (position embeddings): loaded and masked
    // at the maximum length, their prefixes serve shorter ones.
    let same_weight = |x: &crate::IoDecl, y: &crate::IoDecl| {
        x.name == y.name && x.buf == y.buf && x.party == y.party && x.shape.len() == y.shape.len()
    };
    if a.weights.len() != b.weights.len() || a.consts.len() != b.consts.len() {
        return Err("the weights or the constants differ in number".into());
    }
    if let Some((x, _)) = a.weights.iter().zip(&b.weights).find(|(x, y)| !same_weight(x, y)) {
        return Err(format!("weight `{}` differs", x.name));
    }
    if a.setup.len() != b.setup.len() {
        return Err("the setup differs in length".into());
    }
    for (k, (x, y)) in a.setup.iter().zip(&b.setup).enumerate() {
        if !same_but_sizes(x, y) {
            return Err(format!("setup #{k} is `{}` here and `{}` there", y.disas(), x.disas()));
        }
    }
    for (k, (x, y)) in a.body.iter().zip(&b.body).enumerate() {
        if !same_but_sizes(x, y) {
            return Err(format!("body #{k} is `{}` here and `{}` there", y.disas(), x.disas()));
        }
    }
    Ok(())
}

/// The same instruction apart from its size fields.
fn same_but_sizes(x: &crate::Instr, y: &crate::Instr) -> bool {
    let mut y2 = y.clone();
    let xs = x.slots();
    x.name() == y.name() && xs.len() == y.slots().len() && {
        for (s, v) in y2.slots_mut().into_iter().zip(&xs) {
            let _ = s.set(*v);
        }
        &y2 == x
    }
}
