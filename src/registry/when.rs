//! `when:` conditions: a tiny, deterministic expression language with no code in it.
//!
//! ```text
//! expr       := or
//! or         := and ( "||" and )*
//! and        := unary ( "&&" unary )*
//! unary      := "!" unary | "(" expr ")" | "true" | "false" | comparison
//! comparison := "severity" OP LEVEL
//!             | NAME OP LITERAL          NAME = subject.X | decision.X | execution.id
//! OP         := == | != | < | <= | > | >=
//! LITERAL    := "text" (\" and \\ escapes) | integer | true | false
//! LEVEL      := low | medium | moderate | high | critical
//! ```
//!
//! Severity is ordered `low < medium < high < critical`; `moderate` is accepted as another
//! spelling of `medium` (the risk tiers say `moderate`). `severity` is short for
//! `decision.severity`. `<`, `<=`, `>`, `>=` compare integers (or severities) only; strings
//! and booleans take `==` and `!=`. A missing subject field, a value of the wrong type or a
//! decision severity outside the known levels is an evaluation error, never `false`: the
//! caller decides, and fails closed.
//!
//! Input length and nesting depth are bounded so a hostile document cannot exhaust the stack.

use serde_json::Value;

use super::template::{DecisionField, Reference, TemplateContext, TemplateError};

/// The longest `when:` text accepted.
pub const MAX_LEN: usize = 1024;
/// The deepest nesting of `(` and `!` accepted.
pub const MAX_DEPTH: usize = 16;

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Const(bool),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Compare {
        name: Reference,
        op: Op,
        value: Literal,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// The right-hand side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Text(String),
    Integer(i64),
    Bool(bool),
    Severity(Severity),
}

/// Decision severity levels, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// Parses a level name; `moderate` is another spelling of `medium`.
    pub fn parse(name: &str) -> Option<Severity> {
        match name {
            "low" => Some(Severity::Low),
            "medium" | "moderate" => Some(Severity::Medium),
            "high" => Some(Severity::High),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WhenError {
    #[error("condition is {0} characters long; the limit is {MAX_LEN}")]
    TooLong(usize),
    #[error("condition nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("condition is empty")]
    Empty,
    #[error("unexpected character `{0}` at offset {1}")]
    BadChar(char, usize),
    #[error("unterminated string literal")]
    UnterminatedString,
    #[error("integer `{0}` is out of range")]
    BadInteger(String),
    #[error("expected {expected}, found {found}")]
    Expected {
        expected: &'static str,
        found: String,
    },
    #[error("unknown name `{0}`")]
    UnknownName(String),
    #[error("`{0}` is not a severity level (low, medium, moderate, high, critical)")]
    BadSeverity(String),
    #[error("`{op}` compares integers or severities only, not {what}")]
    NotOrdered {
        op: &'static str,
        what: &'static str,
    },
    #[error("cannot evaluate: {0}")]
    Missing(#[from] TemplateError),
    #[error("cannot compare `{name}` ({found}) with {expected}")]
    TypeMismatch {
        name: String,
        found: &'static str,
        expected: &'static str,
    },
    #[error("decision severity `{0}` is not one of low, medium, moderate, high, critical")]
    UnknownSeverity(String),
}

/// Parses one condition.
pub fn parse(text: &str) -> Result<Expr, WhenError> {
    if text.len() > MAX_LEN {
        return Err(WhenError::TooLong(text.len()));
    }
    let tokens = lex(text)?;
    if tokens.is_empty() {
        return Err(WhenError::Empty);
    }
    let mut parser = Parser { tokens, pos: 0 };
    let expr = parser.or(0)?;
    match parser.peek() {
        None => Ok(expr),
        Some(token) => Err(WhenError::Expected {
            expected: "end of condition",
            found: token.describe(),
        }),
    }
}

impl Expr {
    /// Evaluates the condition against a run's decision.
    pub fn eval(&self, ctx: &TemplateContext<'_>) -> Result<bool, WhenError> {
        match self {
            Expr::Const(value) => Ok(*value),
            Expr::Not(inner) => Ok(!inner.eval(ctx)?),
            // Both sides are evaluated (no short-circuit) so an error anywhere is reported the
            // same way whatever the other side says: the outcome never hides a bad input.
            Expr::And(a, b) => {
                let (a, b) = (a.eval(ctx)?, b.eval(ctx)?);
                Ok(a && b)
            }
            Expr::Or(a, b) => {
                let (a, b) = (a.eval(ctx)?, b.eval(ctx)?);
                Ok(a || b)
            }
            Expr::Compare { name, op, value } => compare(name, *op, value, ctx),
        }
    }

    /// Every name the condition reads, in order.
    pub fn names(&self) -> Vec<&Reference> {
        let mut names = Vec::new();
        self.comparisons(&mut |name, _| names.push(name));
        names
    }

    /// Every (name, literal) comparison in the condition, for type checks at load.
    pub fn subject_comparisons(&self) -> Vec<(&str, &Literal)> {
        let mut found = Vec::new();
        self.comparisons(&mut |name, literal| {
            if let Reference::Subject(field) = name {
                found.push((field.as_str(), literal));
            }
        });
        found
    }

    fn comparisons<'a>(&'a self, f: &mut dyn FnMut(&'a Reference, &'a Literal)) {
        match self {
            Expr::Const(_) => {}
            Expr::Not(inner) => inner.comparisons(f),
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.comparisons(f);
                b.comparisons(f);
            }
            Expr::Compare { name, value, .. } => f(name, value),
        }
    }
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    fn is_equality(self) -> bool {
        matches!(self, Op::Eq | Op::Ne)
    }

    fn holds<T: Ord>(self, left: &T, right: &T) -> bool {
        match self {
            Op::Eq => left == right,
            Op::Ne => left != right,
            Op::Lt => left < right,
            Op::Le => left <= right,
            Op::Gt => left > right,
            Op::Ge => left >= right,
        }
    }
}

impl Literal {
    /// `a string`, `an integer`, … for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Literal::Text(_) => "a string",
            Literal::Integer(_) => "an integer",
            Literal::Bool(_) => "a boolean",
            Literal::Severity(_) => "a severity",
        }
    }
}

