//! The id rule, checked before any filesystem call.
//!
//! Sessions, agents, tasks, state keys, lock names and operations are all ids:
//! `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`, never `.` or `..`. Because an id can
//! contain neither `/` nor NUL and cannot start with `.` or `-`, it is always a
//! single, visible path component and never an option.

use crate::error::{Error, Result};

/// Longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Checks `id` against the id rule; `kind` names it in the error ("agent", "task", ...).
pub fn validate<'a>(kind: &'static str, id: &'a str) -> Result<&'a str> {
    let fail = |reason| Err(Error::InvalidId { kind, id: id.to_string(), reason });
    let bytes = id.as_bytes();
    let Some(&first) = bytes.first() else {
        return fail("it is empty");
    };
    if bytes.len() > MAX_ID_LEN {
        return fail("it is longer than 128 characters");
    }
    if id == "." || id == ".." {
        return fail("it is a relative path component");
    }
    if !first.is_ascii_alphanumeric() {
        return fail("it must start with a letter or digit");
    }
    if bytes.contains(&b'/') {
        return fail("it contains '/'");
    }
    if !bytes.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return fail("it contains a character other than letters, digits, '.', '_' and '-'");
    }
    Ok(id)
}

/// A `clap` value parser that applies the id rule to an argument.
///
/// Clap reports a parse failure with exit code 2, matching [`Error::InvalidId`].
pub fn parser(kind: &'static str) -> impl Fn(&str) -> std::result::Result<String, String> + Clone {
    move |s: &str| validate(kind, s).map(str::to_string).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for id in ["a", "build-1700000000", "w1", "test-fixer-001", "A.b_c-d", "0", &"x".repeat(128)] {
            assert!(validate("agent", id).is_ok(), "{id}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        let long = "y".repeat(129);
        for id in ["", ".", "..", "a/b", "/etc", "-rf", ".hidden", "_x", "a\nb", "a b", "a\0b", "é", &long] {
            let err = validate("agent", id).expect_err(id);
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains("invalid agent id"), "{err}");
        }
    }
}
