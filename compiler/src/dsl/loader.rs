//! Source files, imports, and the global names they define.

use crate::dsl::ast::*;
use crate::dsl::error::{at, DslError};
use crate::dsl::lower::Val;
use crate::dsl::parse::parse;
use std::collections::HashMap;

/// The modules `import` can name: `(name, source)`.
pub type Modules = &'static [(&'static str, &'static str)];

/// Loaded files and their global names.
pub struct Loader {
    files: Vec<(String, String)>,
    modules: Vec<Module>,
    fns: HashMap<String, (usize, usize)>,
    models: HashMap<String, (usize, usize)>,
    consts: HashMap<String, Val>,
    loaded: HashMap<String, usize>,
    importable: Modules,
    overrides: HashMap<String, f64>,
}

impl Loader {
    /// An empty loader resolving `import name;` among `modules`.
    pub fn new(modules: Modules) -> Loader {
        Loader {
            files: Vec::new(),
            modules: Vec::new(),
            fns: HashMap::new(),
            models: HashMap::new(),
            consts: HashMap::new(),
            loaded: HashMap::new(),
            importable: modules,
            overrides: HashMap::new(),
        }
    }

    /// Gives the constant `name` the value `v` in files loaded afterwards, whatever they define
    /// it as (`--dim S=512` runs a model written for 128 tokens on 512).
    pub fn override_const(&mut self, name: &str, v: f64) {
        self.overrides.insert(name.to_string(), v);
    }

    /// Overridden constants that no loaded file defines (a misspelt `--dim`).
    pub fn unused_overrides(&self) -> Vec<String> {
        let mut v: Vec<String> =
            self.overrides.keys().filter(|k| !self.consts.contains_key(*k)).cloned().collect();
        v.sort();
        v
    }

    /// Loads a file from disk.
    pub fn load_path(&mut self, path: &str) -> Result<usize, DslError> {
        let src = std::fs::read_to_string(path)
            .map_err(|e| DslError::Io { path: path.into(), error: e })?;
        self.load_source(path, src)
    }

    /// Loads source text under a display path, then its imports.
    pub fn load_source(&mut self, path: &str, src: String) -> Result<usize, DslError> {
        let idx = self.files.len();
        let m = parse(&src, idx, path)?;
        self.files.push((path.to_string(), src));
        self.modules.push(m.clone());
        for (i, item) in m.items.iter().enumerate() {
            match item {
                Item::Import(parts, span) => {
                    let name = parts.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(".");
                    if self.loaded.contains_key(&name) {
                        continue;
                    }
                    let found = self.importable.iter().find(|(n, _)| *n == name).map(|(_, s)| *s);
                    let Some(src) = found else {
                        let known: Vec<&str> = self.importable.iter().map(|(n, _)| *n).collect();
                        return Err(self.err(
                            *span,
                            format!("no module `{name}` (modules: {})", known.join(", ")),
                        ));
                    };
                    let f = self.load_source(&format!("stdlib/{name}.veil"), src.to_string())?;
                    self.loaded.insert(name, f);
                }
                Item::Fn(f) => self.define(&f.name, idx, i, true)?,
                Item::Model(m) => self.define(&m.name, idx, i, false)?,
                Item::Const(name, e) => {
                    if self.consts.contains_key(&name.name) {
                        return Err(self
                            .err(name.span, format!("constant `{}` is defined twice", name.name)));
                    }
                    let v = match self.overrides.get(&name.name) {
                        Some(&x) => Val::Num(x),
                        None => self.const_eval(e)?,
                    };
                    self.consts.insert(name.name.clone(), v);
                }
            }
        }
        Ok(idx)
    }

    fn define(
        &mut self,
        name: &Ident,
        file: usize,
        item: usize,
        is_fn: bool,
    ) -> Result<(), DslError> {
        if self.fns.contains_key(&name.name) || self.models.contains_key(&name.name) {
            return Err(self.err(name.span, format!("`{}` is defined twice", name.name)));
        }
        if is_fn && crate::dsl::builtins::is_builtin(&name.name) {
            return Err(self
                .err(name.span, format!("`{}` is a builtin and cannot be redefined", name.name)));
        }
        let map = if is_fn { &mut self.fns } else { &mut self.models };
        map.insert(name.name.clone(), (file, item));
        Ok(())
    }

