//! What a user id or a device id may be, checked wherever one comes from outside: a token's
//! subject, `?device_id=`, an `auth` frame, a token's `device_id` claim.
//!
//! Ids become parts of keys and of MongoDB field names (`read_up_to.{user}`,
//! `member_state.{user}`), and appear in frames: an empty id would be a user nobody can address,
//! a `.` would split a field name, a leading `$` would be an operator, control characters break
//! logs and tools. So an id is 1 to 128 bytes of printable text, without `.`, not starting with
//! `$`, and not only spaces.

use crate::error::{Error, Result};

/// Longest id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Whether `id` may be a user or device id.
pub fn is_valid(id: &str) -> bool {
    !id.trim().is_empty()
        && id.len() <= MAX_ID_BYTES
        && !id.contains('.')
        && !id.starts_with('$')
        && !id.chars().any(char::is_control)
}

/// `invalid_request` naming `what` when `id` is not a valid id.
pub fn check(what: &str, id: &str) -> Result<()> {
    if is_valid(id) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{what} must be 1 to {MAX_ID_BYTES} bytes of text, without `.`, control characters or a leading `$`"
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
