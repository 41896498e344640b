//! What a user id or a device id may be, checked wherever one comes from outside: a token's
//! subject, `?device_id=`, an `auth` frame, a token's `device_id` claim.
//!
//! Ids become parts of keys and of MongoDB field names (`read_up_to.{user}`,
//! `member_state.{user}`), and appear in frames: an empty id would be a user nobody can address,
//! a `.` would split a field name, a leading `$` would be an operator, control characters break
//! logs and tools. So an id is 1 to 128 characters of printable text without `.`, whose first
//! character is neither a space nor `$` ([`PATTERN`], the same rule as a JSON Schema pattern
//! for the published documents).

use crate::error::{Error, Result};

/// Longest id accepted, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// [`is_valid`] as a JSON Schema pattern (with `maxLength` [`MAX_ID_CHARS`]).
pub const PATTERN: &str = r"^[^\s$.\x00-\x1f\x7f-\x9f][^.\x00-\x1f\x7f-\x9f]*$";

/// Whether `id` may be a user or device id.
pub fn is_valid(id: &str) -> bool {
    let mut chars = id.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    !first.is_whitespace()
        && first != '$'
        && id.chars().count() <= MAX_ID_CHARS
        && !id.chars().any(|c| c == '.' || c.is_control())
}

/// `invalid_request` naming `what` when `id` is not a valid id.
pub fn check(what: &str, id: &str) -> Result<()> {
    if is_valid(id) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{what} must be 1 to {MAX_ID_CHARS} characters of text, without `.` or control characters, not starting with a space or `$`"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_would_break_keys_or_field_names_are_refused() {
        for good in [
            "alice",
            "user-123",
            "Émile",
            "a b",
            "x".repeat(128).as_str(),
        ] {
            assert!(is_valid(good), "{good}");
        }
        for bad in [
            "",
            " ",
            " alice",
            "\t",
            "a.b",
            "$gt",
            "a\nb",
            "x".repeat(129).as_str(),
        ] {
            assert!(!is_valid(bad), "{bad:?}");
        }
    }
}
