//! Head merging (Marill): the same BERT-base layer viewed as 4 heads of 192 instead of 12 of
//! 64 has the same weights, computes attention exactly as a 4-head model does, and runs a
//! third of the softmaxes, so its softmax costs a third of the bytes.

mod common;

use std::collections::HashMap;
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::{compile, CompileOptions};
use veil_compiler::dsl::{lower_model, stdlib_loader};
use veil_compiler::ir::Tensor;
use veil_compiler::weights::RandomSource;
use veil_isa::cost::{program_cost, Cost};

fn costs(model: &str) -> (Cost, Cost) {
    let mut l = stdlib_loader();
    l.load_path(&common::repo().join("examples/models/bert-base.veil").display().to_string())
        .unwrap();
    let g =
        lower_model(&l, model, &mut RandomSource::new(1)).unwrap_or_else(|e| panic!("{e}")).graph;
    let c = compile(g, &|_| Vis::Server, &CompileOptions::default()).unwrap();
    let pc = program_cost(&c.program);
    let mut softmax = Cost::default();
    for (tag, cost) in &pc.by_tag {
        if tag.op == "softmax" {
            softmax.rounds += cost.rounds;
            softmax.sent[0] += cost.sent[0];
            softmax.sent[1] += cost.sent[1];
        }
    }
    (pc.body, softmax)
}

#[test]
fn four_merged_heads_cost_a_third_of_the_softmax_bytes() {
    let (all12, soft12) = costs("bert_base_layer");
    let (all4, soft4) = costs("bert_base_4heads_layer");
    // 12·128·128 softmax inputs against 4·128·128. The per-element work is the same except
    // for the scale: 12 heads' 1/√64 = 2^-3 folds into the scores' truncation
    // (`ScalarProduct::RelabelTruncated`), while 4 heads' 1/√192 is a product after it that
    // needs one more truncating opening (and round) per score, so the ratio is below 3
    // (2.26 since truncating openings send only the bits they keep, which made the rest of
    // the softmax cheaper against that opening).
    let ratio = soft12.online() as f64 / soft4.online() as f64;
    assert!((2.1..2.9).contains(&ratio), "softmax bytes 12 heads / 4 heads = {ratio:.3}");
    // Rounds with softmax traffic: 4 heads' scale is one more truncating opening, and the
    // tournament's first level shares the round of the truncation before it (`max_rows`),
    // which for 12 heads is QKᵀ's (a `mul` round already) and for 4 heads the scale's (a
    // softmax one). Every level's comparison is two digits (one AND round) in both.
    assert_eq!(soft12.rounds + 1 - 1, soft4.rounds, "4 heads' softmax rounds");
    // Fewer heads also shrink the attention products (probabilities × values).
    let saved = all12.online() - all4.online();
    assert!(saved >= soft12.online() - soft4.online(), "saved {saved} B in all");
    eprintln!(
        "one BERT-base layer: online {} B (12 heads) vs {} B (4 heads); softmax {} vs {} B",
        all12.online(),
        all4.online(),
        soft12.online(),
        soft4.online()
    );
}

#[test]
fn merged_heads_run_two_party_and_match_the_plaintext_layer() {
    let mut l = stdlib_loader();
    l.load_path(&common::repo().join("examples/models/bert-base.veil").display().to_string())
        .unwrap();
    let g = lower_model(&l, "bert_base_4heads_layer", &mut RandomSource::new(1)).unwrap().graph;
    let name = g.values[g.inputs[0]].name.clone();
    let mut r = veil_compiler::weights::SplitMix(7);
    let x: Vec<f32> = (0..128 * 768).map(|_| r.normal() as f32).collect();
    let inputs: HashMap<String, Tensor> =
        [(name, Tensor::f32(vec![128, 768], x))].into_iter().collect();
    let want = veil_compiler::eval::run(&g, &inputs).unwrap()[0].to_f64_vec();
    let c = compile(g, &|_| Vis::Server, &CompileOptions::default()).unwrap();
    let (_, outs) = common::run_compiled(&c, &inputs, false).unwrap();
    let got = outs[0].1.to_f64_vec();
    let max = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = common::max_abs_diff(&got, &want);
    // The end-to-end tolerance of the two-party tests: 1% of the output's range.
    assert!(err < 0.01 * max, "4-head layer two-party: max abs error {err} of max {max}");
}
