//! The shared secret of a token file (`--auth-file`, `--metrics-token-file`),
//! compared in constant time and never shown.

use std::fmt;
use std::hint::black_box;

/// A token from a token file: never empty, never logged (its `Debug`
/// shows no byte of it).
/// No `PartialEq`: the only comparison is [`AuthToken::matches`].
#[derive(Clone)]
pub struct AuthToken(Box<[u8]>);

impl AuthToken {
    /// A token of these bytes; `None` if there are none.
    pub fn new(bytes: &[u8]) -> Option<AuthToken> {
        (!bytes.is_empty()).then(|| AuthToken(bytes.into()))
    }

    /// Whether `given` is the token, in time that does not depend on where
    /// the two first differ: every byte of the token is compared, and the
    /// differences are OR-ed together, with no early exit. `black_box`
    /// keeps the compiler from turning the loop back into one that stops
    /// at the first difference. The time depends only on the token's
    /// length (the server's own, fixed) and on whether `given` is shorter
    /// (a branch on its length, never on its content).
    pub fn matches(&self, given: &[u8]) -> bool {
        let mut difference = u8::from(self.0.len() != given.len());
        for (i, &expected) in self.0.iter().enumerate() {
            let byte = given.get(i).copied().unwrap_or(0);
            difference = black_box(difference | (expected ^ byte));
        }
        difference == 0
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<hidden>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_themselves() {
        let token = AuthToken::new(b"abc").unwrap();
        assert!(token.matches(b"abc"));
        for other in [&b""[..], b"ab", b"abd", b"abc\0", b"abc\r", b"ABC", b"xbc"] {
            assert!(!token.matches(other), "{other:?}");
        }
        assert!(AuthToken::new(b"").is_none());
        assert!(!format!("{token:?}").contains("abc"));
    }
}
