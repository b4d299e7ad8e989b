//! PEP 440 versions: parsing, the canonical (normalized) form, and ordering.

use std::cmp::Ordering;
use std::fmt;

use crate::FormatError;

/// A parsed PEP 440 version. `Display` gives the normalized form
/// (`V1.0-Alpha_2` → `1.0a2`); equality and ordering follow PEP 440, so
/// `1.0 == 1.0.0` and `1.0.dev1 < 1.0a1 < 1.0 < 1.0.post1 < 1.0+local`.
#[derive(Debug, Clone)]
pub struct Version {
    epoch: u64,
    release: Vec<u64>,
    pre: Option<(PreKind, u64)>,
    post: Option<u64>,
    dev: Option<u64>,
    local: Option<Vec<LocalSeg>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PreKind {
    Alpha,
    Beta,
    Rc,
}

/// Local version segment; strings sort before numbers (PEP 440).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum LocalSeg {
    Str(String),
    Num(u64),
}

/// Pre-release position in the ordering key.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PreKey {
    /// A dev release of a final version sorts before its pre-releases.
    DevOnly,
    Pre(PreKind, u64),
    Final,
}

impl Version {
    /// Parses a version the way pip does (case-insensitive, optional leading
    /// `v`, `-`/`_`/`.` separators, spelled-out pre-release words).
    pub fn parse(s: &str) -> Result<Self, FormatError> {
        parse(s).ok_or_else(|| FormatError::invalid(format!("version {s:?} is not a valid PEP 440 version")))
    }

    /// True for pre-releases and development releases.
    pub fn is_prerelease(&self) -> bool {
        self.pre.is_some() || self.dev.is_some()
    }

    /// The canonical form: the normalized form with the release's trailing
    /// zeros dropped (`1.0.0` → `1`, `01.0rc1` → `1rc1`, `0.0` → `0`), as
    /// `packaging.utils.canonicalize_version` gives it. Two versions are
    /// equal under PEP 440 exactly when their canonical forms are the same
    /// string, so this identifies a release.
    pub fn canonical(&self) -> String {
        let trimmed = self.release_trimmed();
        let release = if trimmed.is_empty() { &[0][..] } else { trimmed };
        let same = Version {
            release: release.to_vec(),
            ..self.clone()
        };
        same.to_string()
    }

    fn release_trimmed(&self) -> &[u64] {
        let mut r = &self.release[..];
        while let [rest @ .., 0] = r {
            r = rest;
        }
        r
    }

    fn pre_key(&self) -> PreKey {
        match (self.pre, self.post, self.dev) {
            (Some((k, n)), _, _) => PreKey::Pre(k, n),
            (None, None, Some(_)) => PreKey::DevOnly,
            _ => PreKey::Final,
        }
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| self.release_trimmed().cmp(other.release_trimmed()))
            .then_with(|| self.pre_key().cmp(&other.pre_key()))
            .then_with(|| self.post.cmp(&other.post))
            .then_with(|| {
                // No dev segment sorts after any dev segment.
                (self.dev.is_none(), self.dev).cmp(&(other.dev.is_none(), other.dev))
            })
            .then_with(|| self.local.cmp(&other.local))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.epoch != 0 {
            write!(f, "{}!", self.epoch)?;
        }
        for (i, n) in self.release.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{n}")?;
        }
        if let Some((kind, n)) = self.pre {
            let k = match kind {
                PreKind::Alpha => "a",
                PreKind::Beta => "b",
                PreKind::Rc => "rc",
            };
            write!(f, "{k}{n}")?;
        }
        if let Some(n) = self.post {
            write!(f, ".post{n}")?;
        }
        if let Some(n) = self.dev {
            write!(f, ".dev{n}")?;
        }
        if let Some(local) = &self.local {
            for (i, seg) in local.iter().enumerate() {
                f.write_str(if i == 0 { "+" } else { "." })?;
                match seg {
                    LocalSeg::Str(s) => f.write_str(s)?,
                    LocalSeg::Num(n) => write!(f, "{n}")?,
                }
            }
        }
        Ok(())
    }
}

