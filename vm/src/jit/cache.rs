//! Compiled kernels by signature: each distinct signature is compiled once per VM.

use super::codegen::{Codegen, JitError, KernelFn};
use super::kernel::Sig;
use std::collections::HashMap;

/// A code generator and the functions it produced, by signature.
pub struct KernelCache {
    codegen: Codegen,
    simd: bool,
    fns: HashMap<Sig, Option<KernelFn>>,
    failed: usize,
}

impl KernelCache {
    /// A cache for this host; `simd` enables the `i64x2` loop.
    pub fn new(simd: bool) -> Result<KernelCache, JitError> {
        Ok(KernelCache { codegen: Codegen::new()?, simd, fns: HashMap::new(), failed: 0 })
    }

    /// The function for `sig`, compiling it on first use; `None` when it does not compile
    /// (the caller interprets instead). A vector loop that fails falls back to scalar code.
    pub fn get(&mut self, sig: &Sig) -> Option<KernelFn> {
        if let Some(f) = self.fns.get(sig) {
            return *f;
        }
        let f =
            self.codegen.compile(sig, self.simd).or_else(|_| self.codegen.compile(sig, false)).ok();
        if f.is_none() {
            self.failed += 1;
        }
        self.fns.insert(sig.clone(), f);
        f
    }

    /// Distinct signatures compiled (or attempted).
    pub fn len(&self) -> usize {
        self.fns.len()
    }

    /// True when nothing was compiled yet.
    pub fn is_empty(&self) -> bool {
        self.fns.is_empty()
    }

    /// Signatures that did not compile.
    pub fn failed(&self) -> usize {
        self.failed
    }
}
