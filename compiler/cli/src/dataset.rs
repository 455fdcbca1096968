//! `--dataset DIR` on `veil eval` and `veil run`: a directory of samples with optional labels,
//! and the task metric a user decides on — how often the two-party prediction equals the
//! plaintext one, and the accuracy on the labels — rather than one output's max error.
//!
//! The format: DIR holds one subdirectory per sample (its name is the sample's name, in name
//! order), each with one `<input name>.npy` per model input, as `veil connect --inputs` reads
//! them (a DIR with no subdirectory is one sample). Labels, when there are any, are in
//! `DIR/labels.txt`: one `<sample name> <class id>` per line, `#` starting a comment; every
//! sample then needs one.

use crate::model::Given;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use veil_compiler::ir::{Graph, Tensor};

/// The labels file of a dataset directory.
pub const LABELS: &str = "labels.txt";

/// Files a user may reasonably have written labels to, which veil does not read: named in the
/// error, so a label file is never silently ignored.
const OTHER_LABEL_FILES: [&str; 4] = ["labels.json", "labels.csv", "label.npy", "label.txt"];

/// How many disagreeing or misclassified samples the summary names (all are in the JSON).
const LISTED: usize = 10;

/// The `--dataset` flags of `veil eval` and `veil run`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DatasetArgs {
    /// Run every sample of DIR: one subdirectory per sample holding `<input name>.npy` files
    /// (or DIR itself holding one sample); optional labels in DIR/labels.txt, one
    /// `<sample name> <class id>` per line. Prints agreement, accuracy and max error.
    #[arg(long, value_name = "DIR", conflicts_with = "inputs")]
    pub dataset: Option<PathBuf>,
    /// How outputs are compared: `classify` by the argmax of the last axis (a classifier's
    /// class, an LM's token), `embed` by cosine similarity. Default: classify when the dataset
    /// has labels or the output's last axis has at most 100 entries (class logits) or at least
    /// 10000 (a vocabulary); embed otherwise.
    #[arg(long, value_enum, requires = "dataset")]
    pub task: Option<Task>,
    /// The output the task reads (default: the model's first).
    #[arg(long, value_name = "NAME", requires = "dataset")]
    pub task_output: Option<String>,
    /// Write the summary and every sample's result to FILE as JSON (written whole or not at
    /// all: a temporary file renamed into place).
    #[arg(long, value_name = "FILE.json", requires = "dataset")]
    pub report_json: Option<PathBuf>,
}

/// How a sample's outputs are compared.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// The argmax of the output's last axis: a class, or a token per position.
    Classify,
    /// Cosine similarity of the whole output (sentence embeddings, hidden states).
    Embed,
}

impl Task {
    /// The name used in the report.
    pub fn label(self) -> &'static str {
        match self {
            Task::Classify => "classify",
            Task::Embed => "embed",
        }
    }

    /// The task `given`, or the one the output's shape suggests, with why.
    pub fn choose(given: Option<Task>, labelled: bool, shape: &[usize]) -> (Task, &'static str) {
        if let Some(t) = given {
            return (t, "--task");
        }
        let last = shape.last().copied().unwrap_or(1);
        if labelled {
            (Task::Classify, "the dataset has labels")
        } else if last <= 100 {
            (Task::Classify, "at most 100 entries on the last axis: class logits")
        } else if last >= 10_000 {
            (Task::Classify, "at least 10000 entries on the last axis: a vocabulary")
        } else {
            (Task::Embed, "no labels and a last axis of 101–9999 entries: an embedding")
        }
    }
}

/// A dataset directory: its samples and labels, checked before anything runs.
pub struct Dataset {
    /// The directory given.
    pub dir: PathBuf,
    /// Each sample's name and directory, in name order.
    pub samples: Vec<(String, PathBuf)>,
    /// Each sample's class and the line of labels.txt it is on, when the dataset has labels.
    pub labels: Option<Vec<(usize, usize)>>,
}

