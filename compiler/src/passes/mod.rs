//! Graph passes run at import ([`import_pipeline`]: the `import` stage of the compile
//! pipeline, see [`crate::recipe::stages`]) and the SMU rewrite; each pass is one file, one
//! struct, one name.

mod annotate_attention;
mod fuse_gelu;
mod fuse_layer_norm;
mod fuse_smu1;
mod fuse_softmax;
pub mod matching;
mod smu_rewrite;

pub use annotate_attention::AnnotateAttention;
pub use fuse_gelu::FuseGelu;
pub use fuse_layer_norm::FuseLayerNorm;
pub use fuse_smu1::FuseSmu1;
pub use fuse_softmax::FuseSoftmax;
pub use smu_rewrite::SmuRewrite;

use crate::ir::{verify, Graph, VerifyErrors};

/// A graph-to-graph transformation.
pub trait Pass {
    /// The pass's name.
    fn name(&self) -> &'static str;
    /// Runs the pass; returns how many rewrites it made.
    fn run(&mut self, g: &mut Graph) -> usize;
}

/// A pass produced an invalid graph: always a bug in that pass.
#[derive(Debug, thiserror::Error)]
#[error("pass `{pass}` produced an invalid graph:\n{errors}")]
pub struct PassError {
    /// The pass.
    pub pass: &'static str,
    /// What the verifier found.
    pub errors: VerifyErrors,
}

/// The passes run after import: recognise the structures later stages need (GELU in erf and
/// tanh form, decomposed layer norm, SMU-1, written-out softmax) and annotate attention blocks.
pub fn import_pipeline() -> Vec<Box<dyn Pass>> {
    vec![
        Box::new(FuseGelu),
        Box::new(FuseLayerNorm),
        Box::new(FuseSmu1),
        Box::new(FuseSoftmax),
        Box::new(AnnotateAttention),
    ]
}

/// Runs passes in order, verifying the graph after each, and compacts it at the end.
pub fn run(g: &mut Graph, passes: &mut [Box<dyn Pass>]) -> Result<(), PassError> {
    for p in passes.iter_mut() {
        if p.run(g) > 0 {
            g.remove_dead_nodes();
        }
        verify(g).map_err(|errors| PassError { pass: p.name(), errors })?;
    }
    *g = g.compact();
    Ok(())
}