    fn err(&self, s: Span, msg: impl Into<String>) -> DslError {
        let (path, src) = self.file(s.file);
        at(path, src, s.start, s.end, msg)
    }

    /// `(path, source)` of a loaded file.
    pub fn file(&self, i: usize) -> (&str, &str) {
        self.files.get(i).map(|(p, s)| (p.as_str(), s.as_str())).unwrap_or(("?", ""))
    }

    /// A function by name: its file and definition.
    pub fn function(&self, name: &str) -> Option<(usize, &FnDef)> {
        let &(f, i) = self.fns.get(name)?;
        match &self.modules[f].items[i] {
            Item::Fn(d) => Some((f, d)),
            _ => None,
        }
    }

    /// A model by name: its file and definition.
    pub fn model(&self, name: &str) -> Option<(usize, &ModelDef)> {
        let &(f, i) = self.models.get(name)?;
        match &self.modules[f].items[i] {
            Item::Model(d) => Some((f, d)),
            _ => None,
        }
    }

    /// Names of every model loaded.
    pub fn model_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.models.keys().cloned().collect();
        v.sort();
        v
    }

    /// Every function: (name, file, definition), sorted by name.
    pub fn functions(&self) -> Vec<(&str, usize, &FnDef)> {
        let mut v: Vec<(&str, usize, &FnDef)> = self
            .fns
            .keys()
            .filter_map(|n| self.function(n).map(|(f, d)| (n.as_str(), f, d)))
            .collect();
        v.sort_by_key(|x| x.0);
        v
    }

    /// A global constant.
    pub fn constant(&self, name: &str) -> Option<&Val> {
        self.consts.get(name)
    }

    /// The loaded files, for messages.
    pub fn describe_files(&self) -> String {
        self.files.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>().join(", ")
    }

    fn const_eval(&self, e: &Expr) -> Result<Val, DslError> {
        Ok(match e {
            Expr::Number(x, _) => Val::Num(*x),
            Expr::Str(s, _) => Val::Str(s.clone()),
            Expr::List(items, _) => {
                Val::List(items.iter().map(|i| self.const_eval(i)).collect::<Result<_, _>>()?)
            }
            Expr::Name(id) => self
                .consts
                .get(&id.name)
                .cloned()
                .ok_or_else(|| self.err(id.span, format!("unknown constant `{}`", id.name)))?,
            Expr::Neg(x, s) => match self.const_eval(x)? {
                Val::Num(v) => Val::Num(-v),
                _ => return Err(self.err(*s, "only numbers can be negated")),
            },
            Expr::Binary { op, lhs, rhs, span } => {
                match (self.const_eval(lhs)?, self.const_eval(rhs)?) {
                    (Val::Num(a), Val::Num(b)) => Val::Num(match op {
                        '+' => a + b,
                        '-' => a - b,
                        '*' => a * b,
                        '/' => a / b,
                        '^' => a.powf(b),
                        _ => return Err(self.err(*span, "`@` needs tensors")),
                    }),
                    _ => return Err(self.err(*span, "constant arithmetic works on numbers")),
                }
            }
            Expr::Index(b, i, s) => match (self.const_eval(b)?, self.const_eval(i)?) {
                (Val::List(items), Val::Num(k)) if k >= 0.0 && (k as usize) < items.len() => {
                    items[k as usize].clone()
                }
                _ => return Err(self.err(*s, "bad constant index")),
            },
            Expr::Call { func, args, span, .. } => {
                let xs: Vec<f64> = args
                    .iter()
                    .map(|a| match self.const_eval(a)? {
                        Val::Num(x) => Ok(x),
                        _ => Err(self.err(a.span(), "expected a number")),
                    })
                    .collect::<Result<_, _>>()?;
                match (func.name.as_str(), xs.as_slice()) {
                    ("sqrt", [x]) => Val::Num(x.sqrt()),
                    ("exp", [x]) => Val::Num(x.exp()),
                    ("log", [x]) => Val::Num(x.ln()),
                    _ => {
                        return Err(self.err(
                            *span,
                            format!("`{}` cannot be evaluated in a constant", func.name),
                        ))
                    }
                }
            }
        })
    }
}