impl Dataset {
    /// Lists the samples of `dir` and reads its labels.
    pub fn open(dir: &Path) -> Result<Dataset> {
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("reading the dataset directory {}", dir.display()))?;
        let mut samples = Vec::new();
        for e in entries {
            let e =
                e.with_context(|| format!("reading the dataset directory {}", dir.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() && !name.starts_with('.') {
                samples.push((name, e.path()));
            }
        }
        samples.sort();
        if samples.is_empty() {
            let name = dir
                .canonicalize()
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| dir.display().to_string());
            samples.push((name, dir.to_path_buf()));
        }
        let labels = read_labels(dir, &samples)?;
        Ok(Dataset { dir: dir.to_path_buf(), samples, labels })
    }

    /// The first sample's `.npy` files by name, for binding an export's symbolic dimensions
    /// from the shapes of its inputs (every sample must then have those shapes).
    pub fn first_given(&self) -> Result<Given> {
        let (_, d) = &self.samples[0];
        let mut given = Vec::new();
        let entries = std::fs::read_dir(d).with_context(|| format!("reading {}", d.display()))?;
        for e in entries {
            let p = e.with_context(|| format!("reading {}", d.display()))?.path();
            if p.extension().and_then(|x| x.to_str()) == Some("npy") {
                let name = p.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                let t = veil_compiler::npy::read(&p).with_context(|| format!("reading {name}"));
                given.push((name, p, t));
            }
        }
        Ok(given)
    }

    /// Every sample's inputs, each checked against `g`'s inputs (dtype and shape).
    pub fn read(&self, g: &Graph) -> Result<Vec<HashMap<String, Tensor>>> {
        self.samples
            .iter()
            .map(|(name, d)| {
                crate::model::sample_from(g, d)
                    .with_context(|| format!("dataset {}: sample `{name}`", self.dir.display()))
            })
            .collect()
    }

    /// Checks every label against the number of classes of the task's output.
    pub fn check_classes(&self, output: &str, classes: usize) -> Result<()> {
        let Some(labels) = &self.labels else { return Ok(()) };
        for ((name, _), &(class, line)) in self.samples.iter().zip(labels) {
            if class >= classes {
                bail!(
                    "{} line {line}: sample `{name}` has class {class}, but the output `{output}` has {classes} classes (0–{})",
                    self.dir.join(LABELS).display(),
                    classes.saturating_sub(1)
                );
            }
        }
        Ok(())
    }

    /// The label of sample `k`.
    pub fn label(&self, k: usize) -> Option<usize> {
        self.labels.as_ref().map(|l| l[k].0)
    }
}

/// Reads `dir/labels.txt` against the samples: one line per sample, no unknown or repeated
/// name. A label file of another format is refused by name rather than ignored.
fn read_labels(dir: &Path, samples: &[(String, PathBuf)]) -> Result<Option<Vec<(usize, usize)>>> {
    let path = dir.join(LABELS);
    let expected = "one `<sample name> <class id>` per line (class id a whole number from 0)";
    if !path.exists() {
        let mut places = vec![dir.to_path_buf()];
        places.extend(samples.iter().map(|(_, d)| d.clone()));
        for d in places {
            for f in OTHER_LABEL_FILES {
                if d.join(f).exists() {
                    bail!(
                        "{}: veil reads labels from {} only, {expected}",
                        d.join(f).display(),
                        path.display()
                    );
                }
            }
        }
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} ({expected})", path.display()))?;
    let index: HashMap<&str, usize> =
        samples.iter().enumerate().map(|(i, (n, _))| (n.as_str(), i)).collect();
    let mut labels: Vec<Option<(usize, usize)>> = vec![None; samples.len()];
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let words: Vec<&str> = content.split_whitespace().collect();
        let (name, class) = match words.as_slice() {
            [n, c] => match c.parse::<usize>() {
                Ok(c) => (*n, c),
                Err(_) => bail!(
                    "{} line {line}: `{c}` is not a class id; expected {expected}",
                    path.display()
                ),
            },
            _ => bail!("{} line {line}: `{content}`; expected {expected}", path.display()),
        };
        let Some(&k) = index.get(name) else {
            bail!(
                "{} line {line}: no sample `{name}` in {} (a sample is a subdirectory)",
                path.display(),
                dir.display()
            );
        };
        if let Some((_, first)) = labels[k] {
            bail!(
                "{} line {line}: sample `{name}` is labelled twice (also line {first})",
                path.display()
            );
        }
        labels[k] = Some((class, line));
    }
    let mut out = Vec::with_capacity(samples.len());
    for ((name, _), l) in samples.iter().zip(labels) {
        match l {
            Some(l) => out.push(l),
            None => bail!(
                "{}: no label for sample `{name}` (every sample needs a line `{name} <class id>`)",
                path.display()
            ),
        }
    }
    Ok(Some(out))
}

