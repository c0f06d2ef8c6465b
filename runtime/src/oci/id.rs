//! Container ids, by runc's rule: ASCII letters, digits and `_ + , - .`, not `.` or `..`.
//! The id names a directory under `--root`, so the rule is what keeps it one path
//! component.

/// The longest id: one file name component.
pub const MAX_ID_LEN: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("invalid container ID format: {0:?} (allowed: letters, digits and _ + , - .; not \".\" or \"..\")")]
    Format(String),
    #[error("invalid container ID: {len} bytes is longer than {MAX_ID_LEN}")]
    TooLong { len: usize },
}

/// Whether `c` may appear in an id (runc's `^[\w+-\.]+$`, where `+-\.` is the range
/// `+`..=`.`, which also takes `,`).
fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | ',' | '-' | '.')
}

/// Checks `id` against runc's rule.
pub fn validate(id: &str) -> Result<(), IdError> {
    if id.is_empty() || id == "." || id == ".." || !id.chars().all(allowed) {
        return Err(IdError::Format(id.to_string()));
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { len: id.len() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_runc_accepts() {
        for id in [
            "a",
            "c1",
            "libpod-1faa4079",
            "a.b",
            "A_B+c,d-e",
            ".hidden",
            "...",
        ] {
            assert_eq!(validate(id), Ok(()), "{id}");
        }
    }

    #[test]
    fn rejects_paths_and_odd_characters() {
        for id in [
            "", ".", "..", "a/b", "../x", "a b", "a\nb", "ä", "a:b", "a@b", "a~b",
        ] {
            assert!(matches!(validate(id), Err(IdError::Format(_))), "{id:?}");
        }
        assert_eq!(
            validate(&"x".repeat(256)),
            Err(IdError::TooLong { len: 256 })
        );
        assert_eq!(validate(&"x".repeat(255)), Ok(()));
    }
}
