//! The classes declared in the instruction list agree with its documented conventions (see
//! the `ops` module docs), and with what the generated methods report.

use veil_isa::class::CLASSES;
use veil_isa::operand::Reader;
use veil_isa::ops::NAMES;
use veil_isa::{Class, Instr};

/// One instruction of each opcode, every field zero (every buffer `b0`).
fn every_instruction() -> Vec<Instr> {
    (0..NAMES.len())
        .map(|op| {
            let mut bytes = vec![op as u8];
            bytes.resize(64, 0);
            Instr::decode(&mut Reader::new(&bytes)).expect("zeros decode as every field")
        })
        .collect()
}

/// `(field, written)` for each buffer operand, from the disassembly's `field=b0` pairs.
fn buffer_fields(ins: &Instr) -> Vec<(String, bool)> {
    let names: Vec<String> = ins
        .disas()
        .split(' ')
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .filter(|(_, v)| v.strip_prefix('b').is_some_and(|n| n.parse::<u32>().is_ok()))
        .map(|(k, _)| k.to_string())
        .collect();
    let bufs = ins.buffers();
    assert_eq!(names.len(), bufs.len(), "{}", ins.disas());
    names.into_iter().zip(bufs.into_iter().map(|(_, w)| w)).collect()
}

#[test]
fn classes_follow_the_naming_conventions() {
    for (op, ins) in every_instruction().iter().enumerate() {
        let name = ins.name();
        let class = ins.class();
        assert_eq!(name, NAMES[op]);
        assert_eq!(class, CLASSES[op], "{name}");
        assert_eq!(name.starts_with('d'), class == Class::Dealer, "{name}: the `d*` draw");
        assert_eq!(
            matches!(name, "open" | "open_b" | "send" | "reveal"),
            class == Class::Comm,
            "{name}: only message parts are comm"
        );
        assert_eq!(name == "exchange", class == Class::Exchange, "{name}");
        assert_eq!(name == "setlen", class == Class::Control, "{name}");
        assert_eq!(ins.is_dealer(), class == Class::Dealer, "{name}");
        assert_eq!(ins.is_comm(), class == Class::Comm, "{name}");
        assert_eq!(class.is_local(), matches!(class, Class::Local | Class::Elementwise));
    }
}

#[test]
fn written_operands_are_the_ones_the_conventions_name() {
    // The names the module docs give written operands (before the list marked them, the
    // written flag came from this table).
    const WRITTEN: &[&str] = &["d", "c2", "pk", "s", "hi", "msb", "lt", "eq"];
    for ins in every_instruction() {
        let fields = buffer_fields(&ins);
        for (field, written) in &fields {
            assert_eq!(*written, WRITTEN.contains(&field.as_str()), "{} {field}", ins.name());
        }
        // Written operands come first (the `;` of the list), and a message part writes one.
        let first_read = fields.iter().position(|(_, w)| !w).unwrap_or(fields.len());
        assert!(fields[first_read..].iter().all(|(_, w)| !w), "{}", ins.name());
        let writes = fields.iter().filter(|(_, w)| *w).count();
        match ins.class() {
            Class::Comm => assert_eq!(writes, 1, "{}", ins.name()),
            Class::Exchange | Class::Control => assert_eq!(writes, 0, "{}", ins.name()),
            Class::Local | Class::Elementwise | Class::Dealer => {
                assert!(writes >= 1, "{}", ins.name())
            }
        }
    }
}

#[test]
fn an_elementwise_instruction_loops_over_its_first_destination() {
    for ins in every_instruction() {
        let first_written = ins.buffers().into_iter().find(|&(_, w)| w).map(|(b, _)| b);
        let expect = if ins.class() == Class::Elementwise { first_written } else { None };
        assert_eq!(ins.elementwise_dest(), expect, "{}", ins.name());
    }
}