/// The class of every row of `t`: the argmax over its last axis (the first maximum wins; NaN
/// never wins).
pub fn argmax_rows(t: &Tensor) -> Vec<usize> {
    let v = t.to_f64_vec();
    let n = t.shape.last().copied().unwrap_or(1).max(1);
    v.chunks(n)
        .map(|row| {
            (0..row.len()).fold(0, |m, i| if row[i] > row[m] || row[m].is_nan() { i } else { m })
        })
        .collect()
}

/// Cosine similarity of two tensors as flat vectors (1 for two zero vectors).
pub fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na == 0.0 && nb == 0.0 {
        return 1.0;
    }
    dot / (na * nb).max(1e-300)
}

/// One sample's result.
#[derive(serde::Serialize)]
pub struct Row {
    /// The sample's name.
    pub name: String,
    /// Its class, when labelled.
    pub label: Option<usize>,
    /// The plaintext prediction (classify): the argmax of the output's last row.
    pub plaintext: Option<usize>,
    /// The two-party prediction (classify).
    pub two_party: Option<usize>,
    /// Rows of the output (positions, for an LM) whose argmax agree, of `rows`.
    pub rows_agreeing: Option<usize>,
    /// Rows of the output.
    pub rows: usize,
    /// Cosine similarity of the two-party output with the plaintext one (embed).
    pub cosine: Option<f64>,
    /// Max abs error of the two-party output against the plaintext one.
    pub max_abs_error: Option<f64>,
    /// Max |plaintext output|.
    pub max_abs_reference: Option<f64>,
}

impl Row {
    /// The result of one sample from its plaintext and two-party outputs (either may be
    /// absent: `eval` has no two-party run, `run` may have no plaintext model).
    pub fn new(
        task: Task,
        name: &str,
        label: Option<usize>,
        plain: Option<&Tensor>,
        mpc: Option<&Tensor>,
    ) -> Row {
        let (pr, mr) = match task {
            Task::Classify => (plain.map(argmax_rows), mpc.map(argmax_rows)),
            Task::Embed => (None, None),
        };
        let rows = plain.or(mpc).map_or(0, |t| {
            let last = t.shape.last().copied().unwrap_or(1).max(1);
            t.numel() / last
        });
        let (err, max_ref) = match (plain, mpc) {
            (Some(p), Some(m)) => {
                let (e, r) = crate::outcome::max_err(m, p);
                (Some(e), Some(r))
            }
            _ => (None, None),
        };
        Row {
            name: name.to_string(),
            label,
            plaintext: pr.as_ref().and_then(|r| r.last().copied()),
            two_party: mr.as_ref().and_then(|r| r.last().copied()),
            rows_agreeing: match (&pr, &mr) {
                (Some(p), Some(m)) => Some(p.iter().zip(m).filter(|(a, b)| a == b).count()),
                _ => None,
            },
            rows,
            cosine: match (task, plain, mpc) {
                (Task::Embed, Some(p), Some(m)) => Some(cosine(m, p)),
                _ => None,
            },
            max_abs_error: err,
            max_abs_reference: max_ref,
        }
    }
}

/// A count out of a total, as the summary prints and the JSON holds it.
#[derive(serde::Serialize, Clone, Copy)]
pub struct Rate {
    /// How many.
    pub count: usize,
    /// Out of.
    pub of: usize,
    /// count / of.
    pub rate: f64,
}

impl Rate {
    fn new(count: usize, of: usize) -> Option<Rate> {
        (of > 0).then(|| Rate { count, of, rate: count as f64 / of as f64 })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} ({:.1}%)", self.count, self.of, 100.0 * self.rate)
    }
}