fn compare(
    name: &Reference,
    op: Op,
    literal: &Literal,
    ctx: &TemplateContext<'_>,
) -> Result<bool, WhenError> {
    let actual = name.resolve(ctx)?;
    let mismatch = |found: &'static str| WhenError::TypeMismatch {
        name: name.to_string(),
        found,
        expected: literal.kind(),
    };
    match (literal, &actual) {
        (Literal::Severity(level), Value::String(text)) => {
            let actual =
                Severity::parse(text).ok_or_else(|| WhenError::UnknownSeverity(text.clone()))?;
            Ok(op.holds(&actual, level))
        }
        (Literal::Text(expected), Value::String(text)) => {
            Ok(op.holds(&text.as_str(), &expected.as_str()))
        }
        (Literal::Integer(expected), Value::Number(number)) => {
            let actual = number
                .as_i64()
                .ok_or_else(|| mismatch("a non-integer number"))?;
            Ok(op.holds(&actual, expected))
        }
        (Literal::Bool(expected), Value::Bool(actual)) => Ok(op.holds(actual, expected)),
        (_, Value::String(_)) => Err(mismatch("a string")),
        (_, Value::Number(_)) => Err(mismatch("a number")),
        (_, Value::Bool(_)) => Err(mismatch("a boolean")),
        (_, Value::Null) => Err(mismatch("null")),
        (_, Value::Array(_)) => Err(mismatch("a list")),
        (_, Value::Object(_)) => Err(mismatch("an object")),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    LParen,
    RParen,
    Not,
    And,
    Or,
    Op(Op),
    Word(String),
    Text(String),
    Integer(i64),
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::LParen => "`(`".into(),
            Token::RParen => "`)`".into(),
            Token::Not => "`!`".into(),
            Token::And => "`&&`".into(),
            Token::Or => "`||`".into(),
            Token::Op(op) => format!("`{}`", op.as_str()),
            Token::Word(word) => format!("`{word}`"),
            Token::Text(text) => format!("\"{text}\""),
            Token::Integer(n) => format!("`{n}`"),
        }
    }
}

