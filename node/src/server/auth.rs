//! API tokens: making them, checking them on every HTTP and gRPC request, and the
//! `/v1/tokens` endpoints.
//!
//! A token is `berth_<id>_<secret>`: `id` (12 hex digits) is public and names the
//! token in lists and logs; `secret` is 256 random bits (64 hex digits) made by the node
//! that takes the create request from the OS's generator. Only SHA-256 of the secret is
//! replicated ([`crate::state::tokens`]); a fast hash is right for a random 256-bit
//! secret (nothing to brute-force, unlike a password), and comparison takes the same
//! time wherever the hashes differ.
//!
//! ## What needs what
//!
//! While no token exists, everything is open. Once one does:
//! - `/healthz`, `/readyz`, `/metrics`, `/ping`, `/v1/openapi.json` and the UI's files
//!   stay open (probes, Prometheus, the page that asks for a token);
//! - reads (`GET`) are open unless the node runs with `--require-token-for-reads`;
//!   any valid token may read;
//! - writes need a `deploy` token, and these need `admin`: tokens, cluster membership
//!   and snapshots, pool creation and deletion, host drain and eligibility.
//!
//! A request without a token where one is needed gets 401 `unauthenticated`; an
//! unknown or revoked token 401 `invalid_token` (a token is always checked when one is
//! sent, even on an open cluster); a valid token with too small a role 403
//! `forbidden`. Marathon paths (`/v2`) answer in Marathon's shape.
//!
//! ## Consistency
//!
//! A node checks tokens against its own replica. A token it does not know yet (just
//! created through another node) is looked up again after a read barrier (a
//! linearizable read through the leader), so a fresh token works at once everywhere.
//! A write is checked twice: by the node that takes it, and by the leader on its own
//! state, from the token's id and hash that travel with the write ([`Credentials`]) —
//! a node whose replica is behind (restarted, cut off, its disk full) can neither let
//! a revoked token write nor take writes without a token once the first exists. A
//! read on such a node may pass until it applies the revocation (milliseconds, where
//! Nomad's and Consul's ACL caches allow up to 30 s).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::http::JsonBody;
use super::Node;
use crate::error::ApiError;
use crate::state::tokens::{Role, Token};
use crate::state::{Command, Reply};
use crate::tls::PeerInfo;

const PREFIX: &str = "berth_";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;

/// Who sent a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// No token (allowed where nothing is needed).
    Anonymous,
    /// A valid token: its id, name and role.
    Token { id: String, name: String, role: Role },
}

impl Caller {
    /// The token id, if any (rate limits count per token, else per address).
    pub fn token_id(&self) -> Option<&str> {
        match self {
            Caller::Anonymous => None,
            Caller::Token { id, .. } => Some(id),
        }
    }
}

/// What an API write's caller proved, carried with the write to the leader, which
/// checks it against its own state ([`check_on_leader`]): the node that took the
/// request checked it on its replica, which may be behind (a revocation, the first
/// token) — the leader's state is never behind what it committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credentials {
    /// The token's id and the SHA-256 of its secret (never the secret); None: no token.
    pub token: Option<(String, String)>,
    /// The least role the request needs.
    pub need: Role,
}

tokio::task_local! {
    /// The credentials of the API write this task serves (set by [`guard`] and the
    /// gRPC services); read by the proposer when it sends the write to the leader.
    static CREDENTIALS: Credentials;
}

/// The credentials of the API write being served, if this task serves one.
pub fn current() -> Option<Credentials> {
    CREDENTIALS.try_with(Clone::clone).ok()
}

/// Runs `f` as the API write of a caller with `token` needing `need`.
pub async fn as_caller<F: std::future::Future>(headers: &HeaderMap, need: Need, f: F) -> F::Output {
    let Need::Role(need) = need else { return f.await };
    let token =
        presented(headers).ok().flatten().and_then(|t| split(&t).map(|(id, secret)| (id.to_string(), hash(secret))));
    CREDENTIALS.scope(Credentials { token, need }, f).await
}

/// The leader's check of a write's credentials, on its own state: the same rules as
/// [`authorize`] (open while no token exists).
pub fn check_on_leader(state: &crate::state::State, c: &Credentials) -> Result<(), ApiError> {
    if state.tokens.is_empty() {
        return Ok(());
    }
    let Some((id, hash)) = &c.token else { return Err(unauthenticated()) };
    let t = state.tokens.get(id).filter(|t| same(&t.hash, hash)).ok_or_else(invalid_token)?;
    if t.role < c.need {
        return Err(forbidden(t, c.need));
    }
    Ok(())
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing, ever.
    Public,
    /// A read: open unless the node requires tokens for reads.
    Read,
    /// A token with at least this role (once any token exists).
    Role(Role),
}