/// The metrics over every sample.
#[derive(serde::Serialize)]
pub struct Summary {
    /// Samples whose two-party prediction equals the plaintext one (classify).
    pub agreement: Option<Rate>,
    /// Output rows (positions) whose argmaxes agree (classify; equals `agreement` for a
    /// one-row classifier output).
    pub row_agreement: Option<Rate>,
    /// Two-party predictions equal to the label.
    pub accuracy_two_party: Option<Rate>,
    /// Plaintext predictions equal to the label.
    pub accuracy_plaintext: Option<Rate>,
    /// Mean cosine similarity of two-party and plaintext outputs (embed).
    pub cosine_mean: Option<f64>,
    /// Least cosine similarity over the samples (embed).
    pub cosine_min: Option<f64>,
    /// Max abs error over every sample.
    pub max_abs_error: Option<f64>,
    /// Max |plaintext output| over every sample.
    pub max_abs_reference: Option<f64>,
}

impl Summary {
    /// Tallies the rows.
    pub fn of(rows: &[Row]) -> Summary {
        let both: Vec<&Row> =
            rows.iter().filter(|r| r.plaintext.is_some() && r.two_party.is_some()).collect();
        let agree = both.iter().filter(|r| r.plaintext == r.two_party).count();
        let row_of: usize = rows.iter().filter(|r| r.rows_agreeing.is_some()).map(|r| r.rows).sum();
        let row_agree: usize = rows.iter().filter_map(|r| r.rows_agreeing).sum();
        let acc = |pred: fn(&Row) -> Option<usize>| {
            let labelled: Vec<&Row> =
                rows.iter().filter(|r| r.label.is_some() && pred(r).is_some()).collect();
            Rate::new(labelled.iter().filter(|r| pred(r) == r.label).count(), labelled.len())
        };
        let cos: Vec<f64> = rows.iter().filter_map(|r| r.cosine).collect();
        let max = |f: fn(&Row) -> Option<f64>| rows.iter().filter_map(f).reduce(f64::max);
        Summary {
            agreement: Rate::new(agree, both.len()),
            row_agreement: Rate::new(row_agree, row_of),
            accuracy_two_party: acc(|r| r.two_party),
            accuracy_plaintext: acc(|r| r.plaintext),
            cosine_mean: (!cos.is_empty()).then(|| cos.iter().sum::<f64>() / cos.len() as f64),
            cosine_min: cos.iter().copied().reduce(f64::min),
            max_abs_error: max(|r| r.max_abs_error),
            max_abs_reference: max(|r| r.max_abs_reference),
        }
    }

    /// Prints the summary, naming the first disagreeing and misclassified samples.
    pub fn print(&self, rows: &[Row]) {
        if let Some(a) = self.agreement {
            println!("agreement (two-party prediction = plaintext prediction): {a}");
            if let Some(r) = self.row_agreement.filter(|r| r.of != a.of) {
                println!("  over every position of the output: {r}");
            }
        }
        match (self.accuracy_two_party, self.accuracy_plaintext) {
            (Some(m), Some(p)) => {
                println!("accuracy against the labels: two-party {m}, plaintext {p}")
            }
            (None, Some(p)) => println!("accuracy against the labels (plaintext): {p}"),
            (Some(m), None) => println!("accuracy against the labels (two-party): {m}"),
            (None, None) => {}
        }
        if let (Some(mean), Some(min)) = (self.cosine_mean, self.cosine_min) {
            println!("cosine similarity to the plaintext output: mean {mean:.6}, least {min:.6}");
        }
        if let (Some(e), Some(m)) = (self.max_abs_error, self.max_abs_reference) {
            println!(
                "max abs error vs plaintext, over every sample: {e:.3e} ({:.2e} of max |y| = {m:.3})",
                e / m.max(1e-30)
            );
        }
        let show = |what: &str, r: &Row| {
            let mut parts = Vec::new();
            if let Some(m) = r.two_party {
                parts.push(format!("two-party {m}"));
            }
            if let Some(p) = r.plaintext {
                parts.push(format!("plaintext {p}"));
            }
            if let Some(l) = r.label {
                parts.push(format!("label {l}"));
            }
            println!("  {what} `{}`: {}", r.name, parts.join(", "));
        };
        let disagree: Vec<&Row> = rows
            .iter()
            .filter(|r| {
                r.two_party.is_some() && r.plaintext.is_some() && r.two_party != r.plaintext
            })
            .collect();
        for r in disagree.iter().take(LISTED) {
            show("disagrees", r);
        }
        let wrong: Vec<&Row> = rows
            .iter()
            .filter(|r| r.label.is_some() && r.two_party.or(r.plaintext) != r.label)
            .collect();
        for r in wrong.iter().take(LISTED) {
            show("misclassified", r);
        }
        let more = disagree.len().saturating_sub(LISTED) + wrong.len().saturating_sub(LISTED);
        if more > 0 {
            println!("  ({more} more: every sample is in --report-json)");
        }
    }
}