fn lex(text: &str) -> Result<Vec<Token>, WhenError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let mut next_is = |expected: char| chars.next_if(|(_, c)| *c == expected).is_some();
        let token = match c {
            c if c.is_whitespace() => continue,
            '(' => Token::LParen,
            ')' => Token::RParen,
            '&' if next_is('&') => Token::And,
            '|' if next_is('|') => Token::Or,
            '=' if next_is('=') => Token::Op(Op::Eq),
            '!' if next_is('=') => Token::Op(Op::Ne),
            '!' => Token::Not,
            '<' if next_is('=') => Token::Op(Op::Le),
            '<' => Token::Op(Op::Lt),
            '>' if next_is('=') => Token::Op(Op::Ge),
            '>' => Token::Op(Op::Gt),
            '"' => {
                let mut literal = String::new();
                loop {
                    match chars.next() {
                        None => return Err(WhenError::UnterminatedString),
                        Some((_, '"')) => break,
                        Some((at, '\\')) => match chars.next() {
                            Some((_, escaped @ ('"' | '\\'))) => literal.push(escaped),
                            _ => return Err(WhenError::BadChar('\\', at)),
                        },
                        Some((_, c)) => literal.push(c),
                    }
                }
                Token::Text(literal)
            }
            c if c == '-' || c.is_ascii_digit() => {
                let mut digits = String::from(c);
                while let Some((_, d)) = chars.next_if(|(_, d)| d.is_ascii_digit()) {
                    digits.push(d);
                }
                let value = digits
                    .parse()
                    .map_err(|_| WhenError::BadInteger(digits.clone()))?;
                Token::Integer(value)
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut word = String::from(c);
                while let Some((_, d)) =
                    chars.next_if(|(_, d)| d.is_ascii_alphanumeric() || *d == '_' || *d == '.')
                {
                    word.push(d);
                }
                Token::Word(word)
            }
            other => return Err(WhenError::BadChar(other, at)),
        };
        tokens.push(token);
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self, expected: &'static str) -> Result<Token, WhenError> {
        let token = self
            .tokens
            .get(self.pos)
            .cloned()
            .ok_or(WhenError::Expected {
                expected,
                found: "end of condition".into(),
            })?;
        self.pos += 1;
        Ok(token)
    }

    fn or(&mut self, depth: usize) -> Result<Expr, WhenError> {
        self.chain(depth, &Token::Or, Self::and, Expr::Or)
    }

    fn and(&mut self, depth: usize) -> Result<Expr, WhenError> {
        self.chain(depth, &Token::And, Self::unary, Expr::And)
    }

    /// `operand (op operand)*`, grouped to the left (`a or b or c` is `(a or b) or c`).
    fn chain(
        &mut self,
        depth: usize,
        op: &Token,
        operand: fn(&mut Self, usize) -> Result<Expr, WhenError>,
        join: fn(Box<Expr>, Box<Expr>) -> Expr,
    ) -> Result<Expr, WhenError> {
        let mut left = operand(self, depth)?;
        while self.peek() == Some(op) {
            self.pos += 1;
            left = join(Box::new(left), Box::new(operand(self, depth)?));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, WhenError> {
        if depth >= MAX_DEPTH {
            return Err(WhenError::TooDeep);
        }
        match self.next("a condition")? {
            Token::Not => Ok(Expr::Not(Box::new(self.unary(depth + 1)?))),
            Token::LParen => {
                let inner = self.or(depth + 1)?;
                match self.next("`)`")? {
                    Token::RParen => Ok(inner),
                    other => Err(WhenError::Expected {
                        expected: "`)`",
                        found: other.describe(),
                    }),
                }
            }
            Token::Word(word) if word == "true" => Ok(Expr::Const(true)),
            Token::Word(word) if word == "false" => Ok(Expr::Const(false)),
            Token::Word(word) => self.comparison(&word),
            other => Err(WhenError::Expected {
                expected: "a condition",
                found: other.describe(),
            }),
        }
    }

    fn comparison(&mut self, word: &str) -> Result<Expr, WhenError> {
        let name = if word == "severity" {
            Reference::Decision(DecisionField::Severity)
        } else {
            Reference::parse(word).map_err(|_| WhenError::UnknownName(word.to_owned()))?
        };
        let op = match self.next("a comparison operator")? {
            Token::Op(op) => op,
            other => {
                return Err(WhenError::Expected {
                    expected: "a comparison operator",
                    found: other.describe(),
                });
            }
        };
        let value = match (&name, self.next("a value")?) {
            (Reference::Decision(DecisionField::Severity), Token::Word(level)) => {
                Literal::Severity(Severity::parse(&level).ok_or(WhenError::BadSeverity(level))?)
            }
            (_, Token::Text(text)) => Literal::Text(text),
            (_, Token::Integer(n)) => Literal::Integer(n),
            (_, Token::Word(word)) if word == "true" => Literal::Bool(true),
            (_, Token::Word(word)) if word == "false" => Literal::Bool(false),
            (_, other) => {
                return Err(WhenError::Expected {
                    expected: "a string, an integer or true/false",
                    found: other.describe(),
                });
            }
        };
        if !op.is_equality() && matches!(value, Literal::Text(_) | Literal::Bool(_)) {
            return Err(WhenError::NotOrdered {
                op: op.as_str(),
                what: value.kind(),
            });
        }
        Ok(Expr::Compare { name, op, value })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::registry::template::with_test_context;

    fn eval(text: &str, severity: &str, subject: Value) -> Result<bool, WhenError> {
        with_test_context(subject, severity, |ctx| parse(text)?.eval(ctx))
    }

    #[test]
    fn severity_is_ordered_and_moderate_means_medium() {
        assert!(eval("severity >= high", "critical", json!({})).unwrap());
        assert!(eval("severity >= high", "high", json!({})).unwrap());
        assert!(!eval("severity >= high", "medium", json!({})).unwrap());
        assert!(eval("severity == moderate", "medium", json!({})).unwrap());
        assert!(eval("decision.severity < medium", "low", json!({})).unwrap());
    }

    #[test]
    fn unknown_decision_severity_is_an_error_not_false() {
        let error = eval("severity >= high", "urgent", json!({})).unwrap_err();
        assert_eq!(error, WhenError::UnknownSeverity("urgent".into()));
    }

    #[test]
    fn subject_comparisons_logic_and_precedence() {
        let subject = json!({"user": "alice", "attempts": 42, "admin": false});
        assert!(
            eval(
                r#"subject.user == "alice" && subject.attempts > 10"#,
                "low",
                subject.clone()
            )
            .unwrap()
        );
        assert!(
            !eval(
                r#"subject.user != "alice" || subject.attempts <= 10"#,
                "low",
                subject.clone()
            )
            .unwrap()
        );
        // && binds tighter than ||.
        assert!(eval("true || false && false", "low", subject.clone()).unwrap());
        assert!(!eval("(true || false) && false", "low", subject.clone()).unwrap());
        assert!(
            eval(
                "!(subject.admin == true) && subject.attempts == 42",
                "low",
                subject.clone()
            )
            .unwrap()
        );
        assert!(
            eval(
                r#"decision.org_id == "acme" && subject.attempts >= -1"#,
                "low",
                subject
            )
            .unwrap()
        );
    }

    #[test]
    fn a_missing_field_or_wrong_type_is_an_error() {
        assert!(matches!(
            eval("subject.pid == 1", "low", json!({})).unwrap_err(),
            WhenError::Missing(TemplateError::MissingSubjectField(name)) if name == "pid"
        ));
        assert!(matches!(
            eval("subject.pid == 1", "low", json!({"pid": "1"})).unwrap_err(),
            WhenError::TypeMismatch { .. }
        ));
    }

    #[test]
    fn malformed_conditions_are_refused() {
        for (text, expected) in [
            ("", WhenError::Empty),
            (
                "severity >= urgent",
                WhenError::BadSeverity("urgent".into()),
            ),
            (
                "subject.user < \"b\"",
                WhenError::NotOrdered {
                    op: "<",
                    what: "a string",
                },
            ),
            (
                "env.HOME == \"x\"",
                WhenError::UnknownName("env.HOME".into()),
            ),
            ("\"unterminated", WhenError::UnterminatedString),
            ("subject.a = 1", WhenError::BadChar('=', 10)),
        ] {
            assert_eq!(parse(text).unwrap_err(), expected, "{text}");
        }
        for text in [
            "subject.a ==",
            "(true",
            "true)",
            "true false",
            "subject.a 1",
            "&& true",
        ] {
            assert!(
                matches!(parse(text).unwrap_err(), WhenError::Expected { .. }),
                "{text}"
            );
        }
    }

    #[test]
    fn deep_nesting_and_long_text_are_refused() {
        let deep = format!(
            "{}true{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(parse(&deep).unwrap_err(), WhenError::TooDeep);
        let nots = format!("{}true", "!".repeat(MAX_DEPTH + 1));
        assert_eq!(parse(&nots).unwrap_err(), WhenError::TooDeep);
        let shallow = format!(
            "{}true{}",
            "(".repeat(MAX_DEPTH - 1),
            ")".repeat(MAX_DEPTH - 1)
        );
        assert_eq!(parse(&shallow).unwrap(), Expr::Const(true));
        let long = format!("true{}", " ".repeat(MAX_LEN));
        assert_eq!(parse(&long).unwrap_err(), WhenError::TooLong(MAX_LEN + 4));
    }

    #[test]
    fn names_lists_every_reference() {
        let expr = parse(r#"severity >= high && (subject.user == "a" || !(execution.id != "x"))"#)
            .unwrap();
        assert_eq!(
            expr.names(),
            vec![
                &Reference::Decision(DecisionField::Severity),
                &Reference::Subject("user".into()),
                &Reference::ExecutionId
            ]
        );
    }
}
