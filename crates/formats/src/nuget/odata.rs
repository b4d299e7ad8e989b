//! The subset of OData v2 query options NuGet 2.x and Chocolatey send to a
//! v2 feed (OData v2 URI conventions, §4.5 `$filter`, §4.2 `$orderby`):
//! `eq`/`ne`, `and`/`or`/`not`, parentheses, string literals (`''` for a
//! quote), `true`/`false`/`null`, numbers, and the functions `tolower`,
//! `toupper`, `trim`, `substringof`, `startswith`, `endswith`, `indexof`
//! (compared with `ne -1`/`eq -1` or `ge 0`), over the entry's properties (`Id`,
//! `IsLatestVersion`, ...). Anything else is refused as Invalid, so a
//! client never gets an unfiltered answer to a filter it believes applied.

use crate::FormatError;

/// Most nodes a filter may have (a bound on work per request).
const MAX_NODES: usize = 256;

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Bool(bool),
    Num(i64),
    Null,
}

impl Value {
    fn truthy(&self) -> bool {
        matches!(self, Value::Bool(true))
    }
    fn text(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Num(n) => n.to_string(),
            Value::Null => String::new(),
        }
    }
}

/// A parsed `$filter`.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Value),
    Prop(String),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    /// `eq`, `ne`, `gt`, `ge`, `lt`, `le`.
    Cmp(&'static str, Box<Expr>, Box<Expr>),
    Call(String, Vec<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(i64),
    Open,
    Close,
    Comma,
}

fn bad(why: impl std::fmt::Display) -> FormatError {
    FormatError::invalid(format!("unsupported $filter: {why}"))
}

fn lex(s: &str) -> Result<Vec<Tok>, FormatError> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '(' => {
                out.push(Tok::Open);
                i += 1;
            }
            ')' => {
                out.push(Tok::Close);
                i += 1;
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            '\'' => {
                let mut v = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(bad("unterminated string")),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            v.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(c) => {
                            v.push(*c);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(v));
            }
            c if c == '-' || c.is_ascii_digit() => {
                let start = i;
                i += 1;
                while chars.get(i).is_some_and(char::is_ascii_digit) {
                    i += 1;
                }
                let n: String = chars[start..i].iter().collect();
                out.push(Tok::Num(n.parse().map_err(|_| bad(format!("bad number {n}")))?));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            c => return Err(bad(format!("unexpected character {c:?}"))),
        }
        if out.len() > MAX_NODES {
            return Err(bad("too long"));
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek_ident(&self, word: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Ident(w)) if w.eq_ignore_ascii_case(word))
    }

    fn or(&mut self) -> Result<Expr, FormatError> {
        let mut left = self.and()?;
        while self.peek_ident("or") {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, FormatError> {
        let mut left = self.cmp()?;
        while self.peek_ident("and") {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.cmp()?));
        }
        Ok(left)
    }

    fn cmp(&mut self) -> Result<Expr, FormatError> {
        let left = self.unary()?;
        for op in ["eq", "ne", "gt", "ge", "lt", "le"] {
            if self.peek_ident(op) {
                self.pos += 1;
                let right = self.unary()?;
                return Ok(Expr::Cmp(op, Box::new(left), Box::new(right)));
            }
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, FormatError> {
        self.depth += 1;
        if self.depth > 64 {
            return Err(bad("nested too deeply"));
        }
        let r = self.unary_inner();
        self.depth -= 1;
        r
    }

    fn unary_inner(&mut self) -> Result<Expr, FormatError> {
        let tok = self
            .toks
            .get(self.pos)
            .cloned()
            .ok_or_else(|| bad("ends early"))?;
        self.pos += 1;
        match tok {
            Tok::Open => {
                let e = self.or()?;
                self.expect_close()?;
                Ok(e)
            }
            Tok::Str(s) => Ok(Expr::Lit(Value::Str(s))),
            Tok::Num(n) => Ok(Expr::Lit(Value::Num(n))),
            Tok::Ident(w) if w.eq_ignore_ascii_case("not") => Ok(Expr::Not(Box::new(self.unary()?))),
            Tok::Ident(w) if w == "true" => Ok(Expr::Lit(Value::Bool(true))),
            Tok::Ident(w) if w == "false" => Ok(Expr::Lit(Value::Bool(false))),
            Tok::Ident(w) if w == "null" => Ok(Expr::Lit(Value::Null)),
            Tok::Ident(w) => {
                if self.toks.get(self.pos) == Some(&Tok::Open) {
                    self.pos += 1;
                    let name = w.to_ascii_lowercase();
                    if ![
                        "tolower",
                        "toupper",
                        "trim",
                        "substringof",
                        "startswith",
                        "endswith",
                        "indexof",
                    ]
                    .contains(&name.as_str())
                    {
                        return Err(bad(format!("the function {w} is not supported")));
                    }
                    let mut args = Vec::new();
                    if self.toks.get(self.pos) != Some(&Tok::Close) {
                        loop {
                            args.push(self.or()?);
                            if self.toks.get(self.pos) == Some(&Tok::Comma) {
                                self.pos += 1;
                            } else {
                                break;
                            }
                        }
                    }
                    self.expect_close()?;
                    let want = if matches!(name.as_str(), "tolower" | "toupper" | "trim") {
                        1
                    } else {
                        2
                    };
                    if args.len() != want {
                        return Err(bad(format!("{w} takes {want} argument(s)")));
                    }
                    Ok(Expr::Call(name, args))
                } else {
                    Ok(Expr::Prop(w))
                }
            }
            t => Err(bad(format!("unexpected {t:?}"))),
        }
    }

    fn expect_close(&mut self) -> Result<(), FormatError> {
        if self.toks.get(self.pos) == Some(&Tok::Close) {
            self.pos += 1;
            Ok(())
        } else {
            Err(bad("missing `)`"))
        }
    }
}

/// Parses a `$filter` value. Errors (Invalid) name what is not supported.
pub fn parse_filter(s: &str) -> Result<Expr, FormatError> {
    let toks = lex(s)?;
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let e = p.or()?;
    if p.pos != p.toks.len() {
        return Err(bad("trailing input"));
    }
    Ok(e)
}

/// Evaluates a filter against one entry, whose properties `prop` gives
/// (None: no such property, which is an error of the filter).
pub fn eval(e: &Expr, prop: &dyn Fn(&str) -> Option<Value>) -> Result<Value, FormatError> {
    Ok(match e {
        Expr::Lit(v) => v.clone(),
        Expr::Prop(p) => prop(p).ok_or_else(|| bad(format!("unknown property {p}")))?,
        Expr::Not(x) => Value::Bool(!eval(x, prop)?.truthy()),
        Expr::And(a, b) => Value::Bool(eval(a, prop)?.truthy() && eval(b, prop)?.truthy()),
        Expr::Or(a, b) => Value::Bool(eval(a, prop)?.truthy() || eval(b, prop)?.truthy()),
        Expr::Cmp(op, a, b) => {
            let (a, b) = (eval(a, prop)?, eval(b, prop)?);
            let ord = match (&a, &b) {
                (Value::Num(x), Value::Num(y)) => x.cmp(y),
                _ => a.text().cmp(&b.text()),
            };
            let same = a == b || (ord.is_eq() && !matches!((&a, &b), (Value::Null, _) | (_, Value::Null)));
            Value::Bool(match *op {
                "eq" => same,
                "ne" => !same,
                "gt" => ord.is_gt(),
                "ge" => ord.is_ge(),
                "lt" => ord.is_lt(),
                _ => ord.is_le(),
            })
        }
        Expr::Call(name, args) => {
            let vals: Vec<String> = args
                .iter()
                .map(|a| eval(a, prop).map(|v| v.text()))
                .collect::<Result<_, _>>()?;
            match (name.as_str(), vals.as_slice()) {
                ("tolower", [s]) => Value::Str(s.to_lowercase()),
                ("toupper", [s]) => Value::Str(s.to_uppercase()),
                ("trim", [s]) => Value::Str(s.trim().to_owned()),
                // substringof(needle, haystack)
                ("substringof", [n, h]) => Value::Bool(h.contains(n.as_str())),
                ("startswith", [h, n]) => Value::Bool(h.starts_with(n.as_str())),
                ("endswith", [h, n]) => Value::Bool(h.ends_with(n.as_str())),
                ("indexof", [h, n]) => Value::Num(h.find(n.as_str()).map_or(-1, |i| i as i64)),
                _ => return Err(bad(format!("bad call to {name}"))),
            }
        }
    })
}

/// Whether `e` holds for an entry.
pub fn matches(e: &Expr, prop: &dyn Fn(&str) -> Option<Value>) -> Result<bool, FormatError> {
    Ok(eval(e, prop)?.truthy())
}

/// Parses `$orderby`: `Prop [asc|desc], …` (`concat(…)` and other
/// expressions are refused). Returns `(property, descending)` pairs.
pub fn parse_orderby(s: &str) -> Result<Vec<(String, bool)>, FormatError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut words = part.split_whitespace();
        let prop = words.next().unwrap_or_default();
        if !prop.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(FormatError::invalid(format!("unsupported $orderby: {part}")));
        }
        let desc = match words.next().map(str::to_ascii_lowercase).as_deref() {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(w) => {
                return Err(FormatError::invalid(format!(
                    "unsupported $orderby direction: {w}"
                )));
            }
        };
        if let Some(extra) = words.next() {
            return Err(FormatError::invalid(format!(
                "unsupported $orderby: {part} (`{extra}` after the direction)"
            )));
        }
        out.push((prop.to_owned(), desc));
    }
    Ok(out)
}

