//! Event webhooks, as replicated state: where to POST events, which ones, and how far
//! delivery got. The leader delivers (`crate::server::webhooks`) and records progress
//! with [`super::Command::WebhookProgress`], so a new leader goes on where the old
//! one stopped: every event is delivered at least once, in order; one the old leader
//! delivered but had not recorded yet is delivered again (receivers deduplicate by
//! the `X-Berth-Delivery` header, the event id).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::command::{DomainError, Reply, Response};
use super::events::TYPES;

/// At most this many webhooks.
pub const MAX_WEBHOOKS: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Webhook {
    pub id: u64,
    /// `http://host[:port]/path`.
    pub url: String,
    /// Only events of this app (None: all).
    pub app: Option<String>,
    /// Only events of these types (empty: all).
    pub types: Vec<String>,
    pub created_at: u64,
    /// The id of the last event delivered (or skipped as not matching).
    pub delivered: u64,
    /// Why the last attempt failed, while delivery fails.
    pub last_error: Option<String>,
    /// When delivery started failing (ms), while it fails.
    pub failing_since: Option<u64>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Webhooks {
    pub hooks: BTreeMap<u64, Webhook>,
    next_id: u64,
}

fn not_found(id: u64) -> DomainError {
    DomainError::not_found("webhook_not_found", format!("no webhook {id}"))
}

/// Checks a webhook's URL and filters; the error names what is wrong.
pub fn validate(url: &str, types: &[String]) -> Result<(), DomainError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        DomainError::invalid(
            "invalid_request",
            format!("url {url:?}: only http:// URLs are delivered to (no TLS client in berth yet)"),
        )
    })?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) || url.len() > 2048 {
        return Err(DomainError::invalid("invalid_request", format!("url {url:?} has no valid host")));
    }
    if let Some(bad) = types.iter().find(|t| !TYPES.contains(&t.as_str())) {
        return Err(DomainError::invalid(
            "invalid_request",
            format!("events: {bad:?} is not an event type (one of {})", TYPES.join(", ")),
        ));
    }
    Ok(())
}

impl Webhooks {
    /// Adds a webhook; it receives the events after `last_event`.
    pub fn add(&mut self, url: String, app: Option<String>, types: Vec<String>, at: u64, last_event: u64) -> Response {
        if let Err(e) = validate(&url, &types) {
            return Response(Err(e));
        }
        if self.hooks.len() >= MAX_WEBHOOKS {
            return Response(Err(DomainError::conflict(
                "too_many_webhooks",
                format!("at most {MAX_WEBHOOKS} webhooks; delete one first"),
            )));
        }
        self.next_id += 1;
        let hook = Webhook {
            id: self.next_id,
            url,
            app,
            types,
            created_at: at,
            delivered: last_event,
            last_error: None,
            failing_since: None,
        };
        self.hooks.insert(hook.id, hook.clone());
        Response(Ok(Reply::Webhook(hook)))
    }

    pub fn remove(&mut self, id: u64) -> Response {
        match self.hooks.remove(&id) {
            Some(h) => Response(Ok(Reply::Webhook(h))),
            None => Response(Err(not_found(id))),
        }
    }

    /// Records delivery up to event `upto` (never backwards), and the outcome of the
    /// last attempt.
    pub fn progress(&mut self, id: u64, upto: u64, error: Option<String>, at: u64) -> Response {
        let Some(h) = self.hooks.get_mut(&id) else { return Response(Err(not_found(id))) };
        h.delivered = h.delivered.max(upto);
        match error {
            Some(e) => {
                h.failing_since.get_or_insert(at);
                h.last_error = Some(e);
            }
            None => {
                h.failing_since = None;
                h.last_error = None;
            }
        }
        Response(Ok(Reply::Done))
    }
}