fn random_hex(n: usize) -> Result<String, ApiError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| ApiError::internal(format!("the OS random generator failed: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// SHA-256 of a token's secret part, hex.
pub fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits `berth_<id>_<secret>` (None when it is not shaped so).
pub fn split(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == 2 * n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, ID_BYTES) && hex(secret, SECRET_BYTES)).then_some((id, secret))
}

/// Compares two strings in time that depends on their length only.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token a request carries: `Authorization: Bearer <token>`, Marathon/DC/OS's
/// `Authorization: token=<token>`, or HTTP basic auth with the token as password (for
/// clients that know nothing else).
pub fn presented(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(axum::http::header::AUTHORIZATION) else { return Ok(None) };
    let bad = || {
        ApiError::new(
            401,
            "invalid_token",
            "the Authorization header is not `Bearer <token>`, `token=<token>` or basic auth with the token as password",
        )
    };
    let v = v.to_str().map_err(|_| bad())?.trim();
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    let token = if scheme.eq_ignore_ascii_case("bearer") {
        rest.trim().to_string()
    } else if let Some(t) = v.strip_prefix("token=") {
        t.trim().to_string()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).map_err(|_| bad())?;
        let text = String::from_utf8(decoded).map_err(|_| bad())?;
        text.split_once(':').map(|(_, p)| p.to_string()).ok_or_else(bad)?
    } else {
        return Err(bad());
    };
    if token.is_empty() {
        return Err(bad());
    }
    Ok(Some(token))
}

fn unauthenticated() -> ApiError {
    ApiError::new(
        401,
        "unauthenticated",
        "this cluster has API tokens: send one as `Authorization: Bearer <token>` (the CLI: --token or BERTH_TOKEN)",
    )
}

fn forbidden(t: &Token, need: Role) -> ApiError {
    ApiError::new(
        403,
        "forbidden",
        format!("token {} ({}) has role {}; this needs {}", t.id, t.name, t.role.as_str(), need.as_str()),
    )
}

fn invalid_token() -> ApiError {
    ApiError::new(401, "invalid_token", "the token is not valid: mistyped, or revoked")
}

/// Looks up a token in this node's replica: Some(token) if valid, None if unknown,
/// Err if the id is known and the secret wrong.
fn lookup(node: &Node, id: &str, secret: &str) -> Result<Option<Token>, ApiError> {
    let r = node.state.read();
    match r.state.tokens.get(id) {
        None => Ok(None),
        Some(t) if same(&t.hash, &hash(secret)) => Ok(Some(t.clone())),
        Some(_) => Err(invalid_token()),
    }
}

/// Checks a request's token against what it needs; the caller, or the error to answer.
pub async fn authorize(node: &Node, headers: &HeaderMap, need: Need) -> Result<Caller, ApiError> {
    if need == Need::Public {
        return Ok(Caller::Anonymous);
    }
    let Some(token) = presented(headers)? else {
        let open = node.state.read().state.tokens.is_empty();
        return match need {
            _ if open => Ok(Caller::Anonymous),
            Need::Read if !node.config.require_token_for_reads => Ok(Caller::Anonymous),
            _ => Err(unauthenticated()),
        };
    };
    let (id, secret) = split(&token).ok_or_else(invalid_token)?;
    let found = match lookup(node, id, secret)? {
        Some(t) => t,
        // Perhaps created a moment ago through another node: catch up, then look again.
        None => {
            node.read_barrier(false).await?;
            lookup(node, id, secret)?.ok_or_else(invalid_token)?
        }
    };
    if let Need::Role(role) = need {
        if found.role < role {
            return Err(forbidden(&found, role));
        }
    }
    Ok(Caller::Token { id: found.id, name: found.name, role: found.role })
}

