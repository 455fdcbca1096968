//! The JIT for local kernels: between two communication points each party's elementwise
//! instructions are fused into kernels ([`fuse`]), compiled with Cranelift ([`codegen`]) once
//! per distinct signature ([`cache`]), and run over the party's buffers in one pass.
//!
//! A kernel computes exactly what its member instructions compute in the interpreter (the
//! party's role is resolved while fusing), so results are bit-identical; a kernel that does
//! not compile runs its members in the interpreter instead.

pub mod cache;
pub mod codegen;
pub mod fuse;
pub mod kernel;

use crate::store::Slot;
use cache::KernelCache;
use codegen::{JitError, KernelFn};
use fuse::Plan;
use kernel::{Kernel, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};
use veil_isa::{Instr, Party, Program};

/// A section's plan with the compiled function of each kernel.
pub struct Compiled {
    /// Steps and kernels.
    pub plan: Plan,
    /// Per kernel, its function (`None`: interpret its members).
    pub fns: Vec<Option<KernelFn>>,
}

/// One party's compiled program. The function pointers in [`Compiled`] live as long as this.
pub struct Jit {
    /// The setup section.
    pub setup: Arc<Compiled>,
    /// The body.
    pub body: Arc<Compiled>,
    /// Time to plan and compile both sections.
    pub compile_time: Duration,
    /// Kernel instances in both sections as loaded (instances add theirs to the report).
    pub kernels: usize,
    /// Distinct compiled signatures.
    pub distinct: usize,
    /// Signatures that did not compile (their kernels are interpreted).
    pub failed: usize,
    // Last: the code must outlive every use of the pointers above.
    cache: KernelCache,
    me: Party,
}

impl Jit {
    /// Plans and compiles both sections of the validated `prog` for party `me` (a pruned
    /// program's body up to its first `setlen`: the rest runs in instances, see
    /// [`Jit::segment`]).
    pub fn new(prog: &Program, me: Party, simd: bool) -> Result<Jit, JitError> {
        let t0 = Instant::now();
        let mut cache = KernelCache::new(simd)?;
        let setup = plan_run(&mut cache, prog, &prog.setup, 0, me);
        let body = plan_run(&mut cache, prog, &prog.body, 0, me);
        // A pruned program's segments after its `setlen`s run in instances planned at each
        // revealed length; their code is the same at any length (a broadcast's lengths are
        // arguments), so it is compiled here, once per session, from the segments at the
        // full length, rather than during the query.
        if prog.dynamic.is_some() {
            let starts = prog
                .body
                .iter()
                .enumerate()
                .filter_map(|(i, ins)| matches!(ins, Instr::SetLen { .. }).then_some(i + 1));
            for from in starts {
                let code = &prog.body[from..];
                for k in fuse::plan(prog, &code[..segment_end(code)], from, me).kernels {
                    cache.get(&k.sig);
                }
            }
        }
        Ok(Jit {
            kernels: setup.plan.kernels.len() + body.plan.kernels.len(),
            distinct: cache.len(),
            failed: cache.failed(),
            setup,
            body,
            compile_time: t0.elapsed(),
            cache,
            me,
        })
    }

    /// Plans and compiles the body of `inst` (a program instantiated at a pruned length) from
    /// instruction `from` up to its next `setlen`. Signatures already compiled are reused
    /// (all of them, usually: see [`Jit::new`]). `None` when
    /// the segment's elementwise work is too small to repay planning it (see
    /// [`WORTH_PLANNING`]). Returns the plan and the time it took.
    pub fn segment(&mut self, inst: &Program, from: usize) -> (Option<Arc<Compiled>>, Duration) {
        let t0 = Instant::now();
        let code = &inst.body[from..];
        let len = code.iter().position(|i| matches!(i, Instr::SetLen { .. })).unwrap_or(code.len());
        let elements: usize = code[..len]
            .iter()
            .filter_map(Instr::elementwise_dest)
            .map(|d| inst.buffers.get(d.0 as usize).map_or(0, |b| b.len as usize))
            .sum();
        if elements < WORTH_PLANNING * len {
            return (None, t0.elapsed());
        }
        let c = plan_run(&mut self.cache, inst, &inst.body, from, self.me);
        self.distinct = self.cache.len();
        self.failed = self.cache.failed();
        (Some(c), t0.elapsed())
    }
}

/// Plans `section` of `prog` from instruction `from` through its next `setlen` (where the
/// sizes the plan is made at end and the VM stops) or its end, and compiles the kernels.
fn plan_run(
    cache: &mut KernelCache,
    prog: &Program,
    section: &[Instr],
    from: usize,
    me: Party,
) -> Arc<Compiled> {
    let code = &section[from..];
    let plan = fuse::plan(prog, &code[..segment_end(code)], from, me);
    let fns = plan.kernels.iter().map(|k| cache.get(&k.sig)).collect();
    Arc::new(Compiled { plan, fns })
}

/// Instructions of `code` through its first `setlen` (or all of them).
fn segment_end(code: &[Instr]) -> usize {
    code.iter().position(|i| matches!(i, Instr::SetLen { .. })).map_or(code.len(), |e| e + 1)
}

/// Planning costs about as much per instruction as fusing saves on a few hundred elements
/// (measured on BERT-base, 2-core EPYC: ~0.4 µs per instruction of the segment, whatever its
/// kind, against ~1.5 ns saved per element of an elementwise instruction), so a pruned
/// instance is planned only when its elementwise instructions hold at least this many
/// elements per instruction of the segment; smaller ones run interpreted.
pub const WORTH_PLANNING: usize = 512;

/// Runs kernel `k` with `f` over `bufs`; false (nothing done) when a buffer's length does not
/// match what the code indexes, so the caller interprets instead.
pub fn run(k: &Kernel, f: KernelFn, bufs: &mut [Slot]) -> bool {
    let mut ptrs: Vec<*mut u64> = Vec::with_capacity(k.bufs.len() + 2 * k.reads.len());
    if k.reads
        .iter()
        .any(|r| matches!(r, Read::Bcast { len: 0, .. } | Read::Bcast { inner: 0, .. }))
    {
        return false;
    }
    let inputs = k.sig.inputs.len();
    // Outputs become the VM's own arrays first (a write to shared data copies it), so no
    // input pointer taken below can outlive its array.
    for b in &k.bufs[inputs..] {
        if let Some(v) = bufs.get_mut(b.0 as usize) {
            let _ = &mut v[..];
        }
    }
    for (j, b) in k.bufs.iter().enumerate() {
        match bufs.get_mut(b.0 as usize) {
            Some(v) if v.len() == k.required_len(j) => {
                // Inputs are only read: a shared array (weights, zeros) stays shared.
                ptrs.push(if j < inputs { v.as_ptr() as *mut u64 } else { v.as_mut_ptr() })
            }
            _ => return false,
        }
    }
    // A broadcast's lengths go after the pointers, as integers the code compares with.
    ptrs.extend(k.bcast_args().map(|x| std::ptr::without_provenance_mut(x as usize)));
    // SAFETY: every pointer addresses a live buffer of the length the code indexes (checked
    // above: `n` elements, one, or the broadcast length `len`, whose `inner` divides `n`). Inputs and outputs may be the same
    // buffer; the code reads each element before storing to it and touches no other element
    // in between. No Rust reference to these buffers is used during the call.
    unsafe { f(ptrs.as_ptr(), k.n as u64) };
    true
}
