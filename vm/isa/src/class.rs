//! Instruction classes: who runs an instruction and how. Each instruction declares its class
//! in the list ([`crate::for_each_op!`]); what depends on it is generated here.

use crate::operand::Buf;
use crate::ops::Instr;
use std::fmt;

/// Who runs an instruction, and how (each instruction's `[class]` in the list).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// Each party computes it on its own arrays.
    Local,
    /// Local ring arithmetic in which each element of the destinations depends on the same
    /// element of the sources (`b` broadcast): what the JIT fuses into kernels.
    Elementwise,
    /// Queues a message part that the next `exchange` completes.
    Comm,
    /// Ends a round: sends every queued part and completes them.
    Exchange,
    /// Draws correlated randomness from the dealer; the `d*` instructions.
    Dealer,
    /// Changes how the rest of the program runs (`setlen`); the dealer follows it too.
    Control,
}

impl Class {
    /// Every class.
    pub const ALL: [Class; 6] = [
        Class::Local,
        Class::Elementwise,
        Class::Comm,
        Class::Exchange,
        Class::Dealer,
        Class::Control,
    ];

    /// The class's name in the list.
    pub fn name(self) -> &'static str {
        match self {
            Class::Local => "local",
            Class::Elementwise => "elementwise",
            Class::Comm => "comm",
            Class::Exchange => "exchange",
            Class::Dealer => "dealer",
            Class::Control => "control",
        }
    }

    /// True when a party computes the instruction alone: no message, no dealer.
    pub fn is_local(self) -> bool {
        matches!(self, Class::Local | Class::Elementwise)
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The [`Class`] of a class name in the list (an unknown name does not compile).
macro_rules! class_of {
    (local) => {
        Class::Local
    };
    (elementwise) => {
        Class::Elementwise
    };
    (comm) => {
        Class::Comm
    };
    (exchange) => {
        Class::Exchange
    };
    (dealer) => {
        Class::Dealer
    };
    (control) => {
        Class::Control
    };
}

/// An elementwise instruction's loop runs over its first written buffer.
macro_rules! elementwise_dest {
    (elementwise; $d:ident $(, $rest:ident)*) => {
        Some(*$d)
    };
    ($class:ident; $($w:ident),*) => {
        None
    };
}

macro_rules! define_classes {
    ($( $(#[$attr:meta])* $snake:ident = $Camel:ident [$class:ident]
        { $($wr:ident : $wrt:ident),* ; $($rd:ident : $rdt:ident),* } ;)*) => {
        /// Every instruction's class, indexed by opcode.
        pub const CLASSES: &[Class] = &[$(class_of!($class)),*];

        impl Instr {
            /// The instruction's class.
            #[inline]
            pub fn class(&self) -> Class {
                match self { $( Instr::$Camel { .. } => class_of!($class), )* }
            }

            /// The buffer an elementwise instruction computes over: its first destination,
            /// whose length is the loop's (every destination has it). `None` for the other
            /// classes.
            #[inline]
            #[allow(unused_variables)]
            pub fn elementwise_dest(&self) -> Option<Buf> {
                match self {
                    $( Instr::$Camel { $($wr,)* .. } => elementwise_dest!($class; $($wr),*), )*
                }
            }
        }
    };
}

crate::for_each_op!(define_classes);

impl Instr {
    /// True for the instructions that draw dealer material.
    #[inline]
    pub fn is_dealer(&self) -> bool {
        self.class() == Class::Dealer
    }

    /// True for the instructions that put data on the wire (completed by the next
    /// `exchange`).
    #[inline]
    pub fn is_comm(&self) -> bool {
        self.class() == Class::Comm
    }
}
