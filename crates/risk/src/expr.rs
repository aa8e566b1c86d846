//! The rule language: a small, typed expression language over the features, compiled once to a tree that evaluates
//! with integer arithmetic only.
//!
//! ```text
//! condition := or
//! or        := and ("or" and)*
//! and       := not ("and" not)*
//! not       := "not" not | compare
//! compare   := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
//!            | sum "not"? "in" "[" literal ("," literal)* "]"
//! sum       := product (("+" | "-") product)*
//! product   := unary (("*" | "/") unary)*
//! unary     := "-" unary | atom
//! atom      := number | "string" | true | false | feature | "(" condition ")"
//! ```
//!
//! Numbers are decimals with up to six fractional digits (`0.5`, `10000`, `1_000`). A feature is one of
//! [`crate::features::all`]. Names compare only with `==`, `!=` and `in`, against string literals of their domain
//! (`kind == "withdrawal"`, `country in ["KP", "IR"]`); a literal outside the domain is a compile error, so a typo
//! cannot silently never match. Division by zero gives 0; arithmetic saturates.

use std::fmt;

use crate::features::{self, Features, SCALE, Type};

/// An error in a rule's condition, with the byte offset where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at column {}: {message}", .at + 1)]
pub struct ExprError {
    /// The byte offset.
    pub at: usize,
    /// What is wrong.
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(i64),
    Str(String),
    Ident(String),
    Op(&'static str),
    And,
    Or,
    Not,
    In,
    True,
    False,
    End,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Num(n) => write!(f, "{}", features::display_num(*n)),
            Tok::Str(s) => write!(f, "{s:?}"),
            Tok::Ident(s) => write!(f, "{s}"),
            Tok::Op(o) => write!(f, "{o}"),
            Tok::And => write!(f, "and"),
            Tok::Or => write!(f, "or"),
            Tok::Not => write!(f, "not"),
            Tok::In => write!(f, "in"),
            Tok::True => write!(f, "true"),
            Tok::False => write!(f, "false"),
            Tok::End => write!(f, "the end"),
        }
    }
}

fn err(at: usize, message: impl Into<String>) -> ExprError {
    ExprError { at, message: message.into() }
}

fn lex(src: &str) -> Result<Vec<(usize, Tok)>, ExprError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_digit() {
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'_' || bytes[i] == b'.') {
                i += 1;
            }
            out.push((start, Tok::Num(parse_number(&src[start..i]).map_err(|m| err(start, m))?)));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'.') {
                i += 1;
            }
            let word = &src[start..i];
            out.push((
                start,
                match word {
                    "and" => Tok::And,
                    "or" => Tok::Or,
                    "not" => Tok::Not,
                    "in" => Tok::In,
                    "true" => Tok::True,
                    "false" => Tok::False,
                    _ => Tok::Ident(word.to_owned()),
                },
            ));
        } else if c == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += 1;
            }
            if i >= bytes.len() {
                return Err(err(start, "a string that never ends"));
            }
            out.push((start, Tok::Str(src[start + 1..i].to_owned())));
            i += 1;
        } else {
            let two = src.get(i..i + 2).unwrap_or("");
            let (tok, len) = match two {
                "<=" => (Tok::Op("<="), 2),
                ">=" => (Tok::Op(">="), 2),
                "==" => (Tok::Op("=="), 2),
                "!=" => (Tok::Op("!="), 2),
                "&&" => (Tok::And, 2),
                "||" => (Tok::Or, 2),
                _ => match c {
                    b'<' => (Tok::Op("<"), 1),
                    b'>' => (Tok::Op(">"), 1),
                    b'+' => (Tok::Op("+"), 1),
                    b'-' => (Tok::Op("-"), 1),
                    b'*' => (Tok::Op("*"), 1),
                    b'/' => (Tok::Op("/"), 1),
                    b'(' => (Tok::Op("("), 1),
                    b')' => (Tok::Op(")"), 1),
                    b'[' => (Tok::Op("["), 1),
                    b']' => (Tok::Op("]"), 1),
                    b',' => (Tok::Op(","), 1),
                    b'!' => (Tok::Not, 1),
                    _ => {
                        let ch = src[i..].chars().next().unwrap_or('?');
                        return Err(err(start, format!("unexpected character {ch:?}")));
                    }
                },
            };
            out.push((start, tok));
            i += len;
        }
    }
    out.push((src.len(), Tok::End));
    Ok(out)
}