/// What an HTTP request needs, by method and path.
pub fn need(method: &Method, path: &str) -> Need {
    let open = ["/healthz", "/readyz", "/metrics", "/ping", "/v1/openapi.json", "/ui", "/favicon.ico"];
    if open.contains(&path) || path.starts_with("/ui/") {
        return Need::Public;
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    match segs.as_slice() {
        // Listing tokens is an admin's business; `self` is anyone's own.
        ["v1", "tokens", "self"] => Need::Read,
        ["v1", "tokens", ..] => Need::Role(Role::Admin),
        _ if read => Need::Read,
        ["v1", "cluster", ..] | ["v1", "hosts", ..] => Need::Role(Role::Admin),
        ["v1", "ipam", "pools"] | ["v1", "ipam", "pools", _] => Need::Role(Role::Admin),
        _ => Need::Role(Role::Deploy),
    }
}

/// Whether a request was proxied here by another node (logs, exec): it carries the
/// header and — with TLS — came with a node certificate of the cluster CA, or —
/// without — from a registered node's HTTP address.
fn proxied_by_a_node(node: &Node, headers: &HeaderMap, peer: Option<PeerInfo>) -> bool {
    let Some(peer) = peer.filter(|_| headers.contains_key("x-berth-proxied")) else { return false };
    if node.tls.is_some() {
        return peer.node;
    }
    let r = node.state.read();
    r.state.nodes.registered.values().any(|n| n.http.parse::<SocketAddr>().is_ok_and(|a| a.ip() == peer.addr.ip()))
}

/// The rate limit's verdict on a request (`--rate-limit`, see [`super::limits`]):
/// Err with the error and how long until the client may send again.
fn limit(node: &Node, req: &Request, caller: Option<&Caller>, need: Need) -> Result<(), (ApiError, Duration)> {
    let Some(limiter) = &node.rate_limiter else { return Ok(()) };
    let peer = req.extensions().get::<ConnectInfo<PeerInfo>>().map(|c| c.0);
    if need == Need::Public || proxied_by_a_node(node, req.headers(), peer) {
        return Ok(());
    }
    let key = super::limits::client_key(caller.and_then(Caller::token_id), peer.map(|p| p.addr.ip()));
    limiter.take(&key, std::time::Instant::now()).map_err(|wait| {
        node.metrics.rate_limited.inc();
        let who = key.replacen("token:", "token ", 1).replacen("addr:", "", 1);
        let e = ApiError::new(
            429,
            "rate_limited",
            format!(
                "{who} sent more than {} requests per second to node {}; retry in {} ms",
                limiter.rate(),
                node.id,
                wait.as_millis().max(1)
            ),
        );
        (e, wait)
    })
}

/// The middleware in front of every HTTP route: checks the token and the rate limit,
/// and puts the [`Caller`] into the request's extensions.
pub async fn guard(State(node): State<Arc<Node>>, mut req: Request, next: Next) -> Response {
    let need = need(req.method(), req.uri().path());
    let checked = authorize(&node, req.headers(), need).await;
    // A refused request counts against its address too (guessing tokens costs).
    let (checked, retry) = match (limit(&node, &req, checked.as_ref().ok(), need), checked) {
        (Err((e, wait)), _) => (Err(e), Some(wait)),
        (Ok(()), c) => (c, None),
    };
    match checked {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            let headers = req.headers().clone();
            as_caller(&headers, need, next.run(req)).await
        }
        Err(e) => {
            if e.status == 401 || e.status == 403 {
                node.metrics.auth_refused.with_label_values(&[e.code.as_str()]).inc();
                // `DELETE /v1/tokens/{id}` may carry a whole token: never log a secret.
                let path = req.uri().path();
                let path = if path.starts_with("/v1/tokens/") { "/v1/tokens/{id}" } else { path };
                tracing::info!(method = %req.method(), path, code = %e.code, "request refused");
            }
            let challenge = e.status == 401;
            let mut resp = if req.uri().path().starts_with("/v2/") {
                super::marathon::MarathonError::from(e).into_response()
            } else {
                e.into_response()
            };
            if challenge {
                resp.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer realm=\"berth\""));
            }
            if let Some(wait) = retry {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                resp.headers_mut().insert("retry-after", HeaderValue::from(secs.max(1)));
            }
            resp
        }
    }
}

/// The gRPC services' check: what `guard` does for HTTP, on the call's metadata;
/// the metadata as headers, for [`as_caller`].
pub async fn check_grpc<T>(node: &Node, req: &tonic::Request<T>, need: Need) -> Result<HeaderMap, tonic::Status> {
    let headers = req.metadata().clone().into_headers();
    match authorize(node, &headers, need).await {
        Ok(_) => Ok(headers),
        Err(e) => {
            if e.status == 401 || e.status == 403 {
                node.metrics.auth_refused.with_label_values(&[e.code.as_str()]).inc();
            }
            Err(e.to_status())
        }
    }
}

/// `POST /v1/tokens`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenInput {
    pub role: Role,
    /// What it is for (default: the role and id).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub name: Option<String>,
}

/// A token as listed: never its secret.
#[derive(Serialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: String,
}

/// A token just created: the only time its secret is shown.
#[derive(Serialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub view: TokenView,
    /// The token to send (`Authorization: Bearer <token>`); shown this once only.
    pub token: String,
}

