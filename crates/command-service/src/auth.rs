//! Bearer-token authentication of the commands. The accepted tokens come
//! from `API_TOKENS`; only their SHA-256 digests are kept, and a presented
//! token is compared with every one of them in constant time, so neither
//! timing nor logs reveal a token.

use std::{fmt, sync::Arc};

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{header, request::Parts, HeaderValue},
};
use platform::{problem::ProblemKind, Problem};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

pub type TokenDigest = [u8; 32];

/// The tokens that may send commands. Never printed: `Debug` shows a count.
#[derive(Clone, Default)]
pub struct ApiTokens(Arc<[TokenDigest]>);

impl ApiTokens {
    /// Reads a comma-separated list; blanks around and between are ignored.
    pub fn parse(raw: &str) -> Self {
        Self(
            raw.split(',')
                .map(str::trim)
                .filter(|token| !token.is_empty())
                .map(digest)
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The digest of `token` when it is one of the accepted tokens. Every
    /// digest is compared, whatever matched, in constant time.
    fn check(&self, token: &str) -> Option<TokenDigest> {
        let presented = digest(token);
        let matched = self.0.iter().fold(Choice::from(0), |found, accepted| {
            found | accepted.ct_eq(&presented)
        });
        bool::from(matched).then_some(presented)
    }
}

impl fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiTokens({} configured)", self.0.len())
    }
}

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Proof that the request carried an accepted `Authorization: Bearer`
/// token, and which: the caller, as the token's digest. Handlers that take
/// it answer 401 problem+json, with `WWW-Authenticate`, before reading any
/// body.
#[derive(Clone, Copy)]
pub struct Authenticated {
    pub caller: TokenDigest,
}

impl<S> FromRequestParts<S> for Authenticated
where
    S: Send + Sync,
    ApiTokens: FromRef<S>,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let tokens = ApiTokens::from_ref(state);
        if tokens.is_empty() {
            return Err(unauthorized(
                "this server accepts no token: set API_TOKENS to enable commands",
                None,
            ));
        }
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_token);
        let Some(token) = presented else {
            return Err(unauthorized(
                "send an API token as `Authorization: Bearer <token>`",
                None,
            ));
        };
        match tokens.check(token) {
            Some(caller) => Ok(Self { caller }),
            None => Err(unauthorized(
                "the bearer token is not accepted",
                Some("invalid_token"),
            )),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is
/// case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn unauthorized(detail: &str, error: Option<&str>) -> Problem {
    let challenge = match error {
        Some(error) => format!("Bearer realm=\"books\", error=\"{error}\""),
        None => "Bearer realm=\"books\"".to_owned(),
    };
    Problem::new(ProblemKind::Unauthorized, detail).with_header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&challenge).expect("an ASCII challenge"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_tokens_are_accepted_and_others_refused() {
        let tokens = ApiTokens::parse(" first , second,,");
        assert!(tokens.check("first").is_some());
        assert!(tokens.check("second").is_some());
        assert!(tokens.check("third").is_none());
        assert!(tokens.check("").is_none());
        assert!(tokens.check("first ").is_none());
    }

    #[test]
    fn an_empty_list_accepts_nothing() {
        let tokens = ApiTokens::parse(" , ");
        assert!(tokens.is_empty());
        assert!(tokens.check("").is_none());
    }

    #[test]
    fn debug_output_never_shows_a_token() {
        let shown = format!("{:?}", ApiTokens::parse("s3cret-token"));
        assert_eq!(shown, "ApiTokens(1 configured)");
    }

    #[test]
    fn only_the_bearer_scheme_carries_a_token() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
