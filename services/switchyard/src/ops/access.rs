//! Who may use the admin page. Every admin route needs the token — as `Authorization: Bearer
//! TOKEN` (scripts) or, for browsers, the session cookie the login form sets (a random id, not
//! the token; HttpOnly, SameSite=Strict, 12 hours, ended by a restart).
//! Requests whose `Host` is not the address the page is served on (or a configured name) are
//! refused, which defeats DNS rebinding; a POST carried by the cookie must come from the page
//! itself (`Origin`, else `Referer`), which defeats cross-site request forgery. The token comes
//! from a file or the environment, never the command line, and is compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::secret::Secret;

/// The shortest admin token accepted.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The cookie the login form sets.
const COOKIE: &str = "switchyard_admin";

/// The admin page's token and the host names it answers to.
#[derive(Debug, Clone)]
pub struct AdminAccess {
    token: Secret,
    /// `host[:port]` values accepted in the `Host` header, besides the bound address and
    /// `localhost:PORT`.
    pub extra_hosts: Vec<String>,
}

/// Why an admin token is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Too short to resist guessing.
    #[error(
        "the admin token has {0} characters; use at least {MIN_TOKEN_CHARS} (e.g. `openssl rand -hex 24`)"
    )]
    TooShort(usize),
}

impl AdminAccess {
    /// Access with `token` (surrounding whitespace, e.g. a file's final newline, is ignored).
    pub fn new(token: &str, extra_hosts: Vec<String>) -> Result<Self, TokenError> {
        let token = token.trim();
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(TokenError::TooShort(token.chars().count()));
        }
        Ok(Self {
            token: Secret::new(token),
            extra_hosts,
        })
    }

    fn matches(&self, offered: &str) -> bool {
        same_secret(self.token.expose(), offered)
    }
}

/// Equality in time independent of where the strings differ (a length difference returns
/// early: the length is not the secret).
fn same_secret(ours: &str, offered: &str) -> bool {
    let (a, b) = (ours.as_bytes(), offered.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How long a browser session lasts.
const SESSION: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// The access rules, with the address the page was bound to.
#[derive(Debug)]
pub(super) struct Gate {
    pub(super) access: AdminAccess,
    pub(super) hosts: Vec<String>,
    /// Browser sessions (random ids, never the token) and when each began. A restart ends
    /// them all.
    sessions: std::sync::Mutex<Vec<(String, std::time::Instant)>>,
}

impl Gate {
    pub(super) fn new(access: AdminAccess, bound: std::net::SocketAddr) -> Gate {
        let mut hosts = vec![bound.to_string(), format!("localhost:{}", bound.port())];
        if bound.ip().is_loopback() || bound.ip().is_unspecified() {
            hosts.push(format!("127.0.0.1:{}", bound.port()));
            hosts.push(format!("[::1]:{}", bound.port()));
        }
        hosts.extend(access.extra_hosts.iter().cloned());
        Gate {
            access,
            hosts,
            sessions: std::sync::Mutex::default(),
        }
    }

    fn new_session(&self) -> String {
        let id = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|(_, at)| at.elapsed() < SESSION);
        s.push((id.clone(), std::time::Instant::now()));
        id
    }

    fn session_ok(&self, offered: &str) -> bool {
        let s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.iter()
            .any(|(id, at)| at.elapsed() < SESSION && same_secret(id, offered))
    }
}

fn host(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::HOST).and_then(|h| h.to_str().ok())
}

fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Whether a POST came from a page served by this host (over HTTP, or HTTPS behind a proxy).
fn same_origin(headers: &HeaderMap, host: &str) -> bool {
    let from = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let ours = |url: &str, exact: bool| {
        ["http://", "https://"].iter().any(|scheme| {
            let origin = format!("{scheme}{host}");
            url == origin || (!exact && url.starts_with(&format!("{origin}/")))
        })
    };
    match (from(header::ORIGIN), from(header::REFERER)) {
        (Some(origin), _) => ours(origin, true),
        (None, Some(referer)) => ours(referer, false),
        (None, None) => false,
    }
}

