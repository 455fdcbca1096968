//! Checking a dynamic program's instances one segment at a time.
//!
//! At a `setlen` the VM and the dealer switch to an instance of the program at the revealed
//! length and run it from the instruction after that `setlen` through the next one (or the end
//! of the body), where they switch again: no instance runs any other instruction. So an
//! instance needs checking only over that segment, not whole: [`Segments::check`] runs the
//! validator's full per-instruction checks, at the instance's sizes, over exactly the segment
//! that is about to run, plus the header checks (buffer lengths, constants, inputs and
//! outputs). A run of a pruned body then checks each instruction once, instead of the whole
//! program once per `setlen` (10 times for BERT-base's schedule).
//!
//! The validator carries state from one instruction to the next: which buffers the dealer
//! knows and which opens are pending. That state depends on instruction classes and buffer
//! ids only, which instantiation never changes (it rewrites sizes: buffer lengths and size
//! fields), and no open is pending at a `setlen` (the validator refuses one). So the state at
//! the end of one checked segment is the state at the start of the next, at any length, and
//! [`Segments`] carries it; the part before the first instance (the loaded program, validated
//! whole at load) is replayed for its state only.

use crate::program::Program;
use crate::validate::{Checker, ValidateError};
use crate::Instr;

/// The validator's state between segments of one run of a dynamic program's body.
#[derive(Clone, Debug)]
pub struct Segments {
    /// Buffers written by a dealer instruction so far.
    dealer_known: Vec<bool>,
    /// The body instruction the state is at: the next segment must start here.
    next: usize,
}

impl Segments {
    /// The state at body instruction `from` of the validated program `p` (the setup and the
    /// body before `from` replayed without checks: `validate` checked them).
    pub fn at(p: &Program, from: usize) -> Segments {
        let mut c = Checker::new(p, false);
        for ins in p.setup.iter().chain(p.body.iter().take(from)) {
            c.flow(ins);
        }
        Segments { dealer_known: c.dealer_known, next: from }
    }

    /// The body instruction the next segment starts at.
    pub fn next(&self) -> usize {
        self.next
    }

    /// Checks the segment of instance `q` that runs next: body instructions `from` through
    /// the next `setlen` or the end, with the header. On success the state moves past the
    /// segment. A segment that does not start where the last one ended is refused (its state
    /// would be unknown), and after a refusal every later segment is refused too.
    pub fn check(&mut self, q: &Program, from: usize) -> Result<(), ValidateError> {
        if from != self.next || q.buffers.len() != self.dealer_known.len() {
            let msg = format!(
                "instance of {} buffers checked from body #{from}, the checked state is at #{} \
                 with {} buffers",
                q.buffers.len(),
                self.next,
                self.dealer_known.len()
            );
            self.next = usize::MAX;
            return Err(ValidateError(vec![msg]));
        }
        // Refused until this segment passes.
        self.next = usize::MAX;
        let mut c = Checker::new(q, true);
        c.dealer_known = std::mem::take(&mut self.dealer_known);
        c.header();
        c.tags("body", &q.body, &q.body_tags);
        c.section = "body";
        let code = q.body.get(from..).unwrap_or(&[]);
        let len = code
            .iter()
            .position(|i| matches!(i, Instr::SetLen { .. }))
            .map_or(code.len(), |e| e + 1);
        for (i, ins) in code[..len].iter().enumerate() {
            c.index = from + i;
            c.name = ins.name();
            c.check(ins);
        }
        let end = from + len;
        if end == q.body.len() && c.any_pending {
            c.errs.push("body ends with opens that no exchange completes".into());
        }
        let known = std::mem::take(&mut c.dealer_known);
        c.finish()?;
        self.dealer_known = known;
        self.next = end;
        Ok(())
    }
}
