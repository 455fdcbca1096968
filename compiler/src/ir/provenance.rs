//! Where a node comes from, as data rather than as parts of its name: the model layer it
//! belongs to, the generation step it runs in, and the operator a stdlib expansion implements
//! (its site). The cost report's tags and the calibration keys are read from it; node names
//! stay what the source called them (plus suffixes that keep them unique).

use super::Op;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A node's provenance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The model layer (set by `compile::layers::assign_layers`).
    pub layer: Option<u32>,
    /// The generation step (a generation program's windows).
    pub step: Option<Step>,
    /// The operator this node helps implement (`gelu`, `softmax`, `argmax`, …), for nodes an
    /// expansion made.
    pub site: Option<String>,
}

/// One step of a generation program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// The prompt's forward pass.
    Prefill,
    /// The decode step producing token `t` (t ≥ 1).
    Token(u32),
}

impl Step {
    /// Parses `prefill` or `tokN`.
    pub fn parse(s: &str) -> Option<Step> {
        match s {
            "prefill" => Some(Step::Prefill),
            _ => s
                .strip_prefix("tok")
                .filter(|n| !n.is_empty())
                .and_then(|n| n.parse().ok())
                .map(Step::Token),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Prefill => f.write_str("prefill"),
            Step::Token(t) => write!(f, "tok{t}"),
        }
    }
}

impl Provenance {
    /// The cost report's tag of a node with this provenance computing `op`: its layer
    /// (`layer3`, `model` outside any layer, `tok2:layer3` in a generation step) and its kind
    /// (the site, else a class of `op`).
    pub fn tag(&self, op: &Op) -> (String, String) {
        let layer = match self.layer {
            Some(l) => format!("layer{l}"),
            None => "model".to_string(),
        };
        let layer = match self.step {
            Some(s) => format!("{s}:{layer}"),
            None => layer,
        };
        let kind = match &self.site {
            Some(s) => s.clone(),
            None => op_class(op),
        };
        (layer, kind)
    }

    /// The calibration key of a node called `name`: its name without the generation step,
    /// prefixed by its layer where the name does not say it (`layer.3/node_MatMul_48`), so
    /// that calibration, which sees the plain model, and every compile of it agree.
    pub fn key(&self, name: &str) -> String {
        let name = match self.step {
            Some(s) => name.strip_prefix(&format!("{s}/")).unwrap_or(name),
            None => name,
        };
        match (layer_in_name(name), self.layer) {
            (None, Some(l)) => format!("layer.{l}/{name}"),
            _ => name.to_string(),
        }
    }

    /// The provenance of a node an expansion of `self`'s node makes for operator `site`.
    pub fn at_site(&self, site: &str) -> Provenance {
        Provenance { site: Some(site.to_string()), ..self.clone() }
    }
}

impl fmt::Display for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(s) = self.step {
            parts.push(s.to_string());
        }
        if let Some(l) = self.layer {
            parts.push(format!("layer{l}"));
        }
        if let Some(s) = &self.site {
            parts.push(s.clone());
        }
        f.write_str(&parts.join(" "))
    }
}

/// The kind of a node outside any expansion, for the cost report.
fn op_class(op: &Op) -> String {
    match op {
        Op::MatMul => "matmul".into(),
        Op::Add | Op::Sub | Op::Neg => "add".into(),
        Op::Mul | Op::Div => "mul".into(),
        Op::Gather { .. } => "embedding".into(),
        o if o.is_data_movement() => "reshape".into(),
        o => o.name().into(),
    }
}

/// The layer a source name carries, if any: exporters name weights and often nodes by layer
/// (`encoder.layer.3.…`, `/h.3/attn/…`, `blocks_3_…`).
pub fn layer_in_name(name: &str) -> Option<u32> {
    let norm = name.replace(['/', '_'], ".");
    let parts: Vec<&str> = norm.split('.').collect();
    parts.windows(2).find_map(|w| {
        matches!(w[0], "layer" | "layers" | "h" | "block" | "blocks")
            .then(|| w[1].parse::<u32>().ok())
            .flatten()
    })
}

/// The cost report's layer label of a source name (`layer3`, or `model`).
pub fn layer_label(name: &str) -> String {
    layer_in_name(name).map_or_else(|| "model".to_string(), |l| format!("layer{l}"))
}
