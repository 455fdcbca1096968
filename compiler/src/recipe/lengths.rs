//! The model of a recipe at any sequence length (token pruning compiles and evaluates it at
//! every length its rule can reach): each length loaded once, random weights drawn once, and
//! every length holding the same weight tensors.

use super::{load, Loaded, RandomMemo, Recipe, RecipeError};
use crate::ir::{Graph, Tensor, ValueDef};
use crate::prune::reference::GraphError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Graphs by length, and the weight tensors they share by name.
type Cache = (HashMap<usize, Graph>, HashMap<String, Arc<Tensor>>);

/// The recipe's model (loaded and rewritten) by sequence length.
pub struct Lengths<'a> {
    recipe: &'a Recipe,
    memo: RandomMemo,
    cache: Mutex<Cache>,
}

impl<'a> Lengths<'a> {
    /// Nothing loaded yet.
    pub fn new(recipe: &'a Recipe) -> Lengths<'a> {
        Lengths { recipe, memo: RandomMemo::default(), cache: Default::default() }
    }

    /// The model at the recipe's own length, not rewritten (its random weights go to the
    /// memo, so a later length does not draw them again).
    pub fn load(&self) -> Result<Loaded, RecipeError> {
        load(&self.recipe.model, Some(&self.memo))
    }

    /// Records `g`, the model at length `n` rewritten as the recipe says, so that
    /// [`Lengths::at`] does not load it again.
    pub fn keep(&self, n: usize, g: Graph) {
        self.share(n, g);
    }

    /// The model at length `n`, rewritten.
    pub fn at(&self, n: usize) -> Result<Graph, RecipeError> {
        if let Some(g) = self.cache.lock().expect("not poisoned").0.get(&n) {
            return Ok(g.clone());
        }
        let spec = super::ModelSpec { seq: Some(n), ..self.recipe.model.clone() };
        let mut g = load(&spec, Some(&self.memo))?.graph;
        self.recipe.rewrite(&mut g)?;
        Ok(self.share(n, g))
    }

    /// [`Lengths::at`] as token pruning takes it ([`crate::prune::reference::GraphAt`]).
    pub fn graph_at(&self) -> impl Fn(usize) -> Result<Graph, GraphError> + '_ {
        |n| self.at(n).map_err(GraphError::from)
    }

    /// Caches `g` as the graph at `n`, its weights replaced by the tensors already held.
    fn share(&self, n: usize, mut g: Graph) -> Graph {
        let mut c = self.cache.lock().expect("not poisoned");
        for (_, vd) in g.values.iter_mut() {
            if let ValueDef::Weight(t) = &mut vd.def {
                match c.1.get(&vd.name) {
                    Some(shared) if shared.ty() == t.ty() => *t = shared.clone(),
                    _ => {
                        c.1.insert(vd.name.clone(), t.clone());
                    }
                }
            }
        }
        c.0.insert(n, g.clone());
        g
    }
}