/// What the report says about where the numbers come from.
pub struct Source<'a> {
    /// `eval` or `run`.
    pub command: &'a str,
    /// The model or program file.
    pub file: &'a Path,
    /// The dataset.
    pub dataset: &'a Dataset,
    /// The task and why it was chosen.
    pub task: (Task, &'a str),
    /// The output the task reads.
    pub output: &'a str,
}

impl Source<'_> {
    /// The line that opens the report.
    pub fn print_header(&self, shape: Option<&[usize]>) {
        let d = self.dataset;
        let (task, why) = self.task;
        let how = match task {
            Task::Classify => "argmax of the last axis",
            Task::Embed => "cosine similarity",
        };
        println!(
            "dataset {}: {} sample(s), {}; task: {} ({how}; {why}) on output `{}`{}",
            d.dir.display(),
            d.samples.len(),
            if d.labels.is_some() { format!("labelled ({LABELS})") } else { "no labels".into() },
            task.label(),
            self.output,
            shape.map(|s| format!(" {s:?}")).unwrap_or_default()
        );
    }

    /// Writes the JSON report to `path` whole or not at all.
    pub fn write_json(
        &self,
        path: &Path,
        summary: &Summary,
        rows: &[Row],
        extra: serde_json::Value,
    ) -> Result<()> {
        let j = serde_json::json!({
            "command": self.command,
            "model": self.file.display().to_string(),
            "dataset": self.dataset.dir.display().to_string(),
            "samples": self.dataset.samples.len(),
            "labelled": self.dataset.labels.is_some(),
            "task": self.task.0.label(),
            "output": self.output,
            "summary": summary,
            "run": extra,
            "per_sample": rows,
        });
        let text = serde_json::to_string_pretty(&j).context("encoding the JSON report")? + "\n";
        write_atomically(path, text.as_bytes())
    }
}

/// Writes `bytes` to a temporary file next to `path` and renames it into place, so a reader
/// never sees half a report and a failed run leaves none.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file}.{}.partial", std::process::id()));
    let r = std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing {}", path.display()));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Which output the task reads: `--task-output`, or the first.
pub fn output_index(names: &[String], given: Option<&str>) -> Result<usize> {
    match given {
        None => Ok(0),
        Some(n) => names.iter().position(|x| x == n).with_context(|| {
            format!(
                "--task-output {n}: the model has no such output (outputs: {})",
                names.join(", ")
            )
        }),
    }
}

/// A progress bar over the samples on stderr; hidden when stderr is not a terminal.
pub fn progress(n: usize) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(n as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("samples [{bar:40}] {pos}/{len} {elapsed}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_per_row_first_maximum_and_never_nan() {
        let t = Tensor::f32([3, 3], vec![1.0, 3.0, 3.0, f32::NAN, 0.0, -1.0, -2.0, -1.0, -3.0]);
        assert_eq!(argmax_rows(&t), vec![1, 1, 1]);
    }

    #[test]
    fn the_default_task_follows_labels_then_the_last_axis() {
        assert_eq!(Task::choose(None, true, &[1, 768]).0, Task::Classify);
        assert_eq!(Task::choose(None, false, &[1, 4]).0, Task::Classify);
        assert_eq!(Task::choose(None, false, &[1, 8, 50257]).0, Task::Classify);
        assert_eq!(Task::choose(None, false, &[1, 384]).0, Task::Embed);
        assert_eq!(Task::choose(Some(Task::Embed), true, &[1, 4]).0, Task::Embed);
    }

    #[test]
    fn cosine_of_parallel_and_opposite_vectors() {
        let a = Tensor::f32([2], vec![1.0, 2.0]);
        assert!((cosine(&a, &Tensor::f32([2], vec![2.0, 4.0])) - 1.0).abs() < 1e-12);
        assert!((cosine(&a, &Tensor::f32([2], vec![-1.0, -2.0])) + 1.0).abs() < 1e-12);
    }
}
