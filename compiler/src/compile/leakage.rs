//! The leakage check, run on every compile: whatever the partition decided, the client's file
//! must hold public data only, the program may reveal to the client only the model's declared
//! outputs, and the server may receive nothing of the client's in the clear (its program inputs
//! are the server's own weights). A violation is a compiler bug or a wrong visibility
//! declaration; the compile stops with the offending value named rather than write a leaky
//! artifact.

use crate::ir::{Graph, Tensor, ValueDef};
use std::collections::HashSet;
use veil_isa::{Instr, Party, Program};

/// Checks the client graph's data: every constant must be public. `private` lists the bytes of
/// every private weight (and server-derived value): a client constant equal to one leaks it.
pub fn check_client_graph(cg: &Graph, private: &[(String, Tensor)]) -> Result<(), String> {
    let secret: Vec<(&str, &Tensor)> =
        private.iter().filter(|(_, t)| t.numel() > 1).map(|(n, t)| (n.as_str(), t)).collect();
    for (_, vd) in cg.values.iter() {
        let t = match &vd.def {
            ValueDef::Const(t) | ValueDef::Weight(t) => t,
            _ => continue,
        };
        if let Some((name, _)) = secret.iter().find(|(_, s)| s.shape == t.shape && **s == **t) {
            return Err(format!(
                "the client's part would contain `{}`, which equals the private weight `{name}`",
                vd.name
            ));
        }
    }
    Ok(())
}

/// Checks the program: reveals go to the client only, and only of declared outputs; the
/// server's inputs are weights, never client data.
pub fn check_program(p: &Program, model_outputs: &[String]) -> Result<(), String> {
    let outs: HashSet<&str> = model_outputs.iter().map(String::as_str).collect();
    for o in &p.outputs {
        if !outs.contains(o.name.as_str()) {
            return Err(format!(
                "the program would reveal `{}`, which is not a declared output of the model",
                o.name
            ));
        }
    }
    for i in &p.inputs {
        if i.party != Party::Client {
            return Err(format!("program input `{}` would come from the server", i.name));
        }
    }
    for ins in p.setup.iter().chain(&p.body) {
        if let Instr::Reveal { to, .. } = ins {
            if *to != Party::Client {
                return Err(format!("the program reveals a value to the server: {}", ins.disas()));
            }
        }
    }
    Ok(())
}
