//! Who may see the dashboard: whoever shows its token, as a bearer token,
//! through the login form, or once as `?token=` on a page URL, which sets a
//! session cookie and sends the browser to the same URL without it.
//!
//! The cookie holds a session secret made at start, not the token: a
//! restart of the dashboard ends every session. It is `HttpOnly` and
//! `SameSite=Strict`, and every action takes a JSON body, which a page of
//! another site cannot send with the cookie.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use rand::Rng;
use std::sync::Arc;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "agentbus_session";

/// The token and this run's session secret.
#[derive(Clone)]
pub(crate) struct Auth {
    inner: Arc<Secrets>,
}

struct Secrets {
    token: String,
    session: String,
}

impl Auth {
    pub(crate) fn new(token: String) -> Self {
        let session = rand::rng()
            .sample_iter(&rand::distr::Alphanumeric)
            .take(40)
            .map(char::from)
            .collect();
        Self {
            inner: Arc::new(Secrets { token, session }),
        }
    }

    /// Whether `candidate` is the token.
    pub(crate) fn is_token(&self, candidate: &str) -> bool {
        same(candidate.as_bytes(), self.inner.token.as_bytes())
    }

    /// The `Set-Cookie` value that opens a session.
    pub(crate) fn session_cookie(&self) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            self.inner.session
        ))
        .expect("the cookie is plain ASCII")
    }

    fn allows(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if bearer.is_some_and(|token| self.is_token(token.trim())) {
            return true;
        }
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| {
                name == COOKIE && same(value.as_bytes(), self.inner.session.as_bytes())
            })
    }
}

/// Compares in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Lets a request through when it shows the token or a session; takes a
/// `?token=` on a page and answers the rest: pages go to the login form,
/// everything else gets 401.
pub(crate) async fn require(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if path == "/login" || path == "/favicon.ico" || path.starts_with("/assets/") {
        return next.run(request).await;
    }
    if let Some(query) = request.uri().query()
        && let Some(token) = query_token(query)
    {
        if !auth.is_token(&token) {
            return unauthorized(&path);
        }
        let rest: Vec<&str> = query
            .split('&')
            .filter(|pair| !pair.starts_with("token="))
            .collect();
        let clean = match rest.is_empty() {
            true => path,
            false => format!("{path}?{}", rest.join("&")),
        };
        let mut response = Redirect::to(&clean).into_response();
        response
            .headers_mut()
            .insert(header::SET_COOKIE, auth.session_cookie());
        return response;
    }
    if auth.allows(request.headers()) {
        return next.run(request).await;
    }
    unauthorized(&path)
}

/// The token of a query string, decoded.
fn query_token(query: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned())
}

/// A page goes to the login form; anything else gets 401 and says how to log in.
fn unauthorized(path: &str) -> Response {
    if is_page(path) {
        return Redirect::to("/login").into_response();
    }
    let mut response = (
        StatusCode::UNAUTHORIZED,
        "the dashboard needs its token: send `Authorization: Bearer <token>` (the token is AGENTBUS_DASHBOARD_TOKEN in connection.env)\n",
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Whether `path` is a page a person opens (not the API or the metrics).
fn is_page(path: &str) -> bool {
    !(path.starts_with("/api/") || path == "/metrics")
}

/// The login form, with a line saying why when a token was refused.
pub(crate) fn login_page(refused: bool) -> Response {
    let note = if refused {
        r#"<p class="refused" role="alert">That is not the dashboard's token.</p>"#
    } else {
        ""
    };
    let html = crate::assets::LOGIN.replace("<!--note-->", note);
    let status = if refused {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let mut response = (status, html).into_response();
    crate::assets::page_headers(response.headers_mut());
    response
}

/// What the login form posts.
#[derive(serde::Deserialize)]
pub(crate) struct Login {
    token: String,
}

/// Checks a posted token: a session and the first screen, or the form again.
pub(crate) async fn login(
    State(auth): State<Auth>,
    axum::Form(login): axum::Form<Login>,
) -> Response {
    if !auth.is_token(login.token.trim()) {
        return login_page(true);
    }
    let mut response = Redirect::to("/").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, auth.session_cookie());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abcdef", b"abcdef"));
        assert!(!same(b"abcdef", b"abcdeg"));
        assert!(!same(b"abc", b"abcdef"));
        assert!(!same(b"", b"a"));
    }

    #[test]
    fn a_query_token_is_found_and_decoded() {
        assert_eq!(query_token("a=1&token=x%2By").as_deref(), Some("x+y"));
        assert_eq!(query_token("token=abc").as_deref(), Some("abc"));
        assert_eq!(query_token("tokens=abc"), None);
        assert_eq!(query_token("token=%zz%4").as_deref(), Some("%zz%4"));
    }
}
