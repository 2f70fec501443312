//! The page: HTML, CSS and plain JavaScript built into the binary. The
//! pages are static; what they show comes from the API and is put in with
//! `textContent`, never as markup, so nothing an agent sends can run in the
//! browser (the content security policy allows this origin's scripts only).

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub(crate) const INDEX: &str = include_str!("../assets/index.html");
pub(crate) const TASKS: &str = include_str!("../assets/tasks.html");
pub(crate) const TASK: &str = include_str!("../assets/task.html");
pub(crate) const LOGIN: &str = include_str!("../assets/login.html");
const STYLE: &str = include_str!("../assets/style.css");
const SCRIPT: &str = include_str!("../assets/app.js");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The headers of every page: its policy, and no caching of what it shows.
pub(crate) fn page_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// A page.
pub(crate) fn page(html: &'static str) -> Response {
    let mut response = html.into_response();
    page_headers(response.headers_mut());
    response
}

/// `/assets/app.js` and `/assets/style.css`.
pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}