/// A quoted OData function argument (`'foo'`, `''` for a quote) unquoted;
/// an unquoted value as is.
pub fn unquote(s: &str) -> String {
    let s = s.trim();
    match s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        Some(inner) => inner.replace("''", "'"),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn check(filter: &str, id: &str, latest: bool) -> bool {
        let e = parse_filter(filter).unwrap();
        let id = id.to_owned();
        matches(&e, &|p| match p {
            "Id" => Some(Value::Str(id.clone())),
            "Description" => Some(Value::Str("A thing".into())),
            "IsLatestVersion" | "IsAbsoluteLatestVersion" => Some(Value::Bool(latest)),
            _ => None,
        })
        .unwrap()
    }

    #[test]
    fn client_filters() {
        assert!(check("IsLatestVersion", "Foo", true));
        assert!(!check("IsLatestVersion", "Foo", false));
        assert!(check("tolower(Id) eq 'foo'", "Foo", false));
        assert!(check("(tolower(Id) eq 'foo') and IsLatestVersion", "Foo", true));
        assert!(!check("(tolower(Id) eq 'foo') and IsLatestVersion", "Foo", false));
        assert!(check(
            "(tolower(Id) eq 'bar') or (tolower(Id) eq 'foo')",
            "Foo",
            false
        ));
        assert!(check(
            "IsLatestVersion and ((substringof('oo',tolower(Id)) eq true) or (substringof('zz',tolower(Description)) eq true))",
            "Foo",
            true
        ));
        assert!(check("startswith(tolower(Id),'fo')", "Foo", true));
        assert!(check("indexof(tolower(Id),'o') ne -1", "Foo", true));
        assert!(check("Id eq 'it''s'", "it's", true));
        assert!(check("not IsLatestVersion", "Foo", false));
        assert!(parse_filter("Id eq").is_err());
        assert!(parse_filter("evil(Id)").is_err());
        let e = parse_filter("Nope eq 1").unwrap();
        assert!(matches(&e, &|_| None).is_err());
    }

    #[test]
    fn orderby_and_args() {
        assert_eq!(
            parse_orderby("DownloadCount desc,Id").unwrap(),
            [("DownloadCount".to_owned(), true), ("Id".to_owned(), false)]
        );
        assert!(parse_orderby("concat(Title,Id)").is_err());
        // Words after the direction are refused, not ignored.
        assert!(parse_orderby("Id desc extra").is_err());
        assert!(parse_orderby("Id asc, Version desc").is_ok());
        assert_eq!(unquote("'a''b'"), "a'b");
        assert_eq!(unquote("x"), "x");
    }
}