/// The PEP 440 normalized form of `s`, or an error naming the bad version.
pub fn normalize_version(s: &str) -> Result<String, FormatError> {
    Version::parse(s).map(|v| v.to_string())
}

/// Whether two version strings denote the same PEP 440 version
/// (`1.0` and `1.0.0`, `1.0-alpha1` and `1.0a1`). Unparsable versions are
/// never equal to anything.
pub fn versions_match(a: &str, b: &str) -> bool {
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_sep(&mut self) -> bool {
        matches!(self.peek(), Some(b'.' | b'-' | b'_')) && {
            self.pos += 1;
            true
        }
    }

    fn eat_word(&mut self, w: &str) -> bool {
        let w = w.as_bytes();
        if self.s[self.pos..].starts_with(w) {
            self.pos += w.len();
            true
        } else {
            false
        }
    }

    /// Digits as a number; `None` when there are none. Overflow is reported
    /// through `overflow` so the caller can reject the whole version.
    fn number(&mut self, overflow: &mut bool) -> Option<u64> {
        let start = self.pos;
        let mut n: u64 = 0;
        while let Some(d) = self.peek().filter(u8::is_ascii_digit) {
            match n.checked_mul(10).and_then(|n| n.checked_add(u64::from(d - b'0'))) {
                Some(v) => n = v,
                None => *overflow = true,
            }
            self.pos += 1;
        }
        (self.pos > start).then_some(n)
    }
}

fn parse(input: &str) -> Option<Version> {
    let lower = input.trim().to_ascii_lowercase();
    let mut c = Cursor {
        s: lower.as_bytes(),
        pos: 0,
    };
    let mut overflow = false;
    c.eat(b'v');

    // Epoch: digits followed by '!'.
    let save = c.pos;
    let mut epoch = 0;
    match c.number(&mut overflow) {
        Some(n) if c.eat(b'!') => epoch = n,
        _ => c.pos = save,
    }

    let mut release = vec![c.number(&mut overflow)?];
    loop {
        let save = c.pos;
        if c.eat(b'.')
            && let Some(n) = c.number(&mut overflow)
        {
            release.push(n);
            continue;
        }
        c.pos = save;
        break;
    }

    // Pre-release: [sep] (alpha|a|beta|b|preview|pre|c|rc) [sep] [N].
    let save = c.pos;
    c.eat_sep();
    let kind = [
        ("alpha", PreKind::Alpha),
        ("beta", PreKind::Beta),
        ("preview", PreKind::Rc),
        ("pre", PreKind::Rc),
        ("rc", PreKind::Rc),
        ("a", PreKind::Alpha),
        ("b", PreKind::Beta),
        ("c", PreKind::Rc),
    ]
    .into_iter()
    .find(|(w, _)| c.eat_word(w));
    let pre = match kind {
        Some((_, k)) => Some((k, number_after_sep(&mut c, &mut overflow))),
        None => {
            c.pos = save;
            None
        }
    };

    // Post-release: [sep] (post|rev|r) [sep] [N], or -N.
    let save = c.pos;
    let post = if c.eat(b'-')
        && let Some(n) = c.number(&mut overflow)
    {
        Some(n)
    } else {
        c.pos = save;
        c.eat_sep();
        if ["post", "rev", "r"].into_iter().any(|w| c.eat_word(w)) {
            Some(number_after_sep(&mut c, &mut overflow))
        } else {
            c.pos = save;
            None
        }
    };

    // Development release: [sep] dev [sep] [N].
    let save = c.pos;
    c.eat_sep();
    let dev = if c.eat_word("dev") {
        Some(number_after_sep(&mut c, &mut overflow))
    } else {
        c.pos = save;
        None
    };

    // Local version: + segments of [a-z0-9] separated by [-_.].
    let local = if c.eat(b'+') {
        let rest = std::str::from_utf8(&c.s[c.pos..]).ok()?;
        let mut segs = Vec::new();
        for seg in rest.split(['.', '-', '_']) {
            if seg.is_empty() || !seg.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
                return None;
            }
            segs.push(if seg.bytes().all(|b| b.is_ascii_digit()) {
                LocalSeg::Num(seg.parse().ok()?)
            } else {
                LocalSeg::Str(seg.to_owned())
            });
        }
        c.pos = c.s.len();
        Some(segs)
    } else {
        None
    };

    (c.pos == c.s.len() && !overflow).then_some(Version {
        epoch,
        release,
        pre,
        post,
        dev,
        local,
    })
}

