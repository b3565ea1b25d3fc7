//! The HTTP API's guard: `Authorization: Bearer <ADMIN_TOKEN>`, compared in constant time.
//! Without an `ADMIN_TOKEN` configured, every guarded call is refused.

use std::fmt;

use subtle::ConstantTimeEq;

use crate::secret::Secret;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No `ADMIN_TOKEN` is set (or it is blank): the API is closed.
    NotConfigured,
    /// No `Authorization: Bearer …` header.
    Missing,
    /// A bearer token that is not `ADMIN_TOKEN`.
    Wrong,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthError::NotConfigured => {
                "the HTTP API is closed: set the ADMIN_TOKEN secret to open it"
            }
            AuthError::Missing => "send Authorization: Bearer <ADMIN_TOKEN>",
            AuthError::Wrong => "wrong bearer token",
        })
    }
}

/// Checks an `Authorization` header value against `ADMIN_TOKEN`.
pub fn check_bearer(
    authorization: Option<&str>,
    admin_token: Option<&Secret>,
) -> Result<(), AuthError> {
    // Trimmed like the presented token; a blank one opens nothing (config also refuses it).
    let expected = admin_token
        .map(|token| token.expose().trim())
        .filter(|token| !token.is_empty())
        .ok_or(AuthError::NotConfigured)?;
    let presented = authorization
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
        .ok_or(AuthError::Missing)?;
    if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(AuthError::Wrong)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_admin_token_as_bearer_passes() {
        let token = Secret::new("s3cret-admin");
        assert_eq!(
            check_bearer(Some("Bearer s3cret-admin"), Some(&token)),
            Ok(())
        );
        assert_eq!(
            check_bearer(Some("bearer  s3cret-admin "), Some(&token)),
            Ok(())
        );
        assert_eq!(
            check_bearer(Some("Bearer s3cret-admiN"), Some(&token)),
            Err(AuthError::Wrong)
        );
        assert_eq!(
            check_bearer(Some("Bearer s3cret"), Some(&token)),
            Err(AuthError::Wrong)
        );
        assert_eq!(
            check_bearer(Some("Bearer "), Some(&token)),
            Err(AuthError::Missing)
        );
        assert_eq!(
            check_bearer(Some("Basic s3cret-admin"), Some(&token)),
            Err(AuthError::Missing)
        );
        assert_eq!(check_bearer(None, Some(&token)), Err(AuthError::Missing));
    }

    #[test]
    fn malformed_authorization_headers_are_refused_as_missing() {
        let token = Secret::new("s3cret-admin");
        for header in [
            "",
            "   ",
            "Bearer",
            "bearer",
            "Bearer    ",
            "s3cret-admin",
            "Bearers3cret-admin",
            "Bearer\ts3cret-admin",
            "Basic czNjcmV0LWFkbWlu",
            "Basic s3cret-admin",
            "Token s3cret-admin",
            "Digest s3cret-admin",
            "Bearer: s3cret-admin",
            "s3cret-admin Bearer",
            "Bearer\u{a0}s3cret-admin",
        ] {
            assert_eq!(
                check_bearer(Some(header), Some(&token)),
                Err(AuthError::Missing),
                "{header:?}"
            );
        }
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_spaces_around_the_token_do_not_matter() {
        let token = Secret::new("s3cret-admin");
        for header in [
            "Bearer s3cret-admin",
            "bearer s3cret-admin",
            "BEARER s3cret-admin",
            "bEaReR s3cret-admin",
            "  Bearer   s3cret-admin  ",
            "Bearer s3cret-admin\t",
        ] {
            assert_eq!(
                check_bearer(Some(header), Some(&token)),
                Ok(()),
                "{header:?}"
            );
        }
    }

    #[test]
    fn wrong_tokens_are_wrong_whatever_their_length_or_case() {
        let token = Secret::new("s3cret-admin");
        for header in [
            "Bearer S3CRET-ADMIN",
            "Bearer s3cret-admin2",
            "Bearer s3cret-admi",
            "Bearer x",
            "Bearer s3cret-admin s3cret-admin",
            "Bearer s3cret admin",
            "Bearer Bearer s3cret-admin",
            "Bearer \"s3cret-admin\"",
            "Bearer s3cret-admin\u{0}",
            "Bearer ŝ3cret-admin",
        ] {
            assert_eq!(
                check_bearer(Some(header), Some(&token)),
                Err(AuthError::Wrong),
                "{header:?}"
            );
        }
        let long = format!("Bearer {}", "s".repeat(1 << 20));
        assert_eq!(
            check_bearer(Some(&long), Some(&token)),
            Err(AuthError::Wrong)
        );
    }

    #[test]
    fn a_configured_token_with_a_trailing_newline_still_matches() {
        // `echo token | wrangler secret put ADMIN_TOKEN` stores the newline too.
        let token = Secret::new("s3cret-admin\n");
        assert_eq!(
            check_bearer(Some("Bearer s3cret-admin"), Some(&token)),
            Ok(())
        );
        assert_eq!(
            check_bearer(Some("Bearer s3cret-admin2"), Some(&token)),
            Err(AuthError::Wrong)
        );
    }

    #[test]
    fn a_blank_configured_token_opens_nothing() {
        for blank in ["", " ", "\n", "\t\r\n"] {
            let token = Secret::new(blank);
            for header in ["Bearer ", "Bearer", "Bearer x", "Bearer \n"] {
                assert_eq!(
                    check_bearer(Some(header), Some(&token)),
                    Err(AuthError::NotConfigured),
                    "{blank:?} {header:?}"
                );
            }
        }
    }

    #[test]
    fn without_an_admin_token_everything_is_refused() {
        assert_eq!(
            check_bearer(Some("Bearer "), None),
            Err(AuthError::NotConfigured)
        );
        assert_eq!(
            check_bearer(Some("Bearer anything"), None),
            Err(AuthError::NotConfigured)
        );
    }
}
