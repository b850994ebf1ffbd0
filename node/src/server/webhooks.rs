//! Event webhooks: the API (`/v1/webhooks`) and delivery.
//!
//! The leader delivers (one deliverer in the cluster, so each event goes out once per
//! leader): every webhook gets its matching events in order, one `POST` each, JSON
//! body as in `GET /v1/events`, headers `X-Berth-Event` (type) and `X-Berth-Delivery`
//! (event id). A 2xx answer within 5 s counts as delivered; anything else is retried
//! with exponential backoff (1 s doubling to 60 s) while later events wait — order is
//! kept. Progress and the last error are replicated ([`Command::WebhookProgress`])
//! after each batch, so a new leader resumes there: delivery is at least once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::http::JsonBody;
use super::openapi::Stale;
use super::Node;
use crate::error::ApiError;
use crate::state::webhooks::Webhook;
use crate::state::{Command, Reply};

const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Events per delivery round (then progress is recorded).
const BATCH: usize = 100;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    /// Where events are POSTed (`http://` only).
    #[schema(pattern = "^http://")]
    pub url: String,
    #[serde(default)]
    pub app: Option<String>,
    /// Event types (empty or absent: all).
    #[serde(default)]
    pub events: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub id: u64,
    pub url: String,
    pub app: Option<String>,
    pub events: Vec<String>,
    pub created_at: String,
    pub delivered: u64,
    pub last_error: Option<String>,
    pub failing_since: Option<String>,
}

fn view(h: &Webhook) -> WebhookView {
    WebhookView {
        id: h.id,
        url: h.url.clone(),
        app: h.app.clone(),
        events: h.types.clone(),
        created_at: super::workloads::time(h.created_at),
        delivered: h.delivered,
        last_error: h.last_error.clone(),
        failing_since: h.failing_since.map(super::workloads::time),
    }
}

fn webhook_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| ApiError::invalid("invalid_request", format!("{id:?} is not a webhook id")))
}

async fn write(node: &Node, cmd: Command) -> Result<WebhookView, ApiError> {
    match node.proposer.write(cmd, None).await?.0.map_err(ApiError::from)? {
        Reply::Webhook(h) => Ok(view(&h)),
        other => Err(ApiError::internal(format!("unexpected reply {other:?}"))),
    }
}

/// `POST /v1/webhooks`.
#[utoipa::path(post, path = "/v1/webhooks", operation_id = "create_webhook", tag = "events", request_body = WebhookInput,
    responses((status = 201, description = "Created; delivery starts at the next event", body = WebhookView)))]
pub async fn create(
    State(node): State<Arc<Node>>,
    JsonBody(input): JsonBody<WebhookInput>,
) -> Result<impl IntoResponse, ApiError> {
    crate::state::webhooks::validate(&input.url, &input.events).map_err(ApiError::from)?;
    let cmd = Command::AddWebhook { url: input.url, app: input.app, types: input.events };
    Ok((StatusCode::CREATED, Json(write(&node, cmd).await?)))
}

/// `GET /v1/webhooks`.
#[utoipa::path(get, path = "/v1/webhooks", operation_id = "list_webhooks", tag = "events", params(Stale), responses((status = 200, body = Vec<WebhookView>)))]
pub async fn list(State(node): State<Arc<Node>>, stale: Stale) -> Result<impl IntoResponse, ApiError> {
    node.read_barrier(stale.get()).await?;
    let r = node.state.read();
    Ok(Json(r.state.webhooks.hooks.values().map(view).collect::<Vec<_>>()))
}

/// `DELETE /v1/webhooks/{id}`.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", operation_id = "delete_webhook", tag = "events",
    params(("id" = u64, Path, description = "Webhook id")), responses((status = 200, description = "Removed", body = WebhookView)))]
pub async fn delete(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(write(&node, Command::RemoveWebhook { id: webhook_id(&id)? }).await?))
}

/// Delivers one round to `h`: (the event id delivered up to, the error that stopped it).
async fn round(node: &Node, client: &reqwest::Client, h: &Webhook) -> (u64, Option<String>) {
    let (batch, cursor) = super::events::read(node, h.delivered, h.app.as_deref(), BATCH);
    let mut upto = h.delivered;
    for (id, kind, body) in batch {
        let wanted = h.types.is_empty() || kind == "events_dropped" || h.types.contains(&kind);
        if wanted {
            let sent = client
                .post(&h.url)
                .header("content-type", "application/json")
                .header("x-berth-event", &kind)
                .header("x-berth-delivery", id.to_string())
                .body(body.to_string())
                .send()
                .await;
            let failed = match sent {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("POST {} answered {} to event {id}", h.url, r.status())),
                Err(e) => Some(format!("POST {} failed for event {id}: {e}", h.url)),
            };
            if let Some(e) = failed {
                return (upto, Some(e));
            }
        }
        upto = id;
    }
    (upto.max(cursor), None)
}

/// Runs while this node leads (the leader loop aborts it when it stops leading).
pub async fn deliver(node: Arc<Node>) {
    let client = match reqwest::Client::builder().timeout(ATTEMPT_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => return tracing::error!(error = %e, "no HTTP client: webhooks are not delivered"),
    };
    let mut changes = node.state.subscribe_changes();
    // Per failing webhook: when to retry, and the current backoff.
    let mut backoff: HashMap<u64, (Instant, Duration)> = HashMap::new();
    loop {
        let (hooks, last) = {
            let r = node.state.read();
            (r.state.webhooks.hooks.values().cloned().collect::<Vec<Webhook>>(), r.state.events.last)
        };
        backoff.retain(|id, _| hooks.iter().any(|h| h.id == *id));
        let now = Instant::now();
        let due: Vec<&Webhook> = hooks
            .iter()
            .filter(|h| h.delivered < last && backoff.get(&h.id).is_none_or(|(at, _)| now >= *at))
            .collect();
        let outcomes = futures::future::join_all(due.iter().map(|h| round(&node, &client, h))).await;
        let mut more = false;
        for (h, (upto, error)) in due.iter().zip(outcomes) {
            if upto > h.delivered || error != h.last_error {
                let cmd = Command::WebhookProgress { id: h.id, upto, error: error.clone() };
                if let Err(e) = node.proposer.write(cmd, None).await {
                    tracing::debug!(error = %e, "cannot record webhook progress");
                }
            }
            match error {
                Some(e) => {
                    let wait = backoff.get(&h.id).map_or(Duration::from_secs(1), |(_, d)| (*d * 2).min(MAX_BACKOFF));
                    tracing::warn!(webhook = h.id, error = %e, retry_in = ?wait, "webhook delivery failed");
                    backoff.insert(h.id, (Instant::now() + wait, wait));
                }
                None => {
                    backoff.remove(&h.id);
                    more |= upto < last;
                }
            }
        }
        if more {
            // Progress is applied before the next round reads it.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let retry = backoff.values().map(|(at, _)| at.saturating_duration_since(Instant::now())).min();
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(retry.unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(1))) => {}
            () = node.stopping() => return,
        }
    }
}