/// `[sep] [N]` after a pre/post/dev word; the number defaults to 0 and a
/// separator with no number after it is not consumed.
fn number_after_sep(c: &mut Cursor<'_>, overflow: &mut bool) -> u64 {
    let save = c.pos;
    c.eat_sep();
    match c.number(overflow) {
        Some(n) => n,
        None => {
            c.pos = save;
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        normalize_version(s).unwrap()
    }

    #[test]
    fn normalizes() {
        for (input, want) in [
            ("1.0", "1.0"),
            ("v1.0", "1.0"),
            (" V1.0 ", "1.0"),
            ("1.01.002", "1.1.2"),
            ("1.0-alpha1", "1.0a1"),
            ("1.0.a.1", "1.0a1"),
            ("1.0beta", "1.0b0"),
            ("1.0c1", "1.0rc1"),
            ("1.0-preview_2", "1.0rc2"),
            ("1.0RC1", "1.0rc1"),
            ("1.0-1", "1.0.post1"),
            ("1.0.post", "1.0.post0"),
            ("1.0-r4", "1.0.post4"),
            ("1.0.rev4", "1.0.post4"),
            ("1.0_dev3", "1.0.dev3"),
            ("1.0dev", "1.0.dev0"),
            ("1!2.0", "1!2.0"),
            ("0!2.0", "2.0"),
            ("1.0a1.post2.dev3", "1.0a1.post2.dev3"),
            ("1.0+Ubuntu-1_2", "1.0+ubuntu.1.2"),
            ("2024.1.15", "2024.1.15"),
        ] {
            assert_eq!(norm(input), want, "{input}");
        }
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "v",
            "1.",
            "1..0",
            "1.0-",
            "1.0+",
            "1.0+a..b",
            "abc",
            "1.0 beta",
            "1.0/1",
            "1.0ä",
            "99999999999999999999",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad:?} accepted");
        }
        let e = Version::parse("abc").unwrap_err();
        assert!(e.to_string().contains("\"abc\" is not a valid PEP 440 version"));
    }

    #[test]
    fn orders() {
        let order = [
            "0.9",
            "1.0.dev1",
            "1.0a1.dev1",
            "1.0a1",
            "1.0a2",
            "1.0b1",
            "1.0rc1",
            "1.0",
            "1.0+abc",
            "1.0+5",
            "1.0.post1.dev1",
            "1.0.post1",
            "1.1",
            "1.10",
            "1!0.1",
        ];
        for w in order.windows(2) {
            let (a, b) = (Version::parse(w[0]).unwrap(), Version::parse(w[1]).unwrap());
            assert!(a < b, "{} < {}", w[0], w[1]);
        }
        assert!(versions_match("1.0", "1.0.0"));
        for (a, b) in [
            ("1.0.0", "1"),
            ("01.0", "1"),
            ("0.0", "0"),
            ("1.0.0rc1", "1rc1"),
            ("1!2.0.post0.dev0+Local.01", "1!2.post0.dev0+local.1"),
            ("1.0.1", "1.0.1"),
            ("1.0+abc", "1+abc"),
        ] {
            assert_eq!(Version::parse(a).unwrap().canonical(), b, "{a}");
        }
        assert!(versions_match("1.0-ALPHA1", "1.0a1"));
        assert!(!versions_match("1.0", "1.0.post0"));
        assert!(!versions_match("x", "x"));
        assert!(Version::parse("1.0rc1").unwrap().is_prerelease());
    }
}
