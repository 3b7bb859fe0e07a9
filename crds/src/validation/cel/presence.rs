//! The CEL rules that read only which fields of `self` are present, evaluated without CEL.
//!
//! Most of Trellis' rules say "not this field" (`!has(self.delegate)`, see
//! `crate::schema::unsupported`), "not both" (`!(has(self.port) && has(self.derivePort))`) or
//! "at most one" (`(has(self.exact) ? 1 : 0) + (has(self.prefix) ? 1 : 0) <= 1`). Evaluating
//! one with kube-cel copies the value at the rule's node, converts the copy to a CEL value and
//! opens a scope for it — for a rule whose answer is which keys a JSON mapping holds. [`Test`]
//! is such a rule, parsed; [`Test::holds`] answers it from the mapping's keys.
//!
//! # Guarantees
//! - A rule is parsed only when it is made of nothing but `has(self.<field>)`, `!`, `&&`, `||`,
//!   parentheses, and sums of `(has(self.<field>) ? 1 : 0)` compared with an integer; every
//!   other rule is `None` (kube-cel evaluates it).
//! - On a mapping, [`Test::holds`] is what CEL computes: kube-cel converts every key of a
//!   mapping, null values included, to a key of a CEL map (escaping `_`, `.`, `-`, `/` and
//!   reserved words, which a parsed field name never has), and `has()` on a map is whether the
//!   key is there. A value that is
//!   not a mapping is never tested here (the caller leaves it to kube-cel).

use serde_json::{Map, Value};

/// A rule over the presence of `self`'s fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Test {
    /// `has(self.<field>)`.
    Has(String),
    /// `!test`.
    Not(Box<Test>),
    /// `a && b`.
    And(Box<Test>, Box<Test>),
    /// `a || b`.
    Or(Box<Test>, Box<Test>),
    /// `(has(self.a) ? 1 : 0) + … <op> n`: how many of the fields are present, compared.
    Count {
        /// The fields counted (a field named twice counts twice, as in CEL).
        fields: Vec<String>,
        /// The comparison.
        op: Compare,
        /// The integer compared with.
        n: i64,
    },
}

/// An integer comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compare {
    Less,
    LessOrEqual,
    Equal,
    NotEqual,
    GreaterOrEqual,
    Greater,
}

impl Compare {
    fn of(token: &str) -> Option<Compare> {
        Some(match token {
            "<" => Compare::Less,
            "<=" => Compare::LessOrEqual,
            "==" => Compare::Equal,
            "!=" => Compare::NotEqual,
            ">=" => Compare::GreaterOrEqual,
            ">" => Compare::Greater,
            _ => return None,
        })
    }

    fn holds(self, a: i64, b: i64) -> bool {
        match self {
            Compare::Less => a < b,
            Compare::LessOrEqual => a <= b,
            Compare::Equal => a == b,
            Compare::NotEqual => a != b,
            Compare::GreaterOrEqual => a >= b,
            Compare::Greater => a > b,
        }
    }
}

impl Test {
    /// The rule `rule`, when it reads nothing but the presence of `self`'s fields.
    pub(super) fn parse(rule: &str) -> Option<Test> {
        let tokens = tokens(rule)?;
        let mut parser = Parser { tokens: &tokens, at: 0 };
        let test = parser.count().or_else(|| {
            parser.at = 0;
            parser.or()
        })?;
        (parser.at == tokens.len()).then_some(test)
    }

    /// Whether the rule holds for the mapping `object`.
    pub(super) fn holds(&self, object: &Map<String, Value>) -> bool {
        match self {
            Test::Has(field) => object.contains_key(field),
            Test::Not(t) => !t.holds(object),
            Test::And(a, b) => a.holds(object) && b.holds(object),
            Test::Or(a, b) => a.holds(object) || b.holds(object),
            Test::Count { fields, op, n } => {
                let present = fields.iter().filter(|f| object.contains_key(f.as_str())).count();
                op.holds(i64::try_from(present).unwrap_or(i64::MAX), *n)
            }
        }
    }
}

/// The words CEL reserves: a field named so is escaped (`__in__`) in the CEL value, so a rule
/// naming it is left to kube-cel.
const RESERVED: [&str; 21] = [
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// A field name that kube-cel's conversion keeps as it is, and that no other key becomes: a
/// letter then letters and digits (`_`, `.`, `-` and `/` are escaped, each into something with
/// `__`), not a word CEL reserves (escaped as `__in__`).
fn plain_field(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric())
        && !RESERVED.contains(&name)
}

/// The rule's tokens: identifiers, integers, and the operators a presence rule uses; `None`
/// at anything else (strings, floats, other operators).
fn tokens(rule: &str) -> Option<Vec<&str>> {
    let bytes = rule.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_alphanumeric() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
        } else {
            let two = rule.get(i..i + 2);
            i += match two {
                Some("&&" | "||" | "<=" | ">=" | "==" | "!=") => 2,
                _ if b"()!.?:+<>".contains(&c) => 1,
                _ => return None,
            };
        }
        out.push(&rule[start..i]);
    }
    Some(out)
}

struct Parser<'a> {
    tokens: &'a [&'a str],
    at: usize,
}

