//! A native evaluator for the expressions pipelines write most: record fields and
//! literals combined with arithmetic, comparisons, `!`, `&&`, `||`, `?:` and `has()`.
//!
//! It is lowered once from the tree CEL's own parser made. It computes only what is
//! unambiguous (scalars of one type, or int against double where the int is exact) and
//! returns `None` for anything else (an error, a mixed or unusual type, a missing field),
//! and the caller then asks CEL's interpreter, which gives the authoritative answer or
//! error. So results are CEL's; the differential test below checks that on random
//! expressions and records.

use std::cmp::Ordering;
use std::sync::Arc;

use cel::Value;
use cel::common::ast::{Expr as Ast, operators};
use cel::objects::Key;
use cel::parser::Expression;

use super::Scope;

/// An arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A top-level field of `value`: its name, and the same as a CEL map key (built once,
/// for lookups in a bound `value` map).
#[derive(Debug)]
pub(super) struct Field {
    pub name: String,
    pub key: Key,
}

/// A lowered expression.
#[derive(Debug)]
pub(super) enum Node {
    Lit(Value),
    /// `value.<field>`.
    Field(Field),
    /// `has(value.<field>)`.
    Has(Field),
    /// `key`, `topic`, `partition`, `offset` or `timestamp`.
    Meta(&'static str),
    Not(Box<Node>),
    Neg(Box<Node>),
    /// `&&` (`decides: false`) or `||` (`decides: true`): a left side equal to `decides`
    /// is the answer, else the right side is.
    ShortCircuit {
        decides: bool,
        left: Box<Node>,
        right: Box<Node>,
    },
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Arith(Arith, Box<Node>, Box<Node>),
    Cmp(Cmp, Box<Node>, Box<Node>),
}

/// Lowers `expr` when every part of it is one this evaluator knows.
pub(super) fn lower(expr: &Expression) -> Option<Node> {
    match &expr.expr {
        Ast::Literal(lit) => {
            let v = Value::try_from(lit.to_val().as_ref()).ok()?;
            is_scalar(&v).then_some(Node::Lit(v))
        }
        Ast::Select(select) => match &select.operand.expr {
            Ast::Ident(name) if name == "value" => {
                let field = Field {
                    name: select.field.clone(),
                    key: Key::String(Arc::new(select.field.clone())),
                };
                Some(if select.test {
                    Node::Has(field)
                } else {
                    Node::Field(field)
                })
            }
            _ => None,
        },
        Ast::Ident(name) => match name.as_str() {
            "key" => Some(Node::Meta("key")),
            "topic" => Some(Node::Meta("topic")),
            "partition" => Some(Node::Meta("partition")),
            "offset" => Some(Node::Meta("offset")),
            "timestamp" => Some(Node::Meta("timestamp")),
            _ => None,
        },
        Ast::Call(call) if call.target.is_none() => {
            let arg = |i: usize| call.args.get(i).and_then(lower).map(Box::new);
            match (call.func_name.as_str(), call.args.len()) {
                (operators::LOGICAL_NOT, 1) => Some(Node::Not(arg(0)?)),
                (operators::NEGATE, 1) => Some(Node::Neg(arg(0)?)),
                (operators::LOGICAL_AND, 2) => Some(Node::ShortCircuit {
                    decides: false,
                    left: arg(0)?,
                    right: arg(1)?,
                }),
                (operators::LOGICAL_OR, 2) => Some(Node::ShortCircuit {
                    decides: true,
                    left: arg(0)?,
                    right: arg(1)?,
                }),
                (operators::CONDITIONAL, 3) => Some(Node::Cond(arg(0)?, arg(1)?, arg(2)?)),
                (name, 2) => {
                    let (l, r) = (arg(0)?, arg(1)?);
                    if let Some(op) = arith(name) {
                        Some(Node::Arith(op, l, r))
                    } else {
                        cmp(name).map(|op| Node::Cmp(op, l, r))
                    }
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn arith(name: &str) -> Option<Arith> {
    Some(match name {
        operators::ADD => Arith::Add,
        operators::SUBSTRACT => Arith::Sub,
        operators::MULTIPLY => Arith::Mul,
        operators::DIVIDE => Arith::Div,
        operators::MODULO => Arith::Rem,
        _ => return None,
    })
}

fn cmp(name: &str) -> Option<Cmp> {
    Some(match name {
        operators::EQUALS => Cmp::Eq,
        operators::NOT_EQUALS => Cmp::Ne,
        operators::LESS => Cmp::Lt,
        operators::LESS_EQUALS => Cmp::Le,
        operators::GREATER => Cmp::Gt,
        operators::GREATER_EQUALS => Cmp::Ge,
        _ => return None,
    })
}

fn is_scalar(v: &Value) -> bool {
    matches!(
        v,
        Value::Int(_)
            | Value::UInt(_)
            | Value::Float(_)
            | Value::String(_)
            | Value::Bool(_)
            | Value::Null
    )
}

impl Node {
    /// The value, or `None` to leave the answer to CEL's interpreter.
    pub(super) fn eval(&self, scope: &Scope<'_>) -> Option<Value> {
        match self {
            Node::Lit(_) | Node::Field(_) | Node::Meta(_) => self.leaf(scope).cloned(),
            Node::Has(f) => match scope.value() {
                Some(Value::Map(m)) => Some(Value::Bool(m.map.contains_key(&f.key))),
                _ => None,
            },
            Node::Not(x) => match x.eval(scope)? {
                Value::Bool(b) => Some(Value::Bool(!b)),
                _ => None,
            },
            Node::Neg(x) => match x.eval(scope)? {
                Value::Int(i) => i.checked_neg().map(Value::Int),
                Value::Float(f) => Some(Value::Float(-f)),
                _ => None,
            },
            Node::ShortCircuit {
                decides,
                left,
                right,
            } => match left.eval(scope)? {
                Value::Bool(b) if b == *decides => Some(Value::Bool(b)),
                Value::Bool(_) => match right.eval(scope)? {
                    b @ Value::Bool(_) => Some(b),
                    _ => None,
                },
                _ => None,
            },
            Node::Cond(c, t, f) => match c.eval(scope)? {
                Value::Bool(true) => t.eval(scope),
                Value::Bool(false) => f.eval(scope),
                _ => None,
            },
            Node::Arith(op, l, r) => operands(l, r, scope, |a, b| arithmetic(*op, a, b)),
            Node::Cmp(op, l, r) => {
                let ord = operands(l, r, scope, order)?;
                Some(Value::Bool(match op {
                    Cmp::Eq => ord == Ordering::Equal,
                    Cmp::Ne => ord != Ordering::Equal,
                    Cmp::Lt => ord == Ordering::Less,
                    Cmp::Le => ord != Ordering::Greater,
                    Cmp::Gt => ord == Ordering::Greater,
                    Cmp::Ge => ord != Ordering::Less,
                }))
            }
        }
    }

    /// A literal, field or metadata leaf's value, borrowed; `None` for other nodes and
    /// where the leaf has no scalar value.
    fn leaf<'s>(&'s self, scope: &'s Scope<'_>) -> Option<&'s Value> {
        match self {
            Node::Lit(v) => Some(v),
            Node::Field(f) => scope.field(&f.name, &f.key).filter(|v| is_scalar(v)),
            Node::Meta(name) => scope.meta(name).filter(|v| is_scalar(v)),
            _ => None,
        }
    }
}

/// `f` on the values of `l` and `r`: borrowed when both are leaves (the common
/// `value.total > 0.0`), else evaluated.
fn operands<T>(
    l: &Node,
    r: &Node,
    scope: &Scope<'_>,
    f: impl FnOnce(&Value, &Value) -> Option<T>,
) -> Option<T> {
    match (l.leaf(scope), r.leaf(scope)) {
        (Some(a), Some(b)) => f(a, b),
        _ => f(&l.eval(scope)?, &r.eval(scope)?),
    }
}

/// `op` on two integers of one type; `None` on overflow or a zero divisor (CEL errors).
macro_rules! checked {
    ($op:expr, $a:expr, $b:expr) => {
        match $op {
            Arith::Add => $a.checked_add($b),
            Arith::Sub => $a.checked_sub($b),
            Arith::Mul => $a.checked_mul($b),
            Arith::Div => $a.checked_div($b),
            Arith::Rem => $a.checked_rem($b),
        }
    };
}

fn arithmetic(op: Arith, l: &Value, r: &Value) -> Option<Value> {
    Some(match (l, r) {
        (&Value::Int(a), &Value::Int(b)) => Value::Int(checked!(op, a, b)?),
        (&Value::UInt(a), &Value::UInt(b)) => Value::UInt(checked!(op, a, b)?),
        (&Value::Float(a), &Value::Float(b)) => Value::Float(match op {
            Arith::Add => a + b,
            Arith::Sub => a - b,
            Arith::Mul => a * b,
            Arith::Div => a / b,
            Arith::Rem => return None,
        }),
        (Value::String(a), Value::String(b)) if op == Arith::Add => {
            let mut s = String::with_capacity(a.len() + b.len());
            s.push_str(a);
            s.push_str(b);
            Value::String(Arc::new(s))
        }
        _ => return None,
    })
}

/// Integers up to this magnitude convert to a double exactly.
const EXACT_INT: i64 = 1 << 53;

/// How two scalars compare, where that is unambiguous.
fn order(l: &Value, r: &Value) -> Option<Ordering> {
    let exact = |i: i64| (-EXACT_INT..=EXACT_INT).contains(&i).then_some(i as f64);
    match (l, r) {
        (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
        (Value::UInt(a), Value::UInt(b)) => Some(a.cmp(b)),
        (Value::Float(a), Value::Float(b)) => a.partial_cmp(b),
        (Value::Int(a), Value::Float(b)) => exact(*a)?.partial_cmp(b),
        (Value::Float(a), Value::Int(b)) => a.partial_cmp(&exact(*b)?),
        (Value::String(a), Value::String(b)) => Some(a.as_str().cmp(b.as_str())),
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use cel::Value;

    use super::super::{Expr, root_context, scope};
    use crate::format::RecordFormat;
    use crate::record::Record;

    /// Operands of every type the evaluator meets: fields, literals, record metadata.
    const LEAVES: &[&str] = &[
        "value.i",
        "value.f",
        "value.s",
        "value.b",
        "value.n",
        "value.big",
        "value.missing",
        "has(value.i)",
        "has(value.missing)",
        "-2",
        "0",
        "3",
        "0u",
        "3u",
        "-1.5",
        "0.0",
        "2.0",
        "'a'",
        "'b'",
        "true",
        "false",
        "null",
        "9223372036854775807",
        "partition",
        "offset",
        "topic",
        "key",
    ];
    const OPS: &[&str] = &[
        "+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "&&", "||",
    ];

    fn leaf() -> impl Strategy<Value = String> {
        proptest::sample::select(LEAVES).prop_map(str::to_string)
    }

    /// Records with each field's value varied, including ones where ints, doubles and
    /// big ints meet at their edges.
    fn records() -> Vec<String> {
        let mut out = Vec::new();
        for (i, f, big) in [
            ("-1", "2.5", "9223372036854775807"),
            ("0", "0.0", "-9223372036854775808"),
            ("3", "-1.5", "18014398509481984"),
            ("2", "2.0", "18446744073709551615"),
        ] {
            for (s, b) in [("a", true), ("", false)] {
                out.push(format!(
                    r#"{{"i":{i},"f":{f},"s":"{s}","b":{b},"n":null,"big":{big}}}"#
                ));
            }
        }
        out
    }

    /// When the native evaluator answers `src` on `text`, the interpreter's answer.
    fn check(src: &str, text: &str) -> Result<(), String> {
        let expr = Expr::compile(src).map_err(|e| e.to_string())?;
        let payload = RecordFormat::Json
            .decode(Some(text.as_bytes()))
            .map_err(|e| e.to_string())?;
        let rec = Record::new("orders", 1, 7, 1000, Some(b"k".to_vec()), payload);
        let root = root_context();
        let s = scope(&root, &rec, expr.needs()).map_err(|e| e.to_string())?;
        let Some(native) = expr.native.as_ref().and_then(|n| n.eval(&s)) else {
            return Ok(());
        };
        match expr.interpret(&s) {
            Ok(v) if same(&v, &native) => Ok(()),
            other => Err(format!(
                "{src} on {text}: native {native:?}, interpreter {other:?}"
            )),
        }
    }

    /// Equal and of one type (NaN counts as itself).
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Float(x), Value::Float(y)) => x == y || (x.is_nan() && y.is_nan()),
            _ => a == b && format!("{:?}", a.type_of()) == format!("{:?}", b.type_of()),
        }
    }

    /// Every operator and negation over every pair of operands, on every record.
    #[test]
    fn native_agrees_with_the_interpreter_on_every_simple_form() {
        let mut failures = Vec::new();
        let mut forms = Vec::new();
        for l in LEAVES {
            forms.push(format!("!{l}"));
            forms.push(format!("-{l}"));
            for op in OPS {
                for r in LEAVES {
                    forms.push(format!("{l} {op} {r}"));
                }
            }
            forms.push(format!("{l} ? 1 : 2"));
        }
        for text in records() {
            for src in &forms {
                if let Err(e) = check(src, &text) {
                    failures.push(e);
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} disagreements, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
    }

    fn expression() -> impl Strategy<Value = String> {
        leaf().prop_recursive(4, 24, 3, |inner| {
            let ops = [
                "+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "&&", "||",
            ];
            prop_oneof![
                (
                    inner.clone(),
                    proptest::sample::select(ops.to_vec()),
                    inner.clone()
                )
                    .prop_map(|(l, op, r)| format!("({l} {op} {r})")),
                inner.clone().prop_map(|x| format!("!({x})")),
                inner.clone().prop_map(|x| format!("-({x})")),
                (inner.clone(), inner.clone(), inner)
                    .prop_map(|(c, t, f)| format!("({c} ? {t} : {f})")),
            ]
        })
    }

    fn record() -> impl Strategy<Value = String> {
        proptest::sample::select(records())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]
        /// Whenever the native evaluator answers, CEL's interpreter gives the same value
        /// of the same type.
        #[test]
        fn native_answers_agree_with_the_interpreter(src in expression(), text in record()) {
            prop_assert_eq!(check(&src, &text), Ok(()));
        }
    }

    #[test]
    fn common_shapes_are_lowered() {
        for src in [
            "value.total > 0.0",
            "value.total * 100.0",
            "value.region == 'eu' && (value.n > 1 || !has(value.x))",
            "value.a > 1 ? value.b : -value.c",
            "partition % 2 == 0",
        ] {
            assert!(Expr::compile(src).unwrap().native.is_some(), "{src}");
        }
        for src in [
            "size(value.items)",
            "value.a.b",
            "value.s.startsWith('x')",
            "value",
        ] {
            assert!(Expr::compile(src).unwrap().native.is_none(), "{src}");
        }
    }
}
