//! The files of a compiled model, split by who may see them.
//!
//! `model.vbc` — the program: public, held by client, server and dealer.
//! `model.client` — the client's part: its plaintext graph over public data (no weight of the
//! server's), bound to the program by its hash.
//! `model.server.safetensors` — the server's weights as the program declares them, bound to the
//! program by its hash in the safetensors metadata. Never given to the client.
//!
//! All three are written under temporary names and renamed at the end, so a failed compile
//! leaves nothing half-written.

use super::{ClientPart, Compiled};
use crate::file_error::FileError;
use crate::ir::Tensor;
use crate::weights::{write_safetensors_with, SafetensorsSource};
use std::path::{Path, PathBuf};
use veil_isa::Program;

const CLIENT_MAGIC: &[u8; 8] = b"VEILCLT\0";
const CLIENT_VERSION: u32 = 1;
/// The safetensors metadata key of the server's file that holds the program's SHA-256 (hex).
pub const HASH_KEY: &str = "veil_program_sha256";

/// Why an artifact could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The file could not be read or written, or is damaged.
    #[error(transparent)]
    File(#[from] FileError),
    /// The file belongs to another program.
    #[error("{path} was compiled with another program than {program} (program hash {want}, file says {got}); use the files of one `veil compile`")]
    Mismatch {
        /// File.
        path: String,
        /// The program file.
        program: String,
        /// Hash of the program.
        want: String,
        /// Hash the file records.
        got: String,
    },
}

/// The three paths of a compiled model named by its program path.
#[derive(Clone, Debug)]
pub struct Paths {
    /// The program (`.vbc`).
    pub program: PathBuf,
    /// The client's part.
    pub client: PathBuf,
    /// The server's weights.
    pub server: PathBuf,
}

