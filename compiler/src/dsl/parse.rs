//! pest pairs to the syntax tree.

use crate::dsl::ast::*;
use crate::dsl::error::DslError;
use pest::iterators::Pair;
use pest::Parser;
use veil_grammar::{DslParser, Rule};

/// Parses one file (index `file` in the loader).
pub fn parse(src: &str, file: usize, path: &str) -> Result<Module, DslError> {
    let mut pairs = DslParser::parse(Rule::file, src)
        .map_err(|e| DslError::Syntax(Box::new(e.with_path(path))))?;
    let file_pair = pairs.next().expect("the file rule matched");
    let p = P { file };
    let mut m = Module::default();
    for item in file_pair.into_inner() {
        match item.as_rule() {
            Rule::import => {
                let span = p.span(&item);
                let parts = item
                    .into_inner()
                    .filter(|x| x.as_rule() == Rule::ident)
                    .map(|x| p.ident(x))
                    .collect();
                m.items.push(Item::Import(parts, span));
            }
            Rule::const_def => {
                let mut it = item.into_inner().filter(|x| x.as_rule() != Rule::doc);
                let name = p.ident(it.next().expect("const name"));
                let e = p.expr(it.next().expect("const value"));
                m.items.push(Item::Const(name, e));
            }
            Rule::fn_def => m.items.push(Item::Fn(p.fn_def(item))),
            Rule::model_def => {
                let mut doc = String::new();
                let mut name = None;
                let mut body = None;
                for x in item.into_inner() {
                    match x.as_rule() {
                        Rule::doc => doc = doc_text(x.as_str()),
                        Rule::ident => name = Some(p.ident(x)),
                        Rule::block => body = Some(p.block(x)),
                        _ => {}
                    }
                }
                m.items.push(Item::Model(ModelDef {
                    doc,
                    name: name.expect("model name"),
                    body: body.expect("model body"),
                }));
            }
            Rule::EOI => {}
            r => unreachable!("unexpected item {r:?}"),
        }
    }
    Ok(m)
}

fn doc_text(s: &str) -> String {
    s.lines()
        .map(|l| l.trim_start().trim_start_matches("///").trim())
        .collect::<Vec<_>>()
        .join("\n")
}

struct P {
    file: usize,
}

