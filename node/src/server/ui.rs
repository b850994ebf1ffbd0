//! The web UI at `/ui`: one page of plain HTML, CSS and JavaScript compiled into the
//! binary (no CDN, no build step), reading and writing the same `/v1` API as the CLI
//! on the node that served it. Apps with their rollout progress and actions (deploy,
//! scale, restart, rollback, delete), instances with state, health, host and IP,
//! hosts with CPU and memory bars (drain, make eligible), pools with usage bars,
//! deployments (cancel), and the live event stream (`/v1/events`, Server-Sent Events).
//!
//! Views are stale reads of the node's own replica, so a node cut off from the leader
//! still shows its last view, and the cluster line says there is no leader. The page
//! builds every element with `textContent` (nothing from the API is parsed as HTML),
//! and the Content-Security-Policy allows only the node's own scripts and styles.
//! Tested in headless Chromium (`tests/ui.rs`).

use std::sync::Arc;

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::Node;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");
const ICON: &str = include_str!("ui/favicon.svg");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                   form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CONTENT_SECURITY_POLICY, CSP),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // The assets change with the binary; a node upgraded in place serves the new
            // ones at once.
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/ui/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/ui/favicon.svg", get(|| async { asset("image/svg+xml", ICON) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        for url in ["/ui/app.js", "/ui/style.css", "/ui/favicon.svg"] {
            assert!(INDEX.contains(url), "{url}");
        }
        assert!(!INDEX.contains("http://") && !INDEX.contains("https://"), "no CDN");
        assert!(!SCRIPT.contains("innerHTML"), "nothing from the API is parsed as HTML");
        assert!(!SCRIPT.contains("http://") && !SCRIPT.contains("https://"));
    }
}
