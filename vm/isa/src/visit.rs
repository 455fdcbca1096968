//! Per-role visitors, generated from the instruction list ([`crate::for_each_op!`]): a trait
//! with one method per instruction a role runs itself, fields as arguments, and a dispatch
//! ([`Instr::visit_party`], ...) that calls it. The classes a role leaves to someone else go
//! to one method per role that names them, never to a wildcard: an instruction added to the
//! list does not compile until every role that runs its class has a method for it.
//!
//! Operands arrive by value, lists (`Dims`, `Strides`) by reference.

use crate::operand::{Buf, Dims, Party, Strides};
use crate::ops::Instr;

/// A visitor method's parameter type for an operand type.
macro_rules! arg_ty {
    (Buf) => {
        Buf
    };
    (u8) => {
        u8
    };
    (u32) => {
        u32
    };
    (u64) => {
        u64
    };
    (Party) => {
        Party
    };
    (Dims) => {
        &Dims
    };
    (Strides) => {
        &Strides
    };
}

/// The argument for a matched field (`&T`) of an operand type.
macro_rules! arg {
    (Dims, $f:ident) => {
        $f
    };
    (Strides, $f:ident) => {
        $f
    };
    ($t:ident, $f:ident) => {
        *$f
    };
}

/// One instruction's part of a visitor, as its role treats its class: `op` (a method of its
/// own) or `class m` (the role's method `m`, given the instruction). `decl` is the trait
/// method, `call v ins` the dispatch arm, `name` a method that names itself.
macro_rules! visit_part {
    (op decl; $(#[$a:meta])* $snake:ident [$($f:ident : $t:ident,)*]) => {
        $(#[$a])*
        // The arguments are the instruction's fields, however many.
        #[allow(clippy::too_many_arguments)]
        fn $snake(&mut self, $($f: arg_ty!($t)),*) -> Self::Out;
    };
    (class $m:ident decl; $($rest:tt)*) => {};
    (op call $v:ident $ins:ident; $(#[$a:meta])* $snake:ident [$($f:ident : $t:ident,)*]) => {
        $v.$snake($(arg!($t, $f)),*)
    };
    (class $m:ident call $v:ident $ins:ident; $($rest:tt)*) => {
        $v.$m($ins)
    };
    // A method that returns its own name, for the tests of the dispatch.
    (op name; $(#[$a:meta])* $snake:ident [$($f:ident : $t:ident,)*]) => {
        #[allow(clippy::too_many_arguments)]
        fn $snake(&mut self, $($f: arg_ty!($t)),*) -> &'static str {
            stringify!($snake)
        }
    };
    (class $m:ident name; $($rest:tt)*) => {};
}

/// How [`PartyVisitor`] treats each class.
macro_rules! party_role {
    (local $($t:tt)*) => { visit_part!{op $($t)*} };
    (elementwise $($t:tt)*) => { visit_part!{op $($t)*} };
    (comm $($t:tt)*) => { visit_part!{op $($t)*} };
    (exchange $($t:tt)*) => { visit_part!{op $($t)*} };
    (control $($t:tt)*) => { visit_part!{op $($t)*} };
    (dealer $($t:tt)*) => { visit_part!{class dealer $($t)*} };
}

/// How [`DealerVisitor`] treats each class.
macro_rules! dealer_role {
    (local $($t:tt)*) => { visit_part!{class online $($t)*} };
    (elementwise $($t:tt)*) => { visit_part!{class online $($t)*} };
    (comm $($t:tt)*) => { visit_part!{class online $($t)*} };
    (exchange $($t:tt)*) => { visit_part!{class online $($t)*} };
    (control $($t:tt)*) => { visit_part!{op $($t)*} };
    (dealer $($t:tt)*) => { visit_part!{op $($t)*} };
}

/// How [`ElementwiseVisitor`] treats each class.
macro_rules! elementwise_role {
    (local $($t:tt)*) => { visit_part!{class other $($t)*} };
    (elementwise $($t:tt)*) => { visit_part!{op $($t)*} };
    (comm $($t:tt)*) => { visit_part!{class other $($t)*} };
    (exchange $($t:tt)*) => { visit_part!{class other $($t)*} };
    (control $($t:tt)*) => { visit_part!{class other $($t)*} };
    (dealer $($t:tt)*) => { visit_part!{class other $($t)*} };
}

macro_rules! define_visitors {
    ($( $(#[$attr:meta])* $snake:ident = $Camel:ident [$class:ident]
        { $($wr:ident : $wrt:ident),* ; $($rd:ident : $rdt:ident),* } ;)*) => {
        /// A party's side of every instruction: one method per instruction it runs itself
        /// (every class but `dealer`), and [`PartyVisitor::dealer`] for the dealer's, whose
        /// material it draws (through a [`DealerVisitor`]).
        pub trait PartyVisitor {
            /// What a visit returns.
            type Out;
            /// A `dealer` instruction: its material is drawn, not computed.
            fn dealer(&mut self, ins: &Instr) -> Self::Out;
            $( party_role!{$class decl; $(#[$attr])* $snake [$($wr: $wrt,)* $($rd: $rdt,)*]} )*
        }

        /// The dealer's side: one method per `dealer` and `control` instruction, and
        /// [`DealerVisitor::online`] for the parties' online work, of which the dealer sees
        /// only what it overwrites.
        pub trait DealerVisitor {
            /// What a visit returns.
            type Out;
            /// A `local`, `elementwise`, `comm` or `exchange` instruction.
            fn online(&mut self, ins: &Instr) -> Self::Out;
            $( dealer_role!{$class decl; $(#[$attr])* $snake [$($wr: $wrt,)* $($rd: $rdt,)*]} )*
        }

        /// The JIT's side: one method per `elementwise` instruction, and
        /// [`ElementwiseVisitor::other`] for every other, which it leaves to the interpreter.
        pub trait ElementwiseVisitor {
            /// What a visit returns.
            type Out;
            /// An instruction of any class but `elementwise`.
            fn other(&mut self, ins: &Instr) -> Self::Out;
            $( elementwise_role!{$class decl; $(#[$attr])* $snake [$($wr: $wrt,)* $($rd: $rdt,)*]} )*
        }

        // The arms bind every field, and a class-wide method uses none of them.
        #[allow(unused_variables)]
        impl Instr {
            /// Calls `v`'s method for this instruction.
            #[inline]
            pub fn visit_party<V: PartyVisitor + ?Sized>(&self, v: &mut V) -> V::Out {
                let ins = self;
                match ins {
                    $( Instr::$Camel { $($wr,)* $($rd),* } =>
                        party_role!{$class call v ins; $snake [$($wr: $wrt,)* $($rd: $rdt,)*]}, )*
                }
            }

            /// Calls `v`'s method for this instruction.
            #[inline]
            pub fn visit_dealer<V: DealerVisitor + ?Sized>(&self, v: &mut V) -> V::Out {
                let ins = self;
                match ins {
                    $( Instr::$Camel { $($wr,)* $($rd),* } =>
                        dealer_role!{$class call v ins; $snake [$($wr: $wrt,)* $($rd: $rdt,)*]}, )*
                }
            }

            /// Calls `v`'s method for this instruction.
            #[inline]
            pub fn visit_elementwise<V: ElementwiseVisitor + ?Sized>(&self, v: &mut V) -> V::Out {
                let ins = self;
                match ins {
                    $( Instr::$Camel { $($wr,)* $($rd),* } =>
                        elementwise_role!{$class call v ins; $snake [$($wr: $wrt,)* $($rd: $rdt,)*]}, )*
                }
            }
        }
    };
}

crate::for_each_op!(define_visitors);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::class::Class;
    use crate::operand::Reader;
    use crate::ops::NAMES;

    /// Answers every visit with the name of the method called.
    struct Names;

    macro_rules! names {
        ($( $(#[$attr:meta])* $snake:ident = $Camel:ident [$class:ident]
            { $($wr:ident : $wrt:ident),* ; $($rd:ident : $rdt:ident),* } ;)*) => {
            #[allow(unused_variables)]
            impl PartyVisitor for Names {
                type Out = &'static str;
                fn dealer(&mut self, _: &Instr) -> &'static str {
                    "dealer"
                }
                $( party_role!{$class name; $snake [$($wr: $wrt,)* $($rd: $rdt,)*]} )*
            }

            #[allow(unused_variables)]
            impl DealerVisitor for Names {
                type Out = &'static str;
                fn online(&mut self, _: &Instr) -> &'static str {
                    "online"
                }
                $( dealer_role!{$class name; $snake [$($wr: $wrt,)* $($rd: $rdt,)*]} )*
            }

            #[allow(unused_variables)]
            impl ElementwiseVisitor for Names {
                type Out = &'static str;
                fn other(&mut self, _: &Instr) -> &'static str {
                    "other"
                }
                $( elementwise_role!{$class name; $snake [$($wr: $wrt,)* $($rd: $rdt,)*]} )*
            }
        };
    }
    crate::for_each_op!(names);

    #[test]
    fn each_role_calls_the_instructions_own_method_or_its_class_method() {
        for op in 0..NAMES.len() {
            let mut bytes = vec![op as u8];
            bytes.resize(64, 0);
            let ins = Instr::decode(&mut Reader::new(&bytes)).unwrap();
            let (name, class) = (ins.name(), ins.class());
            let own = |per_op: bool, method| if per_op { name } else { method };
            assert_eq!(ins.visit_party(&mut Names), own(class != Class::Dealer, "dealer"));
            let dealer = matches!(class, Class::Dealer | Class::Control);
            assert_eq!(ins.visit_dealer(&mut Names), own(dealer, "online"));
            let elementwise = class == Class::Elementwise;
            assert_eq!(ins.visit_elementwise(&mut Names), own(elementwise, "other"));
        }
    }
}
