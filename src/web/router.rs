//! From an HTTP request to an answer: the credentials check, the read-only
//! rule for actions, the route table, and how errors become status codes.

use std::io::Cursor;
use std::sync::Arc;

use tiny_http::{Header, Method, Request, Response};

use super::auth::{self, Verdict};
use super::progress::ProgressBoard;
use super::{api, metrics, WebOptions};
use crate::error::Error;
use crate::handle::Redswarm;

/// The page, its script and its style: static, in the binary, no CDN.
const PAGE_HTML: &str = include_str!("page.html");
const PAGE_JS: &str = include_str!("page.js");
const PAGE_CSS: &str = include_str!("page.css");

/// Header the page sends with every action. A cross-site form cannot set
/// a custom header (and we answer no CORS preflight), so a POST carrying
/// it comes from a script on this origin or from a deliberate client:
/// this closes cross-site request forgery through remembered basic-auth
/// credentials.
pub(crate) const ACTION_HEADER: &str = "X-Redswarm-Action";

/// A response body and its status and content type.
pub(crate) struct Answer {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    challenge: bool,
}

impl Answer {
    pub(crate) fn json(status: u16, value: &serde_json::Value) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
            challenge: false,
        }
    }

    fn text(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            status,
            content_type,
            body: body.into(),
            challenge: false,
        }
    }

    /// `{"error": "..."}` with `status`.
    pub(crate) fn error(status: u16, message: impl std::fmt::Display) -> Answer {
        Answer::json(status, &serde_json::json!({ "error": message.to_string() }))
    }

    /// The status for a library error: the caller's fault (400, 404,
    /// 409), Redis unreachable (503), or ours (500).
    pub(crate) fn from_error(e: &Error) -> Answer {
        let status = match e {
            Error::InvalidInput { .. } => 400,
            Error::NotFound { .. } => 404,
            Error::Conflict { .. } => 409,
            e if e.is_unavailable() => 503,
            _ => 500,
        };
        if status >= 500 {
            log::warn!("status server: {e}");
        }
        Answer::error(status, e)
    }
}

/// Answers requests for one server.
pub(crate) struct Router {
    swarm: Redswarm,
    options: WebOptions,
    board: Arc<ProgressBoard>,
}

impl Router {
    pub(crate) fn new(swarm: Redswarm, options: WebOptions, board: Arc<ProgressBoard>) -> Router {
        Router {
            swarm,
            options,
            board,
        }
    }

    /// Answers one request; a client that went away is only logged.
    pub(crate) fn answer(&self, request: Request) {
        let answer = self.route(&request);
        let head = *request.method() == Method::Head;
        let body = if head { Vec::new() } else { answer.body };
        let length = body.len();
        // A known length: no chunked encoding for simple clients.
        let mut response = Response::new(
            answer.status.into(),
            Vec::new(),
            Cursor::new(body),
            Some(length),
            None,
        );
        for (name, value) in [
            ("Content-Type", answer.content_type),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            // Only our own script and style; no framing by other sites.
            (
                "Content-Security-Policy",
                "default-src 'self'; frame-ancestors 'none'; form-action 'none'",
            ),
        ] {
            add_header(&mut response, name, value);
        }
        if answer.challenge {
            add_header(
                &mut response,
                "WWW-Authenticate",
                "Basic realm=\"redswarm\", charset=\"UTF-8\"",
            );
        }
        if let Err(e) = request.respond(response) {
            log::debug!("status server: client went away: {e}");
        }
    }

    fn route(&self, request: &Request) -> Answer {
        let authorization = header_value(request, "Authorization");
        if auth::check(self.options.token.as_deref(), authorization) == Verdict::Refused {
            let mut a = Answer::error(401, "a token is required (Authorization: Bearer <token>)");
            a.challenge = true;
            return a;
        }
        let (path, query) = match request.url().split_once('?') {
            Some((p, q)) => (p, q),
            None => (request.url(), ""),
        };
        let segments: Vec<String> = match path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect::<Option<Vec<_>>>()
        {
            Some(s) => s,
            None => return Answer::error(400, "the path is not valid percent-encoded UTF-8"),
        };
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        match request.method() {
            Method::Get | Method::Head => self.read(&segments, query),
            Method::Post => self.act(request, &segments),
            other => Answer::error(405, format!("method {other} is not served here")),
        }
    }