impl P {
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        Span { file: self.file, start: s.start(), end: s.end() }
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident { name: p.as_str().to_string(), span: self.span(&p) }
    }

    fn fn_def(&self, item: Pair<Rule>) -> FnDef {
        let mut doc = String::new();
        let mut name = None;
        let mut params = Vec::new();
        let mut body = None;
        for x in item.into_inner() {
            match x.as_rule() {
                Rule::doc => doc = doc_text(x.as_str()),
                Rule::ident => name = Some(self.ident(x)),
                Rule::param_decl => {
                    let mut it = x.into_inner();
                    let pname = self.ident(it.next().expect("param name"));
                    let mut ty = None;
                    let mut default = None;
                    for y in it {
                        match y.as_rule() {
                            Rule::tensor_type => ty = Some(self.tensor_type(y)),
                            _ => default = Some(self.expr(y)),
                        }
                    }
                    params.push(FnParam { name: pname, ty, default });
                }
                Rule::block => body = Some(self.block(x)),
                _ => {}
            }
        }
        FnDef { doc, name: name.expect("fn name"), params, body: body.expect("fn body") }
    }

    fn block(&self, p: Pair<Rule>) -> Block {
        let mut stmts = Vec::new();
        let mut tail = None;
        for x in p.into_inner() {
            match x.as_rule() {
                Rule::expr => tail = Some(self.expr(x)),
                _ => stmts.push(self.stmt(x)),
            }
        }
        Block { stmts, tail }
    }

    fn vis(&self, p: Pair<Rule>) -> (Visibility, Span) {
        let v = match p.as_str() {
            "client" => Visibility::Client,
            "private" => Visibility::Private,
            _ => Visibility::Public,
        };
        (v, self.span(&p))
    }

    fn stmt(&self, p: Pair<Rule>) -> Stmt {
        let rule = p.as_rule();
        let mut it = p.into_inner().filter(|x| x.as_rule() != Rule::doc);
        match rule {
            Rule::let_stmt => {
                let n = self.ident(it.next().expect("name"));
                Stmt::Let(n, self.expr(it.next().expect("value")))
            }
            Rule::assign_stmt => {
                let n = self.ident(it.next().expect("name"));
                Stmt::Assign(n, self.expr(it.next().expect("value")))
            }
            Rule::repeat_stmt => {
                let var = self.ident(it.next().expect("var"));
                let from = self.expr(it.next().expect("from"));
                let to = self.expr(it.next().expect("to"));
                let body = Box::new(self.block(it.next().expect("body")));
                Stmt::Repeat { var, from, to, body }
            }
            Rule::input_stmt => {
                let name = self.ident(it.next().expect("name"));
                let vis = self.vis(it.next().expect("owner"));
                let ty = self.tensor_type(it.next().expect("type"));
                Stmt::Input { name, vis, ty }
            }
            Rule::weight_stmt => {
                let name = self.ident(it.next().expect("name"));
                let vis = self.vis(it.next().expect("visibility"));
                let ty = self.tensor_type(it.next().expect("type"));
                let key = it.next().map(|s| {
                    let span = self.span(&s);
                    let inner = s.into_inner().next().expect("string body").as_str().to_string();
                    (inner, span)
                });
                Stmt::Param { name, vis, ty, key }
            }
            Rule::output_stmt => {
                let n = self.ident(it.next().expect("name"));
                Stmt::Output(n, self.expr(it.next().expect("value")))
            }
            Rule::return_stmt => Stmt::Return(self.expr(it.next().expect("value"))),
            r => unreachable!("unexpected statement {r:?}"),
        }
    }

    fn tensor_type(&self, p: Pair<Rule>) -> TypeExpr {
        let span = self.span(&p);
        let mut it = p.into_inner();
        let dtype = it.next().expect("dtype").as_str().to_string();
        TypeExpr { dtype, dims: it.map(|d| self.expr(d)).collect(), span }
    }

    fn expr(&self, p: Pair<Rule>) -> Expr {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::expr | Rule::term => {
                let mut it = p.into_inner();
                let mut acc = self.expr(it.next().expect("operand"));
                while let Some(op) = it.next() {
                    let rhs = self.expr(it.next().expect("operand"));
                    let s = Span { file: self.file, start: acc.span().start, end: rhs.span().end };
                    let c = op.as_str().chars().next().expect("operator");
                    acc = Expr::Binary { op: c, lhs: Box::new(acc), rhs: Box::new(rhs), span: s };
                }
                acc
            }
            Rule::unary => {
                let parts: Vec<Pair<Rule>> = p.into_inner().collect();
                let negs = parts.iter().filter(|x| x.as_rule() == Rule::neg).count();
                let mut e = self.expr(parts.last().expect("operand").clone());
                for _ in 0..negs {
                    e = Expr::Neg(Box::new(e), span);
                }
                e
            }
            Rule::power => {
                let mut it = p.into_inner();
                let base = self.expr(it.next().expect("base"));
                match it.next() {
                    Some(exp) => Expr::Binary {
                        op: '^',
                        lhs: Box::new(base),
                        rhs: Box::new(self.expr(exp)),
                        span,
                    },
                    None => base,
                }
            }
            Rule::postfix => {
                let mut it = p.into_inner();
                let mut e = self.expr(it.next().expect("primary"));
                for idx in it {
                    let ie = self.expr(idx.into_inner().next().expect("index"));
                    let s = Span { file: self.file, start: e.span().start, end: ie.span().end + 1 };
                    e = Expr::Index(Box::new(e), Box::new(ie), s);
                }
                e
            }
            Rule::number => Expr::Number(
                p.as_str().parse().expect("the grammar only accepts valid numbers"),
                span,
            ),
            Rule::string => {
                Expr::Str(p.into_inner().next().expect("string body").as_str().to_string(), span)
            }
            Rule::ident => Expr::Name(self.ident(p)),
            Rule::list => Expr::List(p.into_inner().map(|x| self.expr(x)).collect(), span),
            Rule::call => {
                let mut it = p.into_inner();
                let func = self.ident(it.next().expect("callee"));
                let mut args = Vec::new();
                let mut named = Vec::new();
                for a in it {
                    let mut ai = a.into_inner();
                    let first = ai.next().expect("argument");
                    match ai.next() {
                        Some(value) => named.push((self.ident(first), self.expr(value))),
                        None => args.push(self.expr(first)),
                    }
                }
                Expr::Call { func, args, named, span }
            }
            r => unreachable!("unexpected expression rule {r:?}"),
        }
    }
}
