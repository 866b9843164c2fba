//! Cookie mode for browsers. A successful SignUp, Login, Refresh or
//! AcceptInvitation through the gateway sets three HttpOnly, SameSite=Strict
//! cookies: the access token, the refresh token and the login session's
//! CSRF token (with the id of the session it belongs to). A later call
//! without an `authorization` header but with the access cookie is
//! forwarded with `authorization: Bearer <cookie>`; if its RPC is not
//! `NO_SIDE_EFFECTS` it must carry `x-csrf-token` equal to the CSRF
//! cookie's token, and that cookie must belong to the verified access
//! token's login session. The cookie was set from that session's own auth
//! response, so the header equals the session's csrf_token; a page of
//! another origin can neither read these cookies nor, without a CORS grant,
//! send the header. A bearer header wins over cookies and needs no CSRF
//! token.

use http::HeaderMap;
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderValue, header::HeaderName};

pub const CSRF_HEADER: &str = "x-csrf-token";

/// What the cookies are called: `__Host-` names (Secure, Path=/, no
/// Domain, so no sibling subdomain can set them) in production; plain names
/// without Secure for plain-HTTP localhost in development.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieNames {
    pub access: &'static str,
    pub refresh: &'static str,
    pub csrf: &'static str,
    secure: bool,
}

impl CookieNames {
    pub const SECURE: CookieNames = CookieNames {
        access: "__Host-trellis-access",
        refresh: "__Host-trellis-refresh",
        csrf: "__Host-trellis-csrf",
        secure: true,
    };
    pub const DEVELOPMENT: CookieNames = CookieNames {
        access: "trellis-access",
        refresh: "trellis-refresh",
        csrf: "trellis-csrf",
        secure: false,
    };

    fn attributes(&self) -> &'static str {
        if self.secure {
            "; Path=/; HttpOnly; Secure; SameSite=Strict"
        } else {
            "; Path=/; HttpOnly; SameSite=Strict"
        }
    }
}

/// Longest cookie value read; tokens are far shorter.
const MAX_COOKIE_VALUE: usize = 4096;

/// The values of our cookies in a request's `cookie` headers.
#[derive(Debug, Default)]
pub struct Presented {
    pub access: Option<String>,
    pub refresh: Option<String>,
    pub csrf: Option<String>,
}

impl Presented {
    pub fn from_headers(headers: &HeaderMap, names: &CookieNames) -> Presented {
        let mut presented = Presented::default();
        for header in headers.get_all(COOKIE) {
            let Ok(text) = header.to_str() else { continue };
            for pair in text.split(';') {
                let Some((name, value)) = pair.trim().split_once('=') else {
                    continue;
                };
                if value.is_empty() || value.len() > MAX_COOKIE_VALUE {
                    continue;
                }
                let slot = if name == names.access {
                    &mut presented.access
                } else if name == names.refresh {
                    &mut presented.refresh
                } else if name == names.csrf {
                    &mut presented.csrf
                } else {
                    continue;
                };
                slot.get_or_insert_with(|| value.to_owned());
            }
        }
        presented
    }
}

/// Token values are base64url/JWT characters: anything else is not ours
/// and must not reach a header.
fn cookie_safe(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_COOKIE_VALUE
        && value.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+' | b'/' | b'=')
        })
}

/// The tokens of an auth response, as cookies. The refresh and CSRF
/// cookies last as long as the browser session (Auth decides how long the
/// refresh token itself lives); the access cookie as long as its token.
pub fn set_session_cookies(
    headers: &mut HeaderMap,
    names: &CookieNames,
    access_token: &str,
    expires_in: i64,
    refresh_token: &str,
    session_id: &str,
    csrf_token: &str,
) {
    let attributes = names.attributes();
    let csrf = csrf_cookie_value(session_id, csrf_token);
    let cookies = [
        (names.access, access_token, Some(expires_in.max(0))),
        (names.refresh, refresh_token, None),
        (names.csrf, csrf.as_str(), None),
    ];
    for (name, value, max_age) in cookies {
        if !cookie_safe(value) {
            continue;
        }
        let max_age = max_age.map_or(String::new(), |seconds| format!("; Max-Age={seconds}"));
        if let Ok(header) = HeaderValue::from_str(&format!("{name}={value}{max_age}{attributes}")) {
            headers.append(SET_COOKIE, header);
        }
    }
}

