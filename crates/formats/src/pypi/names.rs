//! Project names: PEP 508 validation and PEP 503 normalization.

use crate::FormatError;

/// Longest project name accepted (PyPI has no formal limit; this keeps keys
/// and URLs reasonable).
pub const MAX_NAME_LEN: usize = 200;

/// PEP 503 normalization: lowercase, and every run of `-`, `_` and `.`
/// becomes a single `-` (`Foo.Bar__baz` → `foo-bar-baz`). Does not validate.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_run = false;
    for ch in name.chars() {
        if matches!(ch, '-' | '_' | '.') {
            if !in_run {
                out.push('-');
                in_run = true;
            }
        } else {
            out.extend(ch.to_lowercase());
            in_run = false;
        }
    }
    out
}

/// Checks a project name against PEP 508: ASCII letters, digits, `.`, `_`
/// and `-`, starting and ending with a letter or digit, at most
/// [`MAX_NAME_LEN`] characters.
pub fn validate_project_name(name: &str) -> Result<(), FormatError> {
    let bad = |why: &str| {
        Err(FormatError::invalid(format!(
            "invalid project name {name:?}: {why}"
        )))
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad(&format!("longer than {MAX_NAME_LEN} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("may contain only ASCII letters, digits, '.', '_' and '-'");
    }
    let alnum = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    if !alnum(name.as_bytes().first()) || !alnum(name.as_bytes().last()) {
        return bad("must start and end with a letter or digit");
    }
    Ok(())
}

/// Validates `name` and returns its normalized form.
pub fn normalized_project_name(name: &str) -> Result<String, FormatError> {
    validate_project_name(name)?;
    Ok(normalize_name(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        for (input, want) in [
            ("Foo.Bar_baz", "foo-bar-baz"),
            ("foo", "foo"),
            ("FOO", "foo"),
            ("a-_.-b", "a-b"),
            ("zope.interface", "zope-interface"),
            ("Django", "django"),
            ("a__b--c..d", "a-b-c-d"),
        ] {
            assert_eq!(normalize_name(input), want, "{input}");
        }
    }

    #[test]
    fn validates() {
        for good in ["a", "A1", "foo-bar", "Foo.Bar_baz", "x9"] {
            assert!(validate_project_name(good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "",
            "-a",
            "a-",
            ".a",
            "a_",
            "a b",
            "a/b",
            "é",
            "a+b",
            &"a".repeat(201),
        ] {
            assert!(validate_project_name(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(normalized_project_name("My_Pkg").unwrap(), "my-pkg");
    }
}