/// Parses a decimal into millionths: digits, optional `_` separators, at most six fractional digits.
pub fn parse_number(s: &str) -> Result<i64, String> {
    let clean: String = s.chars().filter(|&c| c != '_').collect();
    let (whole, frac) = clean.split_once('.').unwrap_or((&clean, ""));
    let bad = || format!("{s:?} is not a number");
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if clean.contains('.') && frac.is_empty() {
        return Err(bad());
    }
    if frac.len() > 6 {
        return Err(format!("{s:?} has more than six decimals"));
    }
    let w: i64 = whole.parse().map_err(|_| bad())?;
    let f: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse().map_err(|_| bad())? };
    w.checked_mul(SCALE).and_then(|v| v.checked_add(f)).ok_or_else(|| format!("{s:?} is too large"))
}

/// A compiled numeric expression.
#[derive(Clone, Debug)]
enum Num {
    Const(i64),
    Feat(u16),
    Add(Box<Num>, Box<Num>),
    Sub(Box<Num>, Box<Num>),
    Mul(Box<Num>, Box<Num>),
    Div(Box<Num>, Box<Num>),
    Neg(Box<Num>),
}

impl Num {
    #[inline]
    fn eval(&self, f: &Features) -> i64 {
        match self {
            Num::Const(v) => *v,
            Num::Feat(i) => f[usize::from(*i)],
            Num::Add(a, b) => a.eval(f).saturating_add(b.eval(f)),
            Num::Sub(a, b) => a.eval(f).saturating_sub(b.eval(f)),
            Num::Mul(a, b) => clamp(i128::from(a.eval(f)) * i128::from(b.eval(f)) / i128::from(SCALE)),
            Num::Div(a, b) => {
                let d = b.eval(f);
                if d == 0 { 0 } else { clamp(i128::from(a.eval(f)) * i128::from(SCALE) / i128::from(d)) }
            }
            Num::Neg(a) => a.eval(f).saturating_neg(),
        }
    }
}