/// Logout: the browser forgets all three.
pub fn clear_session_cookies(headers: &mut HeaderMap, names: &CookieNames) {
    let attributes = names.attributes();
    for name in [names.access, names.refresh, names.csrf] {
        if let Ok(header) = HeaderValue::from_str(&format!("{name}=; Max-Age=0{attributes}")) {
            headers.append(SET_COOKIE, header);
        }
    }
}

/// The CSRF cookie's value: the login session it belongs to and its token.
fn csrf_cookie_value(session_id: &str, csrf_token: &str) -> String {
    format!("{session_id}.{csrf_token}")
}

/// `x-csrf-token` equals the CSRF cookie's token, compared in constant
/// time, and the cookie belongs to `session` (the login session of the
/// verified access token): a CSRF cookie of one session never vouches for
/// another session's token.
pub fn csrf_matches(headers: &HeaderMap, presented: &Presented, session: &str) -> bool {
    let header = headers
        .get(HeaderName::from_static(CSRF_HEADER))
        .map(HeaderValue::as_bytes);
    let expected = presented
        .csrf
        .as_deref()
        .and_then(|value| value.split_once('.'))
        .filter(|(cookie_session, _)| *cookie_session == session)
        .map(|(_, token)| token);
    match (header, expected) {
        (Some(sent), Some(expected)) if !expected.is_empty() && sent.len() == expected.len() => {
            sent.iter()
                .zip(expected.as_bytes())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_our_cookies_and_bounds_them() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; __Host-trellis-access=tok; __Host-trellis-csrf=c1"),
        );
        let long = format!(
            "__Host-trellis-refresh={}",
            "x".repeat(MAX_COOKIE_VALUE + 1)
        );
        headers.append(COOKIE, HeaderValue::from_str(&long).unwrap());
        let presented = Presented::from_headers(&headers, &CookieNames::SECURE);
        assert_eq!(presented.access.as_deref(), Some("tok"));
        assert_eq!(presented.csrf.as_deref(), Some("c1"));
        assert_eq!(presented.refresh, None);
    }

    #[test]
    fn csrf_must_equal_the_cookie_of_the_same_session() {
        let presented = Presented {
            csrf: Some(csrf_cookie_value("s1", "abc")),
            ..Presented::default()
        };
        let mut headers = HeaderMap::new();
        assert!(!csrf_matches(&headers, &presented, "s1"));
        headers.insert(CSRF_HEADER, HeaderValue::from_static("abd"));
        assert!(!csrf_matches(&headers, &presented, "s1"));
        headers.insert(CSRF_HEADER, HeaderValue::from_static("abc"));
        assert!(csrf_matches(&headers, &presented, "s1"));
        assert!(
            !csrf_matches(&headers, &presented, "s2"),
            "another session's cookie"
        );
        assert!(!csrf_matches(&headers, &Presented::default(), "s1"));
    }

    #[test]
    fn production_cookies_are_host_prefixed_secure_and_strict() {
        let mut headers = HeaderMap::new();
        set_session_cookies(
            &mut headers,
            &CookieNames::SECURE,
            "a.b.c",
            900,
            "r",
            "s",
            "c",
        );
        let set: Vec<_> = headers.get_all(SET_COOKIE).iter().collect();
        assert_eq!(set.len(), 3);
        assert_eq!(
            set[0],
            "__Host-trellis-access=a.b.c; Max-Age=900; Path=/; HttpOnly; Secure; SameSite=Strict"
        );
        set_session_cookies(
            &mut headers,
            &CookieNames::SECURE,
            "bad;value",
            1,
            "r",
            "s",
            "c",
        );
        assert_eq!(headers.get_all(SET_COOKIE).iter().count(), 5);
    }
}