/// `model.vbc` → `model.vbc`, `model.client`, `model.server.safetensors`.
pub fn paths(program: &Path) -> Paths {
    Paths {
        program: program.to_path_buf(),
        client: program.with_extension("client"),
        server: program.with_extension("server.safetensors"),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| FileError::io(path)(source).into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn partial(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// Writes the three files of `c` for program path `out`.
pub fn write(c: &Compiled, out: &Path) -> Result<Paths, ArtifactError> {
    let p = paths(out);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = [partial(&p.program), partial(&p.client), partial(&p.server)];
    let result = (|| {
        std::fs::write(&tmp[0], c.program.to_bytes()).map_err(io(&tmp[0]))?;
        std::fs::write(&tmp[1], client_bytes(&c.client)).map_err(io(&tmp[1]))?;
        let meta = [(HASH_KEY.to_string(), hex(&c.program.hash()))].into_iter().collect();
        write_safetensors_with(&tmp[2], &c.server_weights, Some(meta))?;
        // write_safetensors_with renames its own temporary into tmp[2].
        for (t, f) in tmp.iter().zip([&p.program, &p.client, &p.server]) {
            std::fs::rename(t, f).map_err(io(f))?;
        }
        Ok(())
    })();
    if result.is_err() {
        for t in &tmp {
            let _ = std::fs::remove_file(t);
        }
    }
    result.map(|()| p)
}

fn client_bytes(c: &ClientPart) -> Vec<u8> {
    let mut out = CLIENT_MAGIC.to_vec();
    out.extend_from_slice(&CLIENT_VERSION.to_le_bytes());
    out.extend(postcard::to_stdvec(c).expect("the client part serialises"));
    out
}

/// Reads a program file.
pub fn read_program(path: &Path) -> Result<Program, ArtifactError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    Program::from_bytes(&bytes).map_err(|e| FileError::format(path, e).into())
}

/// Reads the client's part and checks that it belongs to `program`.
pub fn read_client(
    path: &Path,
    program: &Program,
    program_path: &Path,
) -> Result<ClientPart, ArtifactError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    parse_client(&bytes, path, program, program_path)
}

/// The client's part from the bytes of the file `path`, checked against `program`.
pub fn parse_client(
    bytes: &[u8],
    path: &Path,
    program: &Program,
    program_path: &Path,
) -> Result<ClientPart, ArtifactError> {
    let c = decode_client(bytes, path)?;
    check_client(&c, path, program, program_path)?;
    Ok(c)
}

/// Decodes the bytes of the client file `path` (header and encoding) without checking the
/// part against a program.
pub fn decode_client(bytes: &[u8], path: &Path) -> Result<ClientPart, ArtifactError> {
    let fmt = |msg: String| ArtifactError::from(FileError::format(path, msg));
    if bytes.len() < 12 || &bytes[..8] != CLIENT_MAGIC {
        return Err(
            fmt("not a veil client file (written by `veil compile` as NAME.client)".into()),
        );
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != CLIENT_VERSION {
        return Err(fmt(format!(
            "client file format version {version}, this veil reads {CLIENT_VERSION}"
        )));
    }
    let (c, rest): (ClientPart, _) =
        postcard::take_from_bytes(&bytes[12..]).map_err(|e| fmt(format!("damaged: {e}")))?;
    if !rest.is_empty() {
        return Err(fmt(format!("damaged: the client part ends {} bytes early", rest.len())));
    }
    Ok(c)
}

/// Checks a decoded client part against `program`: the program hash it records, and its
/// graph (the same verification as a graph the compiler built).
pub fn check_client(
    c: &ClientPart,
    path: &Path,
    program: &Program,
    program_path: &Path,
) -> Result<(), ArtifactError> {
    if c.program_hash != program.hash() {
        return Err(ArtifactError::Mismatch {
            path: path.display().to_string(),
            program: program_path.display().to_string(),
            want: hex(&program.hash()),
            got: hex(&c.program_hash),
        });
    }
    // Verification multiplies the declared shapes: each must have a countable size first.
    let huge = c.graph.values.values().find(|d| crate::frontend::elements(&d.ty.shape).is_none());
    if let Some(d) = huge {
        let msg = format!(
            "invalid graph: value `{}` of shape {:?} has more elements than a tensor can hold",
            d.name, d.ty.shape
        );
        return Err(FileError::format(path, msg).into());
    }
    crate::ir::verify::verify(&c.graph)
        .map_err(|e| FileError::format(path, format!("invalid graph: {e:?}")))?;
    Ok(())
}

/// Reads the server's weights and checks that they belong to `program`.
pub fn read_server(
    path: &Path,
    program: &Program,
    program_path: &Path,
) -> Result<Vec<(String, Tensor)>, ArtifactError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    parse_server(bytes, path, program, program_path)
}

/// The server's weights of `program` from the file `path` one at a time, each handed to `f`
/// and its pages released before the next is read (a server loads its weights without
/// holding the file or a second copy of them). An error of `f` becomes a format error naming
/// the file and the weight.
pub fn each_server_weight<E: std::fmt::Display>(
    path: &Path,
    program: &Program,
    program_path: &Path,
    mut f: impl FnMut(&str, Tensor) -> Result<(), E>,
) -> Result<(), ArtifactError> {
    let fmt = |msg: String| ArtifactError::from(FileError::format(path, msg));
    let src = SafetensorsSource::open_mapped(path)?;
    check_program_hash(&src, path, program, program_path)?;
    for w in &program.weights {
        if w.party != veil_isa::Party::Server {
            continue;
        }
        let t = src.tensor(&w.name).map_err(|m| fmt(format!("weight `{}`: {m}", w.name)))?;
        src.release(&w.name);
        f(&w.name, t).map_err(|m| fmt(format!("weight `{}`: {m}", w.name)))?;
    }
    Ok(())
}

/// Refuses a server weight file `path` written for another program than `program`.
fn check_program_hash(
    src: &SafetensorsSource,
    path: &Path,
    program: &Program,
    program_path: &Path,
) -> Result<(), ArtifactError> {
    let got = src.metadata().get(HASH_KEY).cloned().unwrap_or_default();
    let want = hex(&program.hash());
    if got != want {
        return Err(ArtifactError::Mismatch {
            path: path.display().to_string(),
            program: program_path.display().to_string(),
            want,
            got: if got.is_empty() { "nothing".into() } else { got },
        });
    }
    Ok(())
}

/// The server's weights from the bytes of the file `path`, checked against `program`.
pub fn parse_server(
    bytes: Vec<u8>,
    path: &Path,
    program: &Program,
    program_path: &Path,
) -> Result<Vec<(String, Tensor)>, ArtifactError> {
    let fmt = |msg: String| ArtifactError::from(FileError::format(path, msg));
    let src = SafetensorsSource::from_bytes(bytes, path.display().to_string())?;
    check_program_hash(&src, path, program, program_path)?;
    let mut out = Vec::new();
    for w in &program.weights {
        if w.party != veil_isa::Party::Server {
            continue;
        }
        let t = src.tensor(&w.name).map_err(|m| fmt(format!("weight `{}`: {m}", w.name)))?;
        out.push((w.name.clone(), t));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Graph;

    fn part(program: &Program) -> ClientPart {
        ClientPart {
            program_hash: program.hash(),
            graph: Graph::new("client"),
            feeds: vec![],
            outputs: vec![],
            mask_value: -64.0,
        }
    }

    #[test]
    fn a_client_file_is_decoded_checked_and_refused_when_longer_than_its_part() {
        let p = Program { frac_bits: 16, ..Program::default() };
        let (path, prog) = (Path::new("m.client"), Path::new("m.vbc"));
        let mut bytes = client_bytes(&part(&p));
        parse_client(&bytes, path, &p, prog).unwrap();
        let other = Program { frac_bits: 12, ..Program::default() };
        let e = parse_client(&bytes, path, &other, prog).unwrap_err();
        assert!(matches!(e, ArtifactError::Mismatch { .. }), "{e}");
        // Trailing bytes were ignored before.
        bytes.push(0);
        let e = parse_client(&bytes, path, &p, prog).unwrap_err().to_string();
        assert_eq!(e, "m.client: damaged: the client part ends 1 bytes early");
    }

    /// The error of a client part whose graph has the inputs `inputs` and one node `op` on
    /// them, its result declared `[1]`: `op` and the shapes come from the file, unchecked.
    fn graph_error(inputs: &[(DType, Vec<usize>)], op: Op) -> String {
        let p = Program { frac_bits: 16, ..Program::default() };
        let mut c = part(&p);
        let args: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(i, (dt, s))| {
                c.graph.add_input(&format!("x{i}"), TensorType::new(*dt, s.clone()))
            })
            .collect();
        let one = c.graph.add_input("one", TensorType::new(DType::F32, vec![1]));
        let y = c.graph.add_node("n", Op::Reshape { shape: vec![1] }, &[one], "y").unwrap();
        let n = c.graph.order[0];
        c.graph.nodes[n].op = op;
        c.graph.nodes[n].args = args;
        c.graph.outputs.push(y);
        check_client(&c, Path::new("m.client"), &p, Path::new("m.vbc")).unwrap_err().to_string()
    }

    use crate::ir::{DType, Op, TensorType};
    const G32: usize = 1 << 32;

    #[test]
    fn a_client_value_whose_size_overflows_is_invalid() {
        // 2^32 · 2^32 · 2 elements: verification multiplied them.
        let e = graph_error(&[(DType::F32, vec![G32, G32, 2])], Op::Neg);
        assert_eq!(
            e,
            "m.client: invalid graph: value `x0` of shape [4294967296, 4294967296, 2] has more \
             elements than a tensor can hold"
        );
    }

    #[test]
    fn a_client_reshape_to_a_size_that_overflows_is_invalid() {
        let e = graph_error(&[(DType::F32, vec![4])], Op::Reshape { shape: vec![G32, G32, 0] });
        assert!(
            e.contains("reshape to [4294967296,4294967296,0]: the element count overflows"),
            "{e}"
        );
    }

    #[test]
    fn a_client_slice_whose_step_wraps_is_invalid() {
        let op = Op::Slice { start: vec![0], step: vec![i64::MAX], len: vec![3] };
        let e = graph_error(&[(DType::F32, vec![4])], op);
        assert!(e.contains("reads out of range"), "{e}");
    }

    #[test]
    fn a_client_concat_whose_dimension_overflows_is_invalid() {
        let big = (DType::F32, vec![usize::MAX - 1]);
        let e = graph_error(&[big.clone(), big], Op::Concat { axis: 0 });
        assert!(e.contains("concat on axis 0: the dimension overflows"), "{e}");
    }

    #[test]
    fn a_client_gather_nd_whose_tuple_length_overflows_is_invalid() {
        let (data, idx) = ((DType::F32, vec![0, 2]), (DType::I64, vec![0, usize::MAX]));
        let e = graph_error(&[data, idx], Op::GatherND { batch_dims: 1 });
        assert!(e.contains("gather_nd index tuples of length 18446744073709551615"), "{e}");
    }

    #[test]
    fn a_server_file_names_itself_once_in_errors() {
        let p = Program { frac_bits: 16, ..Program::default() };
        let e = parse_server(
            b"junk".to_vec(),
            Path::new("m.server.safetensors"),
            &p,
            Path::new("m.vbc"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("m.server.safetensors: ") && e.matches("m.server").count() == 1,
            "{e}"
        );
    }
}
