//! Stable text disassembly of a program (what `veil inspect model.vbc` prints and the
//! snapshots compare).

use crate::cost::program_cost;
use crate::program::{ConstOrigin, Kind, Program};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Disassembles a program: header, buffer summary, I/O, constants, then each section with one
/// instruction per line and its tag.
pub fn disassemble(p: &Program) -> String {
    let mut s = header(p);
    for (i, c) in p.consts.iter().enumerate() {
        let shown: Vec<String> = c.data.iter().take(4).map(|x| (*x as i64).to_string()).collect();
        let more = if c.data.len() > 4 {
            format!(", … ({} values)", c.data.len())
        } else {
            String::new()
        };
        let origin = match p.const_origin(i) {
            ConstOrigin::Program => String::new(),
            o => format!(" ; from {o}"),
        };
        writeln!(s, "const  {} = [{}{more}]{origin}", c.buf, shown.join(", ")).unwrap();
    }
    for (name, code, tags) in [("setup", &p.setup, &p.setup_tags), ("body", &p.body, &p.body_tags)]
    {
        writeln!(s, "{name}:").unwrap();
        for (i, (ins, &t)) in code.iter().zip(tags.iter()).enumerate() {
            let tag =
                p.tags.get(t as usize).map(|t| format!("{}/{}", t.layer, t.op)).unwrap_or_default();
            let text = ins.disas();
            writeln!(s, "  {i:>6}  {text:<64} ; {tag}").unwrap();
        }
    }
    s
}

/// A program's shape without its instruction listing (which runs to tens of thousands of
/// lines for a transformer): header, I/O, then per section the count of each instruction,
/// and per tag (layer/op) the instructions and their cost.
pub fn summary(p: &Program) -> String {
    let mut s = header(p);
    for (name, code) in [("setup", &p.setup), ("body", &p.body)] {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for ins in code.iter() {
            *counts.entry(ins.name()).or_default() += 1;
        }
        let list: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
        writeln!(s, "{name}: {} instructions: {}", code.len(), list.join(", ")).unwrap();
    }
    let mut per_tag: BTreeMap<String, usize> = BTreeMap::new();
    for &t in &p.body_tags {
        let tag =
            p.tags.get(t as usize).map(|t| format!("{}/{}", t.layer, t.op)).unwrap_or_default();
        *per_tag.entry(tag).or_default() += 1;
    }
    let cost = program_cost(p);
    writeln!(s, "body by tag: instructions, rounds, client B, server B, dealer B").unwrap();
    for (tag, n) in per_tag {
        let c = cost
            .by_tag
            .iter()
            .find(|(t, _)| format!("{}/{}", t.layer, t.op) == tag)
            .map(|(_, c)| *c)
            .unwrap_or_default();
        writeln!(
            s,
            "  {tag:<28} {n:>7} {:>5} {:>10} {:>10} {:>10}",
            c.rounds, c.sent[0], c.sent[1], c.dealer
        )
        .unwrap();
    }
    s
}

fn header(p: &Program) -> String {
    let mut s = String::new();
    writeln!(
        s,
        "; veil program, format {}, fixed point with {} fractional bits",
        crate::program::FORMAT_VERSION,
        p.frac_bits
    )
    .unwrap();
    for (k, v) in &p.meta {
        writeln!(s, "; {k} = {v}").unwrap();
    }
    let mut kinds: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for b in &p.buffers {
        let e = kinds.entry(b.kind.to_string()).or_default();
        e.0 += 1;
        e.1 += b.len as u64;
    }
    write!(s, "; buffers: {}", p.buffers.len()).unwrap();
    for (k, (n, total)) in &kinds {
        write!(s, ", {n} {k} ({total} elements)").unwrap();
    }
    s.push('\n');
    if let Some(d) = &p.dynamic {
        writeln!(
            s,
            "; dynamic: sequence length {} at most; {} buffer lengths and {} size fields follow the length set by `setlen` (token pruning); the cost below is at the full length",
            d.max_len,
            d.buffers.len(),
            d.fields.len()
        )
        .unwrap();
    }
    let cost = program_cost(p);
    writeln!(
        s,
        "; cost per inference: {} rounds, client sends {} B, server sends {} B, dealer sends {} B; setup: {} rounds, {} B",
        cost.body.rounds,
        cost.body.sent[0],
        cost.body.sent[1],
        cost.body.dealer,
        cost.setup.rounds,
        cost.setup.online()
    )
    .unwrap();
    for (what, list) in [("input", &p.inputs), ("weight", &p.weights), ("output", &p.outputs)] {
        for io in list.iter() {
            let kind = p.buf(io.buf).map(|b| b.kind).unwrap_or(Kind::Share);
            writeln!(
                s,
                "{what:<6} {:?} {} {} shape={:?} frac={} ({kind})",
                io.name, io.party, io.buf, io.shape, io.frac_bits
            )
            .unwrap();
        }
    }
    s
}