fn clamp(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

/// A compiled condition.
#[derive(Clone, Debug)]
enum Cond {
    Const(bool),
    Flag(u16),
    Not(Box<Cond>),
    And(Box<[Cond]>),
    Or(Box<[Cond]>),
    Cmp(Cmp, Num, Num),
    /// A name feature equal to one of the codes (negated when `.2`).
    In(u16, Box<[i64]>, bool),
}

impl Cond {
    #[inline]
    fn eval(&self, f: &Features) -> bool {
        match self {
            Cond::Const(b) => *b,
            Cond::Flag(i) => f[usize::from(*i)] != 0,
            Cond::Not(c) => !c.eval(f),
            Cond::And(cs) => cs.iter().all(|c| c.eval(f)),
            Cond::Or(cs) => cs.iter().any(|c| c.eval(f)),
            Cond::Cmp(op, a, b) => {
                let (a, b) = (a.eval(f), b.eval(f));
                match op {
                    Cmp::Lt => a < b,
                    Cmp::Le => a <= b,
                    Cmp::Gt => a > b,
                    Cmp::Ge => a >= b,
                    Cmp::Eq => a == b,
                    Cmp::Ne => a != b,
                }
            }
            Cond::In(i, codes, negated) => codes.contains(&f[usize::from(*i)]) != *negated,
        }
    }
}

/// A typed intermediate value during compilation.
enum Typed {
    Num(Num),
    Bool(Cond),
    Name(u16, features::Domain),
    Str(String, usize),
}

/// A compiled condition and the features it reads.
#[derive(Clone, Debug)]
pub struct Condition {
    root: Cond,
    reads: Vec<usize>,
    source: String,
}

impl Condition {
    /// Compiles `source`.
    pub fn compile(source: &str) -> Result<Condition, ExprError> {
        let tokens = lex(source)?;
        let mut p = Parser { tokens, pos: 0, reads: Vec::new() };
        let root = p.condition()?;
        let (at, tok) = p.peek();
        if *tok != Tok::End {
            return Err(err(at, format!("unexpected {tok} after a complete condition")));
        }
        let mut reads = p.reads;
        reads.sort_unstable();
        reads.dedup();
        Ok(Condition { root, reads, source: source.to_owned() })
    }

    /// Evaluates the condition on a feature vector.
    #[inline]
    pub fn eval(&self, f: &Features) -> bool {
        self.root.eval(f)
    }

    /// The features the condition reads, in index order.
    pub fn reads(&self) -> &[usize] {
        &self.reads
    }

    /// The source text.
    pub fn source(&self) -> &str {
        &self.source
    }
}

struct Parser {
    tokens: Vec<(usize, Tok)>,
    pos: usize,
    reads: Vec<usize>,
}

impl Parser {
    fn peek(&self) -> (usize, &Tok) {
        let (at, tok) = &self.tokens[self.pos.min(self.tokens.len() - 1)];
        (*at, tok)
    }

    fn next(&mut self) -> (usize, Tok) {
        let t = self.tokens[self.pos.min(self.tokens.len() - 1)].clone();
        self.pos += 1;
        t
    }

    fn expect(&mut self, op: &'static str) -> Result<(), ExprError> {
        let (at, tok) = self.next();
        if tok == Tok::Op(op) { Ok(()) } else { Err(err(at, format!("expected {op:?}, found {tok}"))) }
    }

    fn condition(&mut self) -> Result<Cond, ExprError> {
        let at = self.peek().0;
        let v = self.or()?;
        self.as_bool(v, at)
    }

    fn as_bool(&self, v: Typed, at: usize) -> Result<Cond, ExprError> {
        match v {
            Typed::Bool(c) => Ok(c),
            Typed::Num(_) => Err(err(at, "a number where a condition was expected (compare it with something)")),
            Typed::Name(..) => Err(err(at, "a name where a condition was expected (compare it with a string)")),
            Typed::Str(..) => Err(err(at, "a string where a condition was expected")),
        }
    }

    fn as_num(&self, v: Typed, at: usize) -> Result<Num, ExprError> {
        match v {
            Typed::Num(n) => Ok(n),
            _ => Err(err(at, "a number was expected here")),
        }
    }

    fn or(&mut self) -> Result<Typed, ExprError> {
        let at = self.peek().0;
        let first = self.and()?;
        if *self.peek().1 != Tok::Or {
            return Ok(first);
        }
        let mut parts = vec![self.as_bool(first, at)?];
        while *self.peek().1 == Tok::Or {
            self.next();
            let at = self.peek().0;
            let v = self.and()?;
            parts.push(self.as_bool(v, at)?);
        }
        Ok(Typed::Bool(Cond::Or(parts.into_boxed_slice())))
    }

    fn and(&mut self) -> Result<Typed, ExprError> {
        let at = self.peek().0;
        let first = self.not()?;
        if *self.peek().1 != Tok::And {
            return Ok(first);
        }
        let mut parts = vec![self.as_bool(first, at)?];
        while *self.peek().1 == Tok::And {
            self.next();
            let at = self.peek().0;
            let v = self.not()?;
            parts.push(self.as_bool(v, at)?);
        }
        Ok(Typed::Bool(Cond::And(parts.into_boxed_slice())))
    }

    fn not(&mut self) -> Result<Typed, ExprError> {
        if *self.peek().1 == Tok::Not && self.tokens.get(self.pos + 1).map(|t| &t.1) != Some(&Tok::In) {
            self.next();
            let at = self.peek().0;
            let v = self.not()?;
            return Ok(Typed::Bool(Cond::Not(Box::new(self.as_bool(v, at)?))));
        }
        self.compare()
    }

    fn compare(&mut self) -> Result<Typed, ExprError> {
        let at = self.peek().0;
        let left = self.sum()?;
        let (op_at, tok) = self.peek();
        let tok = tok.clone();
        match tok {
            Tok::Op(op @ ("<" | "<=" | ">" | ">=" | "==" | "!=")) => {
                self.next();
                let right_at = self.peek().0;
                let right = self.sum()?;
                self.compare_values(left, at, op, op_at, right, right_at)
            }
            Tok::In | Tok::Not => {
                let negated = tok == Tok::Not;
                if negated {
                    self.next();
                    if *self.peek().1 != Tok::In {
                        let (a, t) = self.peek();
                        return Err(err(a, format!("expected \"in\" after \"not\", found {t}")));
                    }
                }
                self.next();
                let Typed::Name(feature, domain) = left else {
                    return Err(err(at, "only names (kind, factor, change, country) can be tested with \"in\""));
                };
                self.expect("[")?;
                let mut codes = Vec::new();
                loop {
                    let (lit_at, lit) = self.next();
                    let Tok::Str(s) = lit else {
                        return Err(err(lit_at, format!("expected a string in the list, found {lit}")));
                    };
                    codes.push(code_of(domain, &s, lit_at)?);
                    let (sep_at, sep) = self.next();
                    match sep {
                        Tok::Op(",") => continue,
                        Tok::Op("]") => break,
                        other => return Err(err(sep_at, format!("expected \",\" or \"]\", found {other}"))),
                    }
                }
                Ok(Typed::Bool(Cond::In(feature, codes.into_boxed_slice(), negated)))
            }
            _ => Ok(left),
        }
    }

    fn compare_values(
        &self,
        left: Typed,
        at: usize,
        op: &'static str,
        op_at: usize,
        right: Typed,
        right_at: usize,
    ) -> Result<Typed, ExprError> {
        let cmp = match op {
            "<" => Cmp::Lt,
            "<=" => Cmp::Le,
            ">" => Cmp::Gt,
            ">=" => Cmp::Ge,
            "==" => Cmp::Eq,
            _ => Cmp::Ne,
        };
        let equality = matches!(cmp, Cmp::Eq | Cmp::Ne);
        match (left, right) {
            (Typed::Num(a), Typed::Num(b)) => Ok(Typed::Bool(Cond::Cmp(cmp, a, b))),
            (Typed::Name(f, d), Typed::Str(s, s_at)) | (Typed::Str(s, s_at), Typed::Name(f, d)) if equality => {
                Ok(Typed::Bool(Cond::In(f, vec![code_of(d, &s, s_at)?].into_boxed_slice(), cmp == Cmp::Ne)))
            }
            (Typed::Bool(a), Typed::Bool(b)) if equality => {
                // a == b is (a and b) or (not a and not b); with a constant side it folds to the other side.
                let same = match (a, b) {
                    (c, Cond::Const(k)) | (Cond::Const(k), c) => {
                        if k {
                            c
                        } else {
                            Cond::Not(Box::new(c))
                        }
                    }
                    (a, b) => Cond::Or(
                        vec![
                            Cond::And(vec![a.clone(), b.clone()].into_boxed_slice()),
                            Cond::And(vec![Cond::Not(Box::new(a)), Cond::Not(Box::new(b))].into_boxed_slice()),
                        ]
                        .into_boxed_slice(),
                    ),
                };
                Ok(Typed::Bool(if cmp == Cmp::Eq { same } else { Cond::Not(Box::new(same)) }))
            }
            (Typed::Name(..), _) | (_, Typed::Name(..)) => {
                Err(err(op_at, format!("a name compares only with == or != against a string, not with {op}")))
            }
            (Typed::Bool(_), _) | (_, Typed::Bool(_)) => {
                Err(err(op_at, format!("a condition compares only with == or != against another, not with {op}")))
            }
            (Typed::Str(..), _) => Err(err(at, "a string compares only with a name (kind, factor, change, country)")),
            (_, Typed::Str(..)) => {
                Err(err(right_at, "a string compares only with a name (kind, factor, change, country)"))
            }
        }
    }

    fn sum(&mut self) -> Result<Typed, ExprError> {
        let at = self.peek().0;
        let mut left = self.product()?;
        while let (_, Tok::Op(op @ ("+" | "-"))) = self.peek() {
            let op = *op;
            self.next();
            let right_at = self.peek().0;
            let right = self.product()?;
            let (a, b) = (Box::new(self.as_num(left, at)?), Box::new(self.as_num(right, right_at)?));
            left = Typed::Num(if op == "+" { Num::Add(a, b) } else { Num::Sub(a, b) });
        }
        Ok(left)
    }

    fn product(&mut self) -> Result<Typed, ExprError> {
        let at = self.peek().0;
        let mut left = self.unary()?;
        while let (_, Tok::Op(op @ ("*" | "/"))) = self.peek() {
            let op = *op;
            self.next();
            let right_at = self.peek().0;
            let right = self.unary()?;
            let (a, b) = (Box::new(self.as_num(left, at)?), Box::new(self.as_num(right, right_at)?));
            left = Typed::Num(if op == "*" { Num::Mul(a, b) } else { Num::Div(a, b) });
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Typed, ExprError> {
        if *self.peek().1 == Tok::Op("-") {
            self.next();
            let at = self.peek().0;
            let v = self.unary()?;
            return Ok(Typed::Num(match self.as_num(v, at)? {
                Num::Const(c) => Num::Const(-c),
                n => Num::Neg(Box::new(n)),
            }));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Typed, ExprError> {
        let (at, tok) = self.next();
        match tok {
            Tok::Num(n) => Ok(Typed::Num(Num::Const(n))),
            Tok::Str(s) => Ok(Typed::Str(s, at)),
            Tok::True => Ok(Typed::Bool(Cond::Const(true))),
            Tok::False => Ok(Typed::Bool(Cond::Const(false))),
            Tok::Op("(") => {
                let v = self.or()?;
                self.expect(")")?;
                Ok(v)
            }
            Tok::Ident(name) => {
                let Some((index, ty)) = features::lookup(&name) else {
                    return Err(err(at, format!("unknown feature {name:?}")));
                };
                self.reads.push(index);
                let index = u16::try_from(index).map_err(|_| err(at, "too many features"))?;
                Ok(match ty {
                    Type::Num => Typed::Num(Num::Feat(index)),
                    Type::Bool => Typed::Bool(Cond::Flag(index)),
                    Type::Str(domain) => Typed::Name(index, domain),
                })
            }
            other => Err(err(at, format!("unexpected {other}"))),
        }
    }
}

fn code_of(domain: features::Domain, s: &str, at: usize) -> Result<i64, ExprError> {
    domain.code(s).ok_or_else(|| err(at, format!("{s:?} is not a {}", domain_name(domain))))
}

fn domain_name(domain: features::Domain) -> &'static str {
    match domain {
        features::Domain::Kind => "kind of event",
        features::Domain::Factor => "sign-in factor",
        features::Domain::Change => "security change",
        features::Domain::Country => "two-letter upper-case country code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{COUNT, f, lookup};

    fn vector(set: &[(&str, i64)]) -> Features {
        let mut v = [0i64; COUNT];
        for (name, value) in set {
            v[lookup(name).unwrap().0] = *value;
        }
        v
    }

    fn eval(src: &str, set: &[(&str, i64)]) -> bool {
        Condition::compile(src).unwrap_or_else(|e| panic!("{src}: {e}")).eval(&vector(set))
    }

    #[test]
    fn conditions_evaluate_with_exact_decimals() {
        assert!(eval("deviation > 0.5", &[("deviation", 500_001)]));
        assert!(!eval("deviation > 0.5", &[("deviation", 500_000)]));
        assert!(eval("amount_usd >= 10_000 and not ip_known", &[("amount_usd", 10_000 * SCALE)]));
        assert!(eval("amount_usd / 2 > 4000", &[("amount_usd", 10_000 * SCALE)]));
        assert!(eval("amount_usd * 0.1 == 1000", &[("amount_usd", 10_000 * SCALE)]));
        assert!(eval("-1 < 0 and 1 / 0 == 0", &[]));
        assert!(eval("ip_known == false and device_known != true", &[]));
        assert!(eval("ip_known == device_known", &[("ip_known", 1), ("device_known", 1)]));
        assert!(!eval("ip_known == device_known", &[("ip_known", 1)]));
        assert!(eval("not not true && !false || false", &[]));
    }

    #[test]
    fn names_compare_with_strings_of_their_domain() {
        let kind = Domain::Kind.code("withdrawal").unwrap();
        assert!(eval(r#"kind == "withdrawal""#, &[("kind", kind)]));
        assert!(eval(r#""withdrawal" == kind"#, &[("kind", kind)]));
        assert!(eval(r#"kind in ["deposit", "withdrawal"]"#, &[("kind", kind)]));
        assert!(!eval(r#"kind not in ["deposit", "withdrawal"]"#, &[("kind", kind)]));
        let kp = Domain::Country.code("KP").unwrap();
        assert!(eval(r#"country in ["KP", "IR"]"#, &[("country", kp)]));
        assert!(eval(r#"country != "DE""#, &[("country", kp)]));
    }

    use crate::features::Domain;

    #[test]
    fn mistakes_are_named_with_their_column() {
        for (src, needle) in [
            ("deviaton > 0.5", "unknown feature \"deviaton\""),
            (r#"kind == "withdrawl""#, "\"withdrawl\" is not a kind of event"),
            (r#"country == "de""#, "country code"),
            ("deviation > ", "unexpected the end"),
            ("deviation", "a number where a condition"),
            ("kind > 3", "a name compares only"),
            ("ip_known < true", "a condition compares only"),
            ("amount_usd > 0.0000001", "more than six decimals"),
            ("amount_usd > 1.2.3", "is not a number"),
            ("(deviation > 0.5", "expected \")\""),
            ("deviation > 0.5 deviation", "after a complete condition"),
            ("amount_usd > 1 + ip_known", "a number was expected"),
            ("deviation # 1", "unexpected character"),
            (r#"kind == "open"#, "never ends"),
            (r#"deviation in ["x"]"#, "only names"),
            (r#"kind in [1]"#, "expected a string"),
            ("amount_usd > 99999999999999", "too large"),
        ] {
            let e = Condition::compile(src).expect_err(src);
            assert!(e.to_string().contains(needle), "{src}: {e}");
            assert!(e.to_string().starts_with("at column "), "{e}");
        }
        let e = Condition::compile("deviation > 0.5 and kind == \"x\"").unwrap_err();
        assert_eq!(e.at, 28);
    }

    #[test]
    fn reads_lists_each_feature_once() {
        let c = Condition::compile("deviation > 0.5 and (deviation < 2 or ip_known)").unwrap();
        assert_eq!(c.reads(), &[f::IP_KNOWN, f::DEVIATION][..]);
    }

    proptest::proptest! {
        /// Whatever the text, compiling answers (a condition or an error with a column inside the text), never panics.
        #[test]
        fn compiling_never_panics(src in "[ -~]{0,60}") {
            if let Err(e) = Condition::compile(&src) {
                proptest::prop_assert!(e.at <= src.len());
            }
        }

        /// Numbers print and parse back exactly.
        #[test]
        fn numbers_round_trip(v in 0i64..1_000_000_000_000_000) {
            proptest::prop_assert_eq!(parse_number(&features::display_num(v)), Ok(v));
        }
    }
}
