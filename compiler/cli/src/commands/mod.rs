//! One module per subcommand.

pub mod bench;
pub mod calibrate;
pub mod compile;
pub mod connect;
pub mod cost;
pub mod dealer;
pub mod demo;
pub mod eval;
pub mod export;
pub mod generate;
pub mod inspect;
pub mod keygen;
pub mod load;
pub mod run;
pub mod serve;
pub mod stdlib;