impl<'a> Parser<'a> {
    fn next(&mut self) -> Option<&'a str> {
        let t = self.tokens.get(self.at).copied();
        self.at += 1;
        t
    }

    fn peek(&self) -> Option<&'a str> {
        self.tokens.get(self.at).copied()
    }

    fn expect(&mut self, token: &str) -> Option<()> {
        (self.next()? == token).then_some(())
    }

    /// `has(self.<field>)`: the field.
    fn has(&mut self) -> Option<String> {
        self.expect("has")?;
        self.expect("(")?;
        self.expect("self")?;
        self.expect(".")?;
        let field = self.next()?;
        self.expect(")")?;
        plain_field(field).then(|| field.to_string())
    }

    /// `(has(self.a) ? 1 : 0) + … <op> n`.
    fn count(&mut self) -> Option<Test> {
        let mut fields = Vec::new();
        loop {
            self.expect("(")?;
            fields.push(self.has()?);
            self.expect("?")?;
            self.expect("1")?;
            self.expect(":")?;
            self.expect("0")?;
            self.expect(")")?;
            if self.peek() != Some("+") {
                break;
            }
            self.next();
        }
        let op = Compare::of(self.next()?)?;
        let n = self.next()?;
        // why: only plain decimal integers (CEL would read `0x1`, `1u` otherwise).
        let n = n
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| n.parse().ok())
            .flatten()?;
        Some(Test::Count { fields, op, n })
    }

    fn or(&mut self) -> Option<Test> {
        let mut left = self.and()?;
        while self.peek() == Some("||") {
            self.next();
            left = Test::Or(Box::new(left), Box::new(self.and()?));
        }
        Some(left)
    }

    fn and(&mut self) -> Option<Test> {
        let mut left = self.unary()?;
        while self.peek() == Some("&&") {
            self.next();
            left = Test::And(Box::new(left), Box::new(self.unary()?));
        }
        Some(left)
    }

    fn unary(&mut self) -> Option<Test> {
        match self.peek()? {
            "!" => {
                self.next();
                Some(Test::Not(Box::new(self.unary()?)))
            }
            "(" => {
                self.next();
                let inner = self.or()?;
                self.expect(")")?;
                Some(inner)
            }
            _ => self.has().map(Test::Has),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn has(f: &str) -> Box<Test> {
        Box::new(Test::Has(f.into()))
    }

    #[test]
    fn the_rules_trellis_writes_are_parsed() {
        assert_eq!(Test::parse("!has(self.delegate)"), Some(Test::Not(has("delegate"))));
        assert_eq!(
            Test::parse("!(has(self.port) && has(self.derivePort))"),
            Some(Test::Not(Box::new(Test::And(has("port"), has("derivePort")))))
        );
        assert_eq!(
            Test::parse("!(has(self.selector) && (has(self.targetRef) || has(self.targetRefs)))"),
            Some(Test::Not(Box::new(Test::And(
                has("selector"),
                Box::new(Test::Or(has("targetRef"), has("targetRefs")))
            ))))
        );
        assert_eq!(
            Test::parse("(has(self.exact) ? 1 : 0) + (has(self.prefix) ? 1 : 0) + (has(self.regex) ? 1 : 0) <= 1"),
            Some(Test::Count {
                fields: vec!["exact".into(), "prefix".into(), "regex".into()],
                op: Compare::LessOrEqual,
                n: 1
            })
        );
        // `||` binds looser than `&&`.
        assert_eq!(
            Test::parse("has(self.a) || has(self.b) && has(self.c)"),
            Some(Test::Or(has("a"), Box::new(Test::And(has("b"), has("c")))))
        );
    }

    #[test]
    fn rules_reading_more_than_presence_are_left_to_cel() {
        for rule in [
            "!has(self.mode) || self.mode != 'Plugged' || has(self.secretRef)",
            "!has(self.nativeSidecar) || self.nativeSidecar",
            "self.replicas >= 0",
            "has(self.a.b)",
            "has(oldSelf.a)",
            "!has(self.in)",
            "!has(self.a__dash__b)",
            "!has(self.port_name)",
            "(has(self.a) ? 1 : 0) <= 0x1",
            "(has(self.a) ? 1 : 0) <= 1u",
            "(has(self.a) ? 2 : 0) <= 1",
            "has(self.a) has(self.b)",
            "!has(self.a",
            "",
        ] {
            assert_eq!(Test::parse(rule), None, "{rule}");
        }
    }

    #[test]
    fn tests_read_the_keys_of_the_mapping() {
        let object = |v: Value| v.as_object().cloned().unwrap();
        let at_most_one = Test::parse("(has(self.exact) ? 1 : 0) + (has(self.prefix) ? 1 : 0) <= 1").unwrap();
        assert!(at_most_one.holds(&object(json!({"exact": "a"}))));
        assert!(!at_most_one.holds(&object(json!({"exact": "a", "prefix": null}))));
        let absent = Test::parse("!has(self.delegate)").unwrap();
        assert!(absent.holds(&object(json!({"name": "x"}))));
        assert!(
            !absent.holds(&object(json!({"delegate": null}))),
            "a null field is present"
        );
    }
}
