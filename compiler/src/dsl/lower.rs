//! DSL to IR: an evaluator over the syntax tree that emits IR nodes.
//!
//! Everything static is computed at compile time: numbers, lists, `repeat` (unrolled),
//! function calls (inlined), parameter names (`{i}` interpolated). Only tensor operations
//! become IR nodes, so the resulting graph is the same kind of graph the ONNX importer builds.

use crate::dsl::ast::*;
use crate::dsl::error::{at, DslError};
use crate::dsl::loader::Loader;
use crate::ir::{DType, Graph, Op, Tensor, TensorType, Value};
use std::collections::HashMap;

/// A value during evaluation: compile-time data or an IR tensor.
#[derive(Clone, Debug)]
pub enum Val {
    /// A number (compile time).
    Num(f64),
    /// A list (compile time).
    List(Vec<Val>),
    /// A string (compile time).
    Str(String),
    /// A tensor in the graph.
    Tensor(Value),
}

/// Where model parameters come from.
pub trait WeightSource {
    /// The tensor named `key` with type `ty`, or a message saying what is wrong.
    fn get(&mut self, key: &str, ty: &TensorType) -> Result<Tensor, String>;
}

/// The result of lowering a model.
pub struct LoweredModel {
    /// The graph.
    pub graph: Graph,
    /// Names of the parameters declared `public`.
    pub public_params: Vec<String>,
}

struct Frame {
    scopes: Vec<HashMap<String, Val>>,
    in_model: bool,
}

pub(crate) struct Eval<'a> {
    loader: &'a Loader,
    pub(crate) g: &'a mut Graph,
    weights: Option<&'a mut dyn WeightSource>,
    frames: Vec<Frame>,
    call_stack: Vec<String>,
    prefix: Vec<String>,
    public_params: Vec<String>,
    outputs: Vec<Value>,
    counter: usize,
}

type R<T> = Result<T, DslError>;

/// Lowers model `name` (searched in every loaded file) with parameters from `weights`.
pub fn lower_model(loader: &Loader, name: &str, weights: &mut dyn WeightSource) -> R<LoweredModel> {
    let (_, model) = loader.model(name).ok_or_else(|| {
        DslError::Other(format!("no model `{name}` in {}", loader.describe_files()))
    })?;
    let mut g = Graph::new(name);
    let mut e = Eval {
        loader,
        g: &mut g,
        weights: Some(weights),
        frames: vec![Frame { scopes: vec![HashMap::new()], in_model: true }],
        call_stack: vec![name.to_string()],
        prefix: Vec::new(),
        public_params: Vec::new(),
        outputs: Vec::new(),
        counter: 0,
    };
    let ret = e.block(&model.body)?;
    if let Some(v) = ret {
        let s = model.body.tail.as_ref().map(|t| t.span()).unwrap_or_default();
        let _ = v;
        return Err(e.err(s, "a model ends with `output` statements, not a value"));
    }
    if e.outputs.is_empty() {
        return Err(e.err(model.name.span, format!("model `{name}` declares no `output`")));
    }
    let outputs = std::mem::take(&mut e.outputs);
    let public_params = std::mem::take(&mut e.public_params);
    g.outputs = outputs;
    g.remove_dead_nodes();
    Ok(LoweredModel { graph: g.compact(), public_params })
}

/// Inlines function `func` into `g` applied to tensor arguments `args` (positional) and
/// compile-time named arguments; returns the result value. Used to instantiate stdlib
/// approximations inside a model's graph.
pub fn instantiate(
    loader: &Loader,
    func: &str,
    g: &mut Graph,
    args: &[Value],
    named: &[(&str, Val)],
    prefix: &str,
) -> R<Value> {
    let (file, f) = loader.function(func).ok_or_else(|| {
        DslError::Other(format!("no function `{func}` in {}", loader.describe_files()))
    })?;
    let mut e = Eval {
        loader,
        g,
        weights: None,
        frames: vec![Frame { scopes: vec![HashMap::new()], in_model: false }],
        call_stack: Vec::new(),
        prefix: vec![prefix.to_string()],
        public_params: Vec::new(),
        outputs: Vec::new(),
        counter: 0,
    };
    let pos: Vec<Val> = args.iter().map(|&v| Val::Tensor(v)).collect();
    let nm: Vec<(Ident, Val)> = named
        .iter()
        .map(|(n, v)| (Ident { name: n.to_string(), span: f.name.span }, v.clone()))
        .collect();
    match e.call_user(file, f, pos, nm, f.name.span)? {
        Val::Tensor(v) => Ok(v),
        _ => Err(DslError::Other(format!("function `{func}` does not return a tensor"))),
    }
}

