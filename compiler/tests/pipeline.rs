//! The compile pipeline, stage by stage: the IR after every stage of a small model (BERT-tiny's
//! DSL shrunk to a handful of elements per axis) pinned as snapshots, and the recipe stored in
//! the program giving back the graph that was compiled.

use std::path::Path;
use std::sync::{Arc, Mutex};
use veil_compiler::compile::pipeline::Observer;
use veil_compiler::recipe::{ModelSpec, Recipe, WeightsSpec};

const MINI: &[(&str, usize)] =
    &[("S", 4), ("H", 8), ("NH", 2), ("D", 4), ("FF", 16), ("L", 1), ("V", 16), ("P", 8)];

fn mini_recipe() -> Recipe {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/bert-tiny.veil");
    Recipe::new(ModelSpec {
        file,
        dims: MINI.iter().map(|&(n, v)| (n.to_string(), v)).collect(),
        weights: WeightsSpec::Random(1),
        ..ModelSpec::default()
    })
}

/// Compiles `r`, returning each stage's name and the IR it left, in order.
fn stages_of(r: &Recipe) -> (Vec<(String, String)>, veil_compiler::recipe::Built) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let observer = Observer::new(move |stage, g| {
        s.lock().unwrap().push((stage.to_string(), veil_compiler::ir::print::graph_text(g)))
    });
    let built = r.compile(&mut |_, _| {}, &observer).unwrap();
    let seen = seen.lock().unwrap().clone();
    (seen, built)
}

#[test]
fn the_ir_after_every_stage() {
    let (seen, _) = stages_of(&mini_recipe());
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    let all: Vec<&str> = veil_compiler::recipe::stages().iter().map(|(n, _)| *n).collect();
    assert_eq!(names, all, "every stage reported once, in the listed order");
    for (i, (name, text)) in seen.iter().enumerate() {
        insta::assert_snapshot!(format!("pipeline_{i}_{name}"), text);
    }
    // The stages that change this model's graph do change it (a stage that stopped working
    // would leave its predecessor's text).
    let text = |n: &str| &seen.iter().find(|(s, _)| s == n).unwrap().1;
    assert_ne!(text("import"), text("assign_layers"));
    assert_ne!(text("assign_layers"), text("lower_nonlinear"));
    assert_eq!(text("import"), text("generation"), "nothing to rewrite, split or generate");
}

#[test]
fn the_stored_recipe_gives_back_the_compiled_graph() {
    let r = mini_recipe();
    let (seen, built) = stages_of(&r);
    let stored = Recipe::of_program(&built.compiled.program).unwrap().expect("stored");
    assert_eq!(stored, built.recipe);
    assert_eq!(stored.model.seq, Some(4), "the DSL's S is recorded");
    assert!(stored.model.file.is_absolute());
    // The reference `veil run` evaluates is the front half's graph, by construction.
    let reference = veil_compiler::ir::print::graph_text(&stored.reference().unwrap());
    let front = &seen.iter().find(|(s, _)| s == "generation").unwrap().1;
    assert_eq!(&reference, front);
}

#[test]
fn a_program_without_a_recipe_or_with_a_broken_one() {
    let (_, built) = stages_of(&mini_recipe());
    let mut p = built.compiled.program.clone();
    p.meta.retain(|(k, _)| k != Recipe::META);
    assert_eq!(Recipe::of_program(&p).unwrap(), None);
    p.meta.push((Recipe::META.into(), "{\"version\": 1}".into()));
    let e = Recipe::of_program(&p).unwrap_err().to_string();
    assert!(e.contains("recipe does not parse"), "{e}");
    let mut r = mini_recipe();
    r.version = 99;
    p.meta.retain(|(k, _)| k != Recipe::META);
    p.meta.push((Recipe::META.into(), r.to_json()));
    let e = Recipe::of_program(&p).unwrap_err().to_string();
    assert!(e.contains("recipe version 99"), "{e}");
}
