//! What one run's `setlen`s cost a party or the dealer, per phase, on a compiled pruned
//! program (the figures in docs/bench/pruning-setlen.md):
//! `cargo run --release -p veil-isa --example setlen_profile -- PROG.vbc 56,55,52,…`
//! with the lengths a run revealed, in order.
use std::time::{Duration, Instant};
use veil_isa::{validate, validate_instance, Instr, Program, Segments};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, file, lens] = &args[..] else {
        return Err("usage: setlen_profile PROG.vbc N1,N2,…".into());
    };
    let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
    let p = Program::from_bytes(&bytes).map_err(|e| e.to_string())?;
    let d = p.dynamic.clone().ok_or("not a dynamic program")?;
    let lens: Vec<u32> = lens
        .split(',')
        .map(|s| s.parse().map_err(|_| format!("bad length {s}")))
        .collect::<Result<_, _>>()?;
    let t = Instant::now();
    validate(&p).map_err(|e| e.to_string())?;
    println!(
        "body: {} instructions, {} buffers ({} dynamic), {} dynamic fields; validate at load {:.1} ms",
        p.body.len(),
        p.buffers.len(),
        d.buffers.len(),
        d.fields.len(),
        ms(t.elapsed())
    );
    let starts: Vec<usize> = (0..p.body.len())
        .filter(|&i| matches!(p.body[i], Instr::SetLen { .. }))
        .map(|i| i + 1)
        .collect();
    // Before: a fresh instance per `setlen` (clone, sizes), validated whole, the previous one
    // dropped.
    let (mut t_inst, mut t_val, mut t_drop) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut prev: Option<Program> = None;
    for &n in &lens {
        let t = Instant::now();
        let q = d.instantiate(&p, n)?;
        t_inst += t.elapsed();
        let t = Instant::now();
        validate_instance(&q).map_err(|e| e.to_string())?;
        t_val += t.elapsed();
        let t = Instant::now();
        drop(prev.replace(q));
        t_drop += t.elapsed();
    }
    println!(
        "before, in all: instantiate (clone + sizes) {:.1} ms, validate the instance {:.1} ms, drop the previous {:.1} ms",
        ms(t_inst),
        ms(t_val),
        ms(t_drop)
    );
    // After: one copy resized in place, each segment checked as it is reached.
    let t = Instant::now();
    let mut q = Program { dynamic: None, ..p.clone() };
    let t_copy = t.elapsed();
    let t = Instant::now();
    let mut seg = Segments::at(&p, starts[0]);
    let t_at = t.elapsed();
    let (mut t_resize, mut t_check) = (Duration::ZERO, Duration::ZERO);
    for (&n, &from) in lens.iter().zip(&starts) {
        let t = Instant::now();
        d.resize(&p, &mut q, n)?;
        t_resize += t.elapsed();
        let t = Instant::now();
        seg.check(&q, from).map_err(|e| e.to_string())?;
        t_check += t.elapsed();
    }
    println!(
        "after, in all: one copy {:.1} ms, resize {:.1} ms, state to the first setlen {:.1} ms, check the segments {:.1} ms",
        ms(t_copy),
        ms(t_resize),
        ms(t_at),
        ms(t_check)
    );
    // What a party keeps alive past each segment: the rest of the body scanned per `setlen`
    // (before), or once for all of them (after).
    let me = veil_isa::Party::Client;
    let t = Instant::now();
    for &at in &starts {
        veil_isa::lifetime::live_from(&p, &p.body, &[at], me);
    }
    let t_each = t.elapsed();
    let t = Instant::now();
    veil_isa::lifetime::live_from(&p, &p.body, &starts, me);
    println!(
        "liveness past each setlen (client): {:.1} ms scanning per setlen, {:.1} ms in one pass",
        ms(t_each),
        ms(t.elapsed())
    );
    Ok(())
}