fn is_int(x: f64) -> bool {
    x.fract() == 0.0 && x.abs() < 1e15
}

/// Why `{var}` interpolation failed (located by the caller).
#[derive(Debug, thiserror::Error)]
enum InterpolateError {
    /// A `{` without its `}`.
    #[error("unclosed `{{` in a parameter name")]
    Unclosed,
    /// A variable without an integer or string value.
    #[error("`{{{0}}}` names no compile-time value")]
    Unbound(String),
}

fn interpolate(
    key: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolateError> {
    let mut out = String::new();
    let mut rest = key;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let j = rest[i..].find('}').ok_or(InterpolateError::Unclosed)? + i;
        let var = &rest[i + 1..j];
        out.push_str(&lookup(var).ok_or_else(|| InterpolateError::Unbound(var.to_string()))?);
        rest = &rest[j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn dtype_of(name: &str) -> Option<DType> {
    Some(match name {
        "f32" => DType::F32,
        "f64" => DType::F64,
        "f16" => DType::F16,
        "i64" => DType::I64,
        "i32" => DType::I32,
        "bool" => DType::Bool,
        _ => return None,
    })
}

impl<'a> Eval<'a> {
    /// `{var}` in `s` replaced by the integer or string bound to `var` in the current scope.
    fn interpolate(&self, s: &str, span: Span) -> Result<String, DslError> {
        interpolate(s, &|v| match self.lookup(v) {
            Some(Val::Num(x)) if is_int(x) => Some((x as i64).to_string()),
            Some(Val::Str(s)) => Some(s),
            _ => None,
        })
        .map_err(|e| self.err(span, e.to_string()))
    }

    fn frame(&mut self) -> &mut Frame {
        self.frames.last_mut().expect("a frame is active")
    }

    pub(crate) fn err(&self, s: Span, msg: impl Into<String>) -> DslError {
        let (path, src) = self.loader.file(s.file);
        at(path, src, s.start, s.end, msg)
    }

    fn node_name(&mut self, base: &str) -> String {
        self.counter += 1;
        let mut parts = self.prefix.clone();
        parts.push(base.to_string());
        parts.retain(|p| !p.is_empty());
        parts.join("/")
    }

    fn lookup(&self, name: &str) -> Option<Val> {
        let f = self.frames.last()?;
        for s in f.scopes.iter().rev() {
            if let Some(v) = s.get(name) {
                return Some(v.clone());
            }
        }
        self.loader.constant(name).cloned()
    }

    fn bind(&mut self, name: &str, v: Val) {
        self.frame().scopes.last_mut().expect("a scope").insert(name.to_string(), v);
    }

    fn assign(&mut self, id: &Ident, v: Val) -> R<()> {
        let f = self.frames.last_mut().expect("a frame is active");
        for s in f.scopes.iter_mut().rev() {
            if let Some(slot) = s.get_mut(&id.name) {
                *slot = v;
                return Ok(());
            }
        }
        Err(self.err(
            id.span,
            format!("`{}` is not bound: use `let {} = ...` to introduce it", id.name, id.name),
        ))
    }

    /// Runs a block; returns its value (a `return` or the tail expression).
    fn block(&mut self, b: &Block) -> R<Option<Val>> {
        self.frame().scopes.push(HashMap::new());
        let r = self.block_inner(b);
        self.frame().scopes.pop();
        r
    }

    fn block_inner(&mut self, b: &Block) -> R<Option<Val>> {
        for s in &b.stmts {
            if let Some(v) = self.stmt(s)? {
                return Ok(Some(v));
            }
        }
        match &b.tail {
            Some(e) => Ok(Some(self.expr(e, None)?)),
            None => Ok(None),
        }
    }

    fn stmt(&mut self, s: &Stmt) -> R<Option<Val>> {
        match s {
            Stmt::Let(id, e) => {
                let v = self.expr(e, Some(&id.name))?;
                self.bind(&id.name, v);
            }
            Stmt::Assign(id, e) => {
                let v = self.expr(e, Some(&id.name))?;
                self.assign(id, v)?;
            }
            Stmt::Repeat { var, from, to, body } => {
                let a = self.num(from)?;
                let b = self.num(to)?;
                if !is_int(a) || !is_int(b) {
                    return Err(self.err(
                        Span { end: to.span().end, ..from.span() },
                        "repeat bounds must be integers",
                    ));
                }
                for i in a as i64..b as i64 {
                    self.prefix.push(format!("{}.{i}", var.name));
                    self.frame()
                        .scopes
                        .push(HashMap::from([(var.name.clone(), Val::Num(i as f64))]));
                    let r = self.block_inner(body);
                    self.frame().scopes.pop();
                    self.prefix.pop();
                    if let Some(v) = r? {
                        return Ok(Some(v));
                    }
                }
            }
            Stmt::Input { name, vis, ty } => {
                if !self.frames.last().expect("frame").in_model || self.frames.len() > 1 {
                    return Err(
                        self.err(name.span, "inputs are declared at the top level of a model")
                    );
                }
                if vis.0 != Visibility::Client {
                    return Err(
                        self.err(vis.1, "model inputs belong to the client: declare them `client`")
                    );
                }
                let t = self.tensor_type(ty)?;
                let v = self.g.add_input(&name.name, t);
                self.bind(&name.name, Val::Tensor(v));
            }
            Stmt::Param { name, vis, ty, key } => {
                if vis.0 == Visibility::Client {
                    return Err(self.err(vis.1, "parameters are `private` (the server's) or `public`; `client` is for inputs"));
                }
                let t = self.tensor_type(ty)?;
                let raw = key.as_ref().map(|k| k.0.clone()).unwrap_or_else(|| name.name.clone());
                let kspan = key.as_ref().map(|k| k.1).unwrap_or(name.span);
                let resolved = self.interpolate(&raw, kspan)?;
                let weights = self.weights.as_mut().ok_or_else(|| {
                    DslError::Other("parameters are only allowed inside models".into())
                })?;
                let data = weights.get(&resolved, &t);
                let data =
                    data.map_err(|m| self.err(kspan, format!("parameter `{resolved}`: {m}")))?;
                let v = self.g.add_weight(&resolved, data);
                if vis.0 == Visibility::Public {
                    self.public_params.push(resolved);
                }
                self.bind(&name.name, Val::Tensor(v));
            }
            Stmt::Output(id, e) => {
                if !self.frames.last().expect("frame").in_model || self.frames.len() > 1 {
                    return Err(
                        self.err(id.span, "outputs are declared at the top level of a model")
                    );
                }
                let v = self.tensor(e, Some(&id.name))?;
                if self.g.values[v].name != id.name {
                    let name = self.g.unique_name(&id.name);
                    self.g.values[v].name = name;
                }
                self.outputs.push(v);
            }
            Stmt::Return(e) => return Ok(Some(self.expr(e, None)?)),
        }
        Ok(None)
    }

    fn tensor_type(&mut self, t: &TypeExpr) -> R<TensorType> {
        let dtype = dtype_of(&t.dtype)
            .ok_or_else(|| self.err(t.span, format!("unknown element type `{}`", t.dtype)))?;
        let mut shape = Vec::new();
        for d in &t.dims {
            let x = self.num(d)?;
            if !is_int(x) || x < 0.0 {
                return Err(self.err(
                    d.span(),
                    format!("a dimension must be a non-negative integer, got {x}"),
                ));
            }
            shape.push(x as usize);
        }
        // `x as usize` saturates, so a dimension of 1e30 is usize::MAX: the product decides.
        if crate::frontend::elements(&shape).is_none() {
            let msg = format!("the shape {shape:?} has more elements than a tensor can hold");
            return Err(self.err(t.span, msg));
        }
        Ok(TensorType::new(dtype, shape))
    }

    pub(crate) fn num(&mut self, e: &Expr) -> R<f64> {
        match self.expr(e, None)? {
            Val::Num(x) => Ok(x),
            _ => Err(self.err(e.span(), "expected a compile-time number here")),
        }
    }

    pub(crate) fn tensor(&mut self, e: &Expr, name: Option<&str>) -> R<Value> {
        match self.expr(e, name)? {
            Val::Tensor(v) => Ok(v),
            Val::Num(x) => {
                let n = self.node_name("const");
                Ok(self.g.add_const(&n, Tensor::scalar_f32(x as f32)))
            }
            _ => Err(self.err(e.span(), "expected a tensor here")),
        }
    }

    /// Adds a node; a shape error becomes a located DSL error.
    pub(crate) fn node(
        &mut self,
        span: Span,
        op: Op,
        args: &[Value],
        name: Option<&str>,
    ) -> R<Val> {
        if let Op::Reshape { shape } | Op::Expand { shape } = &op {
            if crate::frontend::elements(shape).is_none() {
                let msg = format!("the shape {shape:?} has more elements than a tensor can hold");
                return Err(self.err(span, msg));
            }
        }
        let base = name.unwrap_or(op.name()).to_string();
        let nn = self.node_name(&base);
        let v = self.g.add_node(&nn, op, args, &nn).map_err(|e| self.err(span, e.to_string()))?;
        let shape = &self.g.ty(v).shape;
        if crate::frontend::elements(shape).is_none() {
            let msg =
                format!("the result of shape {shape:?} has more elements than a tensor can hold");
            return Err(self.err(span, msg));
        }
        Ok(Val::Tensor(v))
    }

    /// A scalar constant with the element type of `like`.
    fn scalar_like(&mut self, x: f64, like: Value) -> Value {
        let dt = self.g.ty(like).dtype;
        let t = match dt {
            DType::I64 | DType::I32 => {
                Tensor { dtype: dt, shape: vec![], data: crate::ir::Data::I64(vec![x as i64]) }
            }
            DType::F64 => Tensor { dtype: dt, shape: vec![], data: crate::ir::Data::F64(vec![x]) },
            _ => Tensor::scalar_f32(x as f32),
        };
        let name = self.node_name("const");
        self.g.add_const(&name, t)
    }

    pub(crate) fn expr(&mut self, e: &Expr, name: Option<&str>) -> R<Val> {
        match e {
            Expr::Number(x, _) => Ok(Val::Num(*x)),
            // String literals interpolate `{var}` where they are written, so a name built in
            // a caller (`"layer.{i}.query"`) carries the caller's loop variable.
            Expr::Str(s, span) => Ok(Val::Str(self.interpolate(s, *span)?)),
            Expr::List(items, _) => {
                Ok(Val::List(items.iter().map(|i| self.expr(i, None)).collect::<R<_>>()?))
            }
            Expr::Name(id) => self.lookup(&id.name).ok_or_else(|| {
                let hint = if self.loader.function(&id.name).is_some() {
                    " (it is a function: call it)"
                } else {
                    ""
                };
                self.err(id.span, format!("unknown name `{}`{hint}", id.name))
            }),
            Expr::Neg(x, s) => match self.expr(x, None)? {
                Val::Num(v) => Ok(Val::Num(-v)),
                Val::Tensor(v) => self.node(*s, Op::Neg, &[v], name),
                _ => Err(self.err(*s, "cannot negate a list or string")),
            },
            Expr::Index(base, idx, s) => {
                let b = self.expr(base, None)?;
                let i = self.num(idx)?;
                match b {
                    Val::List(items) => {
                        let k = if i < 0.0 { items.len() as f64 + i } else { i };
                        if !is_int(k) || k < 0.0 || k as usize >= items.len() {
                            return Err(self.err(*s, format!("index {i} is out of range for a list of {}", items.len())));
                        }
                        Ok(items[k as usize].clone())
                    }
                    _ => Err(self.err(*s, "only compile-time lists can be indexed; use slice() or gather() on tensors")),
                }
            }
            Expr::Binary { op, lhs, rhs, span } => {
                let a = self.expr(lhs, None)?;
                let b = self.expr(rhs, None)?;
                self.binary(*op, a, b, *span, name)
            }
            Expr::Call { func, args, named, span } => {
                let pos: Vec<Val> = args.iter().map(|a| self.expr(a, None)).collect::<R<_>>()?;
                let mut nm = Vec::new();
                for (n, v) in named {
                    nm.push((n.clone(), self.expr(v, None)?));
                }
                if let Some((file, f)) = self.loader.function(&func.name) {
                    return self.call_user(file, f, pos, nm, *span);
                }
                crate::dsl::builtins::call(self, func, pos, nm, *span, name)
            }
        }
    }

    fn binary(&mut self, op: char, a: Val, b: Val, span: Span, name: Option<&str>) -> R<Val> {
        use Val::*;
        match (a, b) {
            (Num(x), Num(y)) => Ok(Num(match op {
                '+' => x + y,
                '-' => x - y,
                '*' => x * y,
                '/' => x / y,
                '^' => x.powf(y),
                _ => return Err(self.err(span, "`@` needs tensors")),
            })),
            (Tensor(x), Num(y)) if op == '^' => self.power(x, y, span, name),
            (Tensor(x), Num(y)) => {
                let c = self.scalar_like(y, x);
                self.binary(op, Tensor(x), Tensor(c), span, name)
            }
            (Num(x), Tensor(y)) => {
                let c = self.scalar_like(x, y);
                self.binary(op, Tensor(c), Tensor(y), span, name)
            }
            (Tensor(x), Tensor(y)) => {
                let o = match op {
                    '+' => Op::Add,
                    '-' => Op::Sub,
                    '*' => Op::Mul,
                    '/' => Op::Div,
                    '@' => Op::MatMul,
                    _ => Op::Pow,
                };
                self.node(span, o, &[x, y], name)
            }
            _ => Err(self.err(
                span,
                format!("`{op}` is defined on numbers and tensors, not lists or strings"),
            )),
        }
    }

    /// `x ^ n`: repeated multiplication for positive integers, `pow` otherwise.
    fn power(&mut self, x: Value, n: f64, span: Span, name: Option<&str>) -> R<Val> {
        if is_int(n) && (1.0..=64.0).contains(&n) {
            let n = n as u32;
            let mut result: Option<Value> = None;
            let mut base = x;
            let mut k = n;
            while k > 0 {
                if k & 1 == 1 {
                    result = Some(match result {
                        None => base,
                        Some(r) => {
                            let v = self.node(span, Op::Mul, &[r, base], None)?;
                            self.tensor_val(v)
                        }
                    });
                }
                k >>= 1;
                if k > 0 {
                    let v = self.node(span, Op::Mul, &[base, base], None)?;
                    base = self.tensor_val(v);
                }
            }
            let r = result.expect("n ≥ 1");
            if let Some(nm) = name {
                let unique = self.g.unique_name(nm);
                if self.g.producer(r).is_some() {
                    self.g.values[r].name = unique;
                }
            }
            return Ok(Val::Tensor(r));
        }
        let c = self.scalar_like(n, x);
        self.node(span, Op::Pow, &[x, c], name)
    }

    fn tensor_val(&self, v: Val) -> Value {
        match v {
            Val::Tensor(t) => t,
            _ => unreachable!("node() returns tensors"),
        }
    }

    fn call_user(
        &mut self,
        _file: usize,
        f: &FnDef,
        pos: Vec<Val>,
        named: Vec<(Ident, Val)>,
        span: Span,
    ) -> R<Val> {
        if self.call_stack.contains(&f.name.name) {
            let mut chain = self.call_stack.clone();
            chain.push(f.name.name.clone());
            return Err(self.err(span, format!("recursion is not allowed: {}", chain.join(" → "))));
        }
        if pos.len() > f.params.len() {
            return Err(self.err(
                span,
                format!(
                    "`{}` takes {} argument{}, {} given",
                    f.name.name,
                    f.params.len(),
                    if f.params.len() == 1 { "" } else { "s" },
                    pos.len()
                ),
            ));
        }
        let mut bound: Vec<Option<Val>> = pos.into_iter().map(Some).collect();
        bound.resize(f.params.len(), None);
        for (n, v) in named {
            let i = f.params.iter().position(|p| p.name.name == n.name).ok_or_else(|| {
                self.err(n.span, format!("`{}` has no parameter `{}`", f.name.name, n.name))
            })?;
            if bound[i].is_some() {
                return Err(self.err(n.span, format!("argument `{}` is given twice", n.name)));
            }
            bound[i] = Some(v);
        }
        let mut scope = HashMap::new();
        // Defaults are evaluated in the function's own file scope.
        self.frames.push(Frame { scopes: vec![HashMap::new()], in_model: false });
        for (p, b) in f.params.iter().zip(bound) {
            let v = match b {
                Some(v) => v,
                None => match &p.default {
                    Some(d) => self.expr(d, None)?,
                    None => {
                        self.frames.pop();
                        return Err(self.err(
                            span,
                            format!("`{}` needs argument `{}`", f.name.name, p.name.name),
                        ));
                    }
                },
            };
            if let (Some(ty), Val::Tensor(t)) = (&p.ty, &v) {
                let want = self.tensor_type(ty)?;
                let have = self.g.ty(*t).clone();
                if want != have {
                    self.frames.pop();
                    return Err(self.err(
                        span,
                        format!(
                            "argument `{}` of `{}` must be {want}, got {have}",
                            p.name.name, f.name.name
                        ),
                    ));
                }
            }
            scope.insert(p.name.name.clone(), v);
        }
        self.frames.last_mut().expect("frame").scopes = vec![scope];
        self.call_stack.push(f.name.name.clone());
        self.prefix.push(f.name.name.clone());
        let r = self.block_inner(&f.body);
        self.prefix.pop();
        self.call_stack.pop();
        self.frames.pop();
        r?.ok_or_else(|| self.err(f.name.span, format!("`{}` returns no value", f.name.name)))
    }
}
