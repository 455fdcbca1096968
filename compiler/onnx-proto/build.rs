//! Generates the ONNX protobuf types with prost from the vendored `proto/onnx.proto`.
//!
//! protox compiles the schema in pure Rust, so no `protoc` binary is needed on the build machine.
fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds =
        protox::compile(["proto/onnx.proto"], ["proto"]).expect("vendored onnx.proto compiles");
    prost_build::Config::new().compile_fds(fds).expect("prost generates Rust for onnx.proto");
}