fn view(t: &Token) -> TokenView {
    TokenView { id: t.id.clone(), name: t.name.clone(), role: t.role, created_at: super::workloads::time(t.created_at) }
}

async fn write(node: &Node, cmd: Command) -> Result<Token, ApiError> {
    match node.proposer.write(cmd, None).await?.0.map_err(ApiError::from)? {
        Reply::Token(t) => Ok(t),
        other => Err(ApiError::internal(format!("unexpected reply {other:?}"))),
    }
}

/// Makes a token for `role`: (its record, with the hash, and the token to hand out).
pub fn make(role: Role, name: Option<String>) -> Result<(Token, String), ApiError> {
    let id = random_hex(ID_BYTES)?;
    let secret = random_hex(SECRET_BYTES)?;
    let name = name.unwrap_or_else(|| format!("{}-{id}", role.as_str()));
    crate::state::tokens::validate_name(&name).map_err(ApiError::from)?;
    let token = format!("{PREFIX}{id}_{secret}");
    Ok((Token { id, name, role, hash: hash(&secret), created_at: 0 }, token))
}

#[utoipa::path(post, path = "/v1/tokens", operation_id = "create_token", tag = "tokens", request_body = TokenInput,
    responses((status = 201, description = "Created; `token` is shown this once", body = CreatedToken)))]
pub async fn create(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    JsonBody(input): JsonBody<TokenInput>,
) -> Result<impl IntoResponse, ApiError> {
    if headers.contains_key("idempotency-key") {
        // A repeat could not show the secret again (it is not kept), so it is refused
        // rather than answered without one.
        return Err(ApiError::invalid(
            "invalid_request",
            "POST /v1/tokens takes no Idempotency-Key: the secret is shown once and never stored; \
             if an answer is lost, list the tokens and revoke the one you did not get",
        ));
    }
    let (record, secret) = make(input.role, input.name)?;
    let t = write(&node, Command::CreateToken(record)).await?;
    tracing::info!(id = %t.id, name = %t.name, role = t.role.as_str(), "token created");
    Ok((StatusCode::CREATED, Json(CreatedToken { view: view(&t), token: secret })))
}

#[utoipa::path(get, path = "/v1/tokens", operation_id = "list_tokens", tag = "tokens", params(super::openapi::Stale),
    responses((status = 200, body = Vec<TokenView>)))]
pub async fn list(State(node): State<Arc<Node>>, stale: super::openapi::Stale) -> Result<impl IntoResponse, ApiError> {
    node.read_barrier(stale.get()).await?;
    let r = node.state.read();
    Ok(Json(r.state.tokens.tokens.values().map(view).collect::<Vec<_>>()))
}

#[utoipa::path(get, path = "/v1/tokens/self", operation_id = "token_self", tag = "tokens",
    responses((status = 200, description = "The token this request carries", body = TokenView)))]
pub async fn whoami(
    State(node): State<Arc<Node>>,
    caller: axum::Extension<Caller>,
) -> Result<impl IntoResponse, ApiError> {
    match caller.0 {
        Caller::Token { id, .. } => {
            let r = node.state.read();
            let t = r.state.tokens.get(&id).ok_or_else(invalid_token)?;
            Ok(Json(view(t)))
        }
        Caller::Anonymous => Err(ApiError::new(401, "unauthenticated", "this request carries no token")),
    }
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", operation_id = "revoke_token", tag = "tokens",
    params(("id" = String, Path, description = "The token's id (or the whole token)")),
    responses((status = 200, description = "Revoked", body = TokenView)))]
