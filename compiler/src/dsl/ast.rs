//! The DSL's syntax tree. Every node keeps its source span for error messages.

/// A byte range in one source file.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct Span {
    /// Index of the file in the loader.
    pub file: usize,
    /// Start byte.
    pub start: usize,
    /// End byte.
    pub end: usize,
}

/// A name with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    /// The name.
    pub name: String,
    /// Where it is written.
    pub span: Span,
}

/// Owner or visibility keyword.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// `client`: an input the client owns.
    Client,
    /// `private`: a parameter only the server sees.
    Private,
    /// `public`: a parameter both parties may see.
    Public,
}

/// A tensor type annotation `dtype[dims]`.
#[derive(Clone, Debug, PartialEq)]
pub struct TypeExpr {
    /// Element type name (`f32`, `i64`, ...).
    pub dtype: String,
    /// Dimension expressions (compile-time integers).
    pub dims: Vec<Expr>,
    /// Where it is written.
    pub span: Span,
}

/// An expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// A number literal.
    Number(f64, Span),
    /// A string literal.
    Str(String, Span),
    /// A name.
    Name(Ident),
    /// `[a, b, ...]`.
    List(Vec<Expr>, Span),
    /// `f(args)`.
    Call {
        /// Callee.
        func: Ident,
        /// Positional arguments, in order.
        args: Vec<Expr>,
        /// Named arguments.
        named: Vec<(Ident, Expr)>,
        /// The whole call.
        span: Span,
    },
    /// `a op b`.
    Binary {
        /// Operator: one of `+ - * / @ ^`.
        op: char,
        /// Left operand.
        lhs: Box<Expr>,
        /// Right operand.
        rhs: Box<Expr>,
        /// The whole expression.
        span: Span,
    },
    /// `-a`.
    Neg(Box<Expr>, Span),
    /// `a[i]`.
    Index(Box<Expr>, Box<Expr>, Span),
}

impl Expr {
    /// The expression's span.
    pub fn span(&self) -> Span {
        match self {
            Expr::Number(_, s)
            | Expr::Str(_, s)
            | Expr::List(_, s)
            | Expr::Neg(_, s)
            | Expr::Index(_, _, s) => *s,
            Expr::Name(i) => i.span,
            Expr::Call { span, .. } | Expr::Binary { span, .. } => *span,
        }
    }
}

/// A statement.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `let x = e;`
    Let(Ident, Expr),
    /// `x = e;` (rebinding an existing name).
    Assign(Ident, Expr),
    /// `repeat i in a..b { ... }`.
    Repeat {
        /// Loop variable (a compile-time integer).
        var: Ident,
        /// First value.
        from: Expr,
        /// One past the last value.
        to: Expr,
        /// Body.
        body: Box<Block>,
    },
    /// `input x: client f32[...];`
    Input {
        /// Name.
        name: Ident,
        /// Declared owner.
        vis: (Visibility, Span),
        /// Type.
        ty: TypeExpr,
    },
    /// `param w: private f32[...] = "name";`
    Param {
        /// Name.
        name: Ident,
        /// Declared visibility.
        vis: (Visibility, Span),
        /// Type.
        ty: TypeExpr,
        /// Name in the weights file (`{i}` interpolates loop variables); defaults to `name`.
        key: Option<(String, Span)>,
    },
    /// `output y = e;`
    Output(Ident, Expr),
    /// `return e;`
    Return(Expr),
}

/// `{ stmts [expr] }`.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// Statements.
    pub stmts: Vec<Stmt>,
    /// The block's value, if it ends with an expression.
    pub tail: Option<Expr>,
}

/// A function parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct FnParam {
    /// Name.
    pub name: Ident,
    /// Optional type annotation.
    pub ty: Option<TypeExpr>,
    /// Optional default value.
    pub default: Option<Expr>,
}

/// `fn name(params) { body }`.
#[derive(Clone, Debug, PartialEq)]
pub struct FnDef {
    /// Doc comment.
    pub doc: String,
    /// Name.
    pub name: Ident,
    /// Parameters.
    pub params: Vec<FnParam>,
    /// Body.
    pub body: Block,
}

/// `model name { body }`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDef {
    /// Doc comment.
    pub doc: String,
    /// Name.
    pub name: Ident,
    /// Body.
    pub body: Block,
}

/// A top-level item.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `import a.b;`
    Import(Vec<Ident>, Span),
    /// `const X = e;`
    Const(Ident, Expr),
    /// A function.
    Fn(FnDef),
    /// A model.
    Model(ModelDef),
}

/// A parsed file.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Module {
    /// Items in source order.
    pub items: Vec<Item>,
}