    /// The read-only routes.
    fn read(&self, segments: &[&str], query: &str) -> Answer {
        let limit = match query_limit(query, self.options.list_limit) {
            Ok(n) => n,
            Err(a) => return a,
        };
        let result = match segments {
            [] | ["index.html"] => return Answer::text(200, "text/html; charset=utf-8", PAGE_HTML),
            ["app.js"] => return Answer::text(200, "text/javascript; charset=utf-8", PAGE_JS),
            ["app.css"] => return Answer::text(200, "text/css; charset=utf-8", PAGE_CSS),
            ["metrics"] => {
                return match metrics::collect(&self.swarm) {
                    Ok(registry) => match metrics::text(&registry) {
                        Ok(text) => Answer::text(200, metrics::CONTENT_TYPE, text),
                        Err(e) => {
                            log::error!("status server: cannot encode the metrics: {e}");
                            Answer::error(500, "cannot encode the metrics")
                        }
                    },
                    Err(e) => Answer::from_error(&e),
                }
            }
            ["api", "overview"] => api::overview(&self.swarm, &self.options, &self.board),
            ["api", "nodes"] => api::nodes(&self.swarm),
            ["api", "queues"] => api::queues(&self.swarm),
            ["api", "locks"] => api::locks(&self.swarm),
            ["api", "semaphores"] => api::semaphores(&self.swarm),
            ["api", "clusters"] => api::clusters(&self.swarm),
            ["api", "trackers"] => api::trackers(&self.swarm),
            ["api", "queues", queue] => api::queue(&self.swarm, queue),
            ["api", "queues", queue, "failed"] => api::failed(&self.swarm, queue, limit),
            ["api", "queues", queue, "running"] => {
                api::running(&self.swarm, queue, limit, &self.board)
            }
            _ => return Answer::error(404, "no such page or endpoint"),
        };
        match result {
            Ok(value) => Answer::json(200, &value),
            Err(e) => Answer::from_error(&e),
        }
    }

    /// The actions: refused unless allowed, and only with the action
    /// header and (when the browser names it) the same origin.
    fn act(&self, request: &Request, segments: &[&str]) -> Answer {
        let known = matches!(segments, ["api", "queues", _, "failed", _, "retry"]);
        if !known {
            return Answer::error(404, "no such action");
        }
        if !self.options.allow_actions {
            return Answer::error(
                403,
                "this status server is read-only (start it with --allow-actions)",
            );
        }
        if header_value(request, ACTION_HEADER).is_none() {
            return Answer::error(
                403,
                format!("actions need the {ACTION_HEADER} header (sent by the status page)"),
            );
        }
        if let (Some(origin), Some(host)) = (
            header_value(request, "Origin"),
            header_value(request, "Host"),
        ) {
            let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
            if origin_host != host {
                return Answer::error(403, format!("cross-origin action from `{origin}` refused"));
            }
        }
        let result = match segments {
            ["api", "queues", queue, "failed", id, "retry"] => api::retry(&self.swarm, queue, id),
            _ => return Answer::error(404, "no such action"),
        };
        match result {
            Ok((status, value)) => Answer::json(status, &value),
            Err(e) => Answer::from_error(&e),
        }
    }
}

/// Adds a header built from our own constants (always valid ASCII; a
/// failure is logged rather than trusted away).
fn add_header(response: &mut Response<Cursor<Vec<u8>>>, name: &str, value: &str) {
    match Header::from_bytes(name.as_bytes(), value.as_bytes()) {
        Ok(h) => response.add_header(h),
        Err(()) => log::warn!("status server: cannot build the {name} header"),
    }
}

fn header_value<'r>(request: &'r Request, name: &'static str) -> Option<&'r str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

/// `?limit=N` (default `default`, at most [`api::MAX_LIST`]).
fn query_limit(query: &str, default: usize) -> Result<usize, Answer> {
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("limit=") {
            return match v.parse::<usize>() {
                Ok(n) if (1..=api::MAX_LIST).contains(&n) => Ok(n),
                _ => Err(Answer::error(
                    400,
                    format!("limit `{v}` is not a number in 1..={}", api::MAX_LIST),
                )),
            };
        }
    }
    Ok(default)
}

/// Decodes `%XX` escapes of one path segment; None when an escape is
/// broken or the bytes are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("%7Bq%7D").as_deref(), Some("{q}"));
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn limits_from_the_query() {
        assert_eq!(query_limit("", 50).ok(), Some(50));
        assert_eq!(query_limit("x=1&limit=7", 50).ok(), Some(7));
        assert!(query_limit("limit=0", 50).is_err());
        assert!(query_limit("limit=abc", 50).is_err());
        assert!(query_limit("limit=100000", 50).is_err());
    }
}