pub async fn revoke(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let id = split(&id).map(|(id, _)| id.to_string()).unwrap_or(id);
    let t = write(&node, Command::RevokeToken { id }).await?;
    tracing::info!(id = %t.id, name = %t.name, "token revoked");
    Ok(Json(view(&t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_and_hash() {
        let (t, token) = make(Role::Deploy, None).unwrap();
        let (id, secret) = split(&token).unwrap();
        assert_eq!(id, t.id);
        assert_eq!(hash(secret), t.hash);
        assert!(!t.hash.contains(secret));
        assert_eq!(t.name, format!("deploy-{id}"));
        assert!(split("berth_abc_def").is_none());
        assert!(split(&token.replace("berth_", "")).is_none());
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }

    #[test]
    fn every_way_of_sending_a_token() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h).unwrap(), None);
        for (v, want) in [
            ("Bearer tok", "tok"),
            ("bearer  tok ", "tok"),
            ("token=tok", "tok"),
            ("Basic dXNlcjp0b2s=", "tok"), // user:tok
        ] {
            h.insert("authorization", v.parse().unwrap());
            assert_eq!(presented(&h).unwrap().as_deref(), Some(want), "{v}");
        }
        for v in ["Bearer", "Digest x", "Basic !!!", "Basic dXNlcg=="] {
            h.insert("authorization", v.parse().unwrap());
            assert_eq!(presented(&h).unwrap_err().code, "invalid_token", "{v}");
        }
    }

    #[test]
    fn the_leader_checks_a_writes_credentials_on_its_own_state() {
        let mut state = crate::state::State::default();
        let creds = |token: Option<(String, String)>, need| Credentials { token, need };
        // Open while no token exists, whatever was sent.
        assert!(check_on_leader(&state, &creds(None, Role::Admin)).is_ok());
        let (admin, secret) = make(Role::Admin, Some("ops".into())).unwrap();
        let (deploy, deploy_secret) = make(Role::Deploy, None).unwrap();
        assert!(state.tokens.create(admin.clone(), 1).0.is_ok());
        assert!(state.tokens.create(deploy.clone(), 1).0.is_ok());
        let pair = |t: &Token, s: &str| Some((t.id.clone(), hash(split(s).unwrap().1)));
        let code = |r: Result<(), ApiError>| r.unwrap_err().code;
        assert_eq!(code(check_on_leader(&state, &creds(None, Role::Deploy))), "unauthenticated");
        assert_eq!(code(check_on_leader(&state, &creds(pair(&deploy, &deploy_secret), Role::Admin))), "forbidden");
        assert!(check_on_leader(&state, &creds(pair(&deploy, &deploy_secret), Role::Deploy)).is_ok());
        assert!(check_on_leader(&state, &creds(pair(&admin, &secret), Role::Admin)).is_ok());
        let forged = Some((admin.id.clone(), hash("not-the-secret")));
        assert_eq!(code(check_on_leader(&state, &creds(forged, Role::Deploy))), "invalid_token");
        // Revoked (on the leader) while a lagging node still knew it: refused.
        assert!(state.tokens.revoke(&deploy.id).0.is_ok());
        assert_eq!(code(check_on_leader(&state, &creds(pair(&deploy, &deploy_secret), Role::Deploy))), "invalid_token");
    }

    #[tokio::test]
    async fn an_api_write_carries_its_callers_credentials_and_only_a_write_does() {
        let (_, token) = make(Role::Deploy, None).unwrap();
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (id, secret) = split(&token).unwrap();
        let want = Credentials { token: Some((id.to_string(), hash(secret))), need: Role::Deploy };
        assert_eq!(as_caller(&h, Need::Role(Role::Deploy), async { current() }).await, Some(want));
        assert_eq!(as_caller(&h, Need::Read, async { current() }).await, None);
        assert_eq!(current(), None, "the node's own work carries none");
        let anonymous = as_caller(&HeaderMap::new(), Need::Role(Role::Admin), async { current() }).await;
        assert_eq!(anonymous, Some(Credentials { token: None, need: Role::Admin }));
    }

    #[test]
    fn what_each_request_needs() {
        let admin = Need::Role(Role::Admin);
        let deploy = Need::Role(Role::Deploy);
        for (m, p, want) in [
            (Method::GET, "/healthz", Need::Public),
            (Method::GET, "/ui/app.js", Need::Public),
            (Method::GET, "/metrics", Need::Public),
            (Method::GET, "/v1/apps", Need::Read),
            (Method::GET, "/v2/apps", Need::Read),
            (Method::GET, "/v1/tokens", admin),
            (Method::GET, "/v1/tokens/self", Need::Read),
            (Method::POST, "/v1/tokens", admin),
            (Method::DELETE, "/v1/tokens/abc", admin),
            (Method::PUT, "/v1/apps/web", deploy),
            (Method::POST, "/v1/instances/web-1/exec", deploy),
            (Method::POST, "/v2/apps", deploy),
            (Method::POST, "/v1/ipam/pools/lan/allocations", deploy),
            (Method::DELETE, "/v1/ipam/pools/lan/allocations/10.0.0.5", deploy),
            (Method::POST, "/v1/ipam/pools", admin),
            (Method::DELETE, "/v1/ipam/pools/lan", admin),
            (Method::POST, "/v1/cluster/members", admin),
            (Method::POST, "/v1/cluster/snapshot", admin),
            (Method::POST, "/v1/hosts/2/drain", admin),
            (Method::PUT, "/v1/registers/k", deploy),
        ] {
            assert_eq!(need(&m, p), want, "{m} {p}");
        }
    }
}