/// The middleware in front of every admin route.
pub(super) async fn guard(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let Some(host) = host(headers).filter(|h| gate.hosts.iter().any(|ok| ok == h)) else {
        return (
            StatusCode::FORBIDDEN,
            "unknown Host: the admin page answers only to the address it is served on (add names with --admin-host)\n",
        )
            .into_response();
    };
    let is_post = request.method() == axum::http::Method::POST;
    if request.uri().path() == "/login" {
        // The login form itself; its POST must come from the page, like any other.
        if is_post && !same_origin(headers, host) {
            return (StatusCode::FORBIDDEN, "cross-origin login refused\n").into_response();
        }
        return next.run(request).await;
    }
    if let Some(t) = bearer_token(headers) {
        return if gate.access.matches(t) {
            next.run(request).await
        } else {
            unauthorized()
        };
    }
    match cookie_token(headers) {
        Some(t) if gate.session_ok(t) => {
            if is_post && !same_origin(headers, host) {
                (StatusCode::FORBIDDEN, "cross-origin request refused\n").into_response()
            } else {
                next.run(request).await
            }
        }
        _ => unauthorized(),
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Html(login_form("")),
    )
        .into_response()
}

fn login_form(note: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Switchyard admin: sign in</title></head><body style=\"font-family:system-ui,sans-serif;margin:2rem\"><h1>Switchyard admin</h1><p>{note}</p><form method=\"post\" action=\"/login\"><label>Admin token <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"current-password\"></label> <button type=\"submit\" id=\"sign-in\">Sign in</button></form><p>The token is the one the process was started with (SWITCHYARD_ADMIN_TOKEN or --admin-token-file).</p></body></html>"
    )
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct Login {
    token: String,
}

/// GET /login: the form.
pub(super) async fn login_page() -> Html<String> {
    Html(login_form(""))
}

/// POST /login: sets the session cookie when the token is right.
pub(super) async fn login(
    State(gate): State<Arc<Gate>>,
    axum::Form(form): axum::Form<Login>,
) -> Response {
    if !gate.access.matches(form.token.trim()) {
        return (
            StatusCode::UNAUTHORIZED,
            Html(login_form("That token is not right.")),
        )
            .into_response();
    }
    (
        [(
            header::SET_COOKIE,
            format!(
                "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
                gate.new_session(),
                SESSION.as_secs()
            ),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn tokens_must_be_long_and_match_exactly() {
        assert!(AdminAccess::new("short", vec![]).is_err());
        let a = AdminAccess::new("0123456789abcdef0123\n", vec![]).unwrap();
        assert!(a.matches("0123456789abcdef0123"));
        assert!(!a.matches("0123456789abcdef0124"));
        assert!(!a.matches("0123456789abcdef012"));
    }

    #[test]
    fn a_browser_session_is_a_random_id_that_the_token_is_not() {
        let access = AdminAccess::new("0123456789abcdef0123", vec![]).unwrap();
        let gate = Gate::new(access, "127.0.0.1:8080".parse().unwrap());
        let id = gate.new_session();
        assert!(gate.session_ok(&id));
        assert!(!id.contains("0123456789abcdef"));
        assert!(
            !gate.session_ok("0123456789abcdef0123"),
            "the token is not a session"
        );
        assert!(!gate.session_ok(&id[1..]));
    }

    #[test]
    fn cookies_bearers_and_origins_are_read_as_sent() {
        let h = headers(&[
            (header::COOKIE, "a=1; switchyard_admin=tok; b=2"),
            (header::AUTHORIZATION, "Bearer xyz"),
            (header::ORIGIN, "http://127.0.0.1:8080"),
        ]);
        assert_eq!(cookie_token(&h), Some("tok"));
        assert_eq!(bearer_token(&h), Some("xyz"));
        assert!(same_origin(&h, "127.0.0.1:8080"));
        let proxied = headers(&[(header::ORIGIN, "https://admin.example")]);
        assert!(same_origin(&proxied, "admin.example"));
        assert!(!same_origin(&h, "evil.example:8080"));
        let referer = headers(&[(header::REFERER, "http://127.0.0.1:8080/?reason=x")]);
        assert!(same_origin(&referer, "127.0.0.1:8080"));
        assert!(!same_origin(&HeaderMap::new(), "127.0.0.1:8080"));
    }
}
