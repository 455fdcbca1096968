//! Which weights are public (Marill): the unchanged weights of an open foundation model need
//! no secrecy. A weight is public when a `--public` glob matches its name, when the model
//! declares it `public` (DSL), or when a base checkpoint holds the same bytes — under the same
//! name or, failing that, anywhere (content hash), since fine-tuning scripts rename freely.
//! Globs and base names also see the name `export-weights` gives an exporter's anonymous
//! matrix (`…query.weight` for `val_49`), so `*.layer.0.*` covers a layer of an ONNX export.

use crate::ir::{Graph, Tensor, ValueDef};
use std::collections::{BTreeMap, HashMap, HashSet};

/// `*` matches any run of characters (dots included), `?` one character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn content_key(t: &Tensor) -> (String, Vec<usize>, Vec<u8>) {
    let bytes = match &t.data {
        crate::ir::Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        crate::ir::Data::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        crate::ir::Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        crate::ir::Data::Bool(v) => v.iter().map(|&b| b as u8).collect(),
    };
    (format!("{:?}", t.dtype), t.shape.clone(), bytes)
}

/// Why a weight is public.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Declared `public` in the DSL.
    Declared,
    /// Matched this `--public` glob.
    Glob(String),
    /// Same bytes as the base checkpoint's tensor of this name.
    Base(String),
    /// The base part of a weight split into base plus a low-rank update (`--lora-rank`).
    LowRankBase(String),
}

/// Why the public weights could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum PublicError {
    /// A `--public` glob matches no weight (a typo would silently keep everything private).
    #[error("--public `{glob}` matches no weight of model `{model}` (the closest names: {}; `veil inspect MODEL` lists them all)", .examples.join(", "))]
    NoMatch {
        /// The glob.
        glob: String,
        /// The model.
        model: String,
        /// The weight names closest to the glob.
        examples: Vec<String>,
    },
}

/// The public weights of `g` (name → why), from DSL declarations, globs and a base checkpoint.
/// A glob that matches no weight is an error (a typo would silently keep everything private).
pub fn public_weights(
    g: &Graph,
    declared: &[String],
    globs: &[String],
    base: Option<&[(String, Tensor)]>,
) -> Result<BTreeMap<String, Reason>, PublicError> {
    let alias = crate::frontend::weight_names::descriptive_names(g);
    // (name, the name export-weights writes, tensor)
    let weights: Vec<(&str, &str, &Tensor)> = g
        .values
        .iter()
        .filter_map(|(v, d)| match &d.def {
            ValueDef::Weight(t) => Some((
                d.name.as_str(),
                alias.get(&v).map_or(d.name.as_str(), String::as_str),
                t.as_ref(),
            )),
            _ => None,
        })
        .collect();
    let mut out = BTreeMap::new();
    let declared: HashSet<&str> = declared.iter().map(String::as_str).collect();
    for &(n, _, _) in &weights {
        if declared.contains(n) {
            out.insert(n.to_string(), Reason::Declared);
        }
    }
    for glob in globs {
        let mut hit = false;
        for &(n, a, _) in &weights {
            if glob_match(glob, n) || glob_match(glob, a) {
                hit = true;
                out.entry(n.to_string()).or_insert_with(|| Reason::Glob(glob.clone()));
            }
        }
        if !hit {
            // The names closest to what the glob spells (longest shared prefix of its literal
            // start, then most shared dot-separated parts), not the alphabetically first.
            let literal: &str = glob.split(['*', '?']).next().unwrap_or_default();
            let parts: Vec<&str> = glob.split(['.', '*', '?']).filter(|p| !p.is_empty()).collect();
            let score = |n: &str| {
                let prefix = n.chars().zip(literal.chars()).take_while(|(a, b)| a == b).count();
                let shared = parts.iter().filter(|p| n.split('.').any(|q| q == **p)).count();
                (std::cmp::Reverse(prefix), std::cmp::Reverse(shared))
            };
            let mut names: Vec<&str> = weights.iter().map(|w| w.1).collect();
            names.sort_by_key(|n| (score(n), n.to_string()));
            names.dedup();
            names.truncate(5);
            return Err(PublicError::NoMatch {
                glob: glob.clone(),
                model: g.name.clone(),
                examples: names.into_iter().map(String::from).collect(),
            });
        }
    }
    if let Some(base) = base {
        let by_name: HashMap<&str, &Tensor> = base.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut by_content: HashMap<(String, Vec<usize>, Vec<u8>), &str> = HashMap::new();
        for (n, t) in base {
            by_content.entry(content_key(t)).or_insert(n.as_str());
        }
        for &(n, a, t) in &weights {
            let key = content_key(t);
            let same = |x: &&str| by_name.get(x).is_some_and(|b| content_key(b) == key);
            let matched = [n, a].into_iter().find(same).or_else(|| by_content.get(&key).copied());
            if let Some(m) = matched {
                out.entry(n.to_string()).or_insert_with(|| Reason::Base(m.to_string()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("m.embeddings.*", "m.embeddings.word_embeddings.weight"));
        assert!(glob_match("*.layer.0.*", "m.encoder.layer.0.attention.self.query.weight"));
        assert!(!glob_match("*.layer.1.*", "m.encoder.layer.10.x"));
        assert!(glob_match("*.layer.1?.*", "m.encoder.layer.10.x"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a", "ab"));
    }
}
