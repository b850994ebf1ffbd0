//! `GET /v1/events`: the replicated event log (`crate::state::events`) as
//! Server-Sent Events, or as a JSON list with `?follow=false`.
//!
//! The stream starts after `Last-Event-ID` (what an `EventSource` sends when it
//! reconnects) or `?since=ID` (default: now; `since=0` is everything kept), and follows
//! this node's replica as it applies entries; `?app=` keeps one app's events. The ids
//! are the same on every node, so a client resumes on any of them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use serde_json::Value;

use super::Node;
use crate::error::ApiError;
use crate::state::events::dropped;

/// Events per read of the replica.
const BATCH: usize = 256;

fn parse_id(what: &str, v: &str) -> Result<u64, ApiError> {
    v.parse().map_err(|_| ApiError::invalid("invalid_request", format!("{what}: {v:?} is not an event id")))
}

/// Events after `after` (of `app`, if given) from this node's replica, at most
/// `max`, with an `events_dropped` first when some are no longer kept. Returns them
/// as (id, type, JSON) and the id read up to.
pub(crate) fn read(node: &Node, after: u64, app: Option<&str>, max: usize) -> (Vec<(u64, String, Value)>, u64) {
    let replica = node.state.read();
    let events = &replica.state.events;
    let mut out = Vec::new();
    let mut cursor = after.min(events.last);
    let oldest = events.oldest();
    if cursor + 1 < oldest {
        out.push((oldest - 1, "events_dropped".to_string(), dropped(cursor, oldest)));
        cursor = oldest - 1;
    }
    for e in events.after(cursor, max) {
        cursor = e.id;
        if app.is_none_or(|a| e.kind.app() == Some(a)) {
            out.push((e.id, e.kind.name().to_string(), e.to_json()));
        }
    }
    (out, cursor)
}

/// `GET /v1/events`.
#[utoipa::path(get, path = "/v1/events", operation_id = "events", tag = "events",
    params(super::openapi::EventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id (what an EventSource sends)")),
    responses((status = 200, description = "Server-Sent Events (`id`, `event` = type, `data` = the event as JSON); \
        with `?follow=false` a JSON list of the events",
        content((String = "text/event-stream"), (Vec<Object> = "application/json")))))]
pub async fn serve(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let param = |k: &str| super::http::query_param(&q, k).map(str::to_string);
    let app = param("app").filter(|a| !a.is_empty());
    let follow = !matches!(param("follow").as_deref(), Some("false" | "0"));
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(parse_id(
            "Last-Event-ID",
            v.to_str().map_err(|_| ApiError::invalid("invalid_request", "Last-Event-ID is not visible ASCII"))?,
        )?),
        None => param("since").map(|s| parse_id("since", &s)).transpose()?,
    };
    let after = match resume {
        Some(id) => id,
        None if follow => node.state.read().state.events.last,
        None => 0,
    };
    if !follow {
        let (list, _) = read(&node, after, app.as_deref(), crate::state::events::RETAINED);
        return Ok(Json(list.into_iter().map(|(_, _, v)| v).collect::<Vec<_>>()).into_response());
    }
    Ok(Sse::new(follow_stream(node, after, app))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn follow_stream(node: Arc<Node>, after: u64, app: Option<String>) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let changes = node.state.subscribe_changes();
    stream::unfold((node, after, app, changes), |(node, mut cursor, app, mut changes)| async move {
        loop {
            let (batch, upto) = read(&node, cursor, app.as_deref(), BATCH);
            cursor = upto;
            if !batch.is_empty() {
                return Some((batch, (node, cursor, app, changes)));
            }
            let more = node.state.read().state.events.last > cursor;
            if !more {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return None },
                    () = node.stopping() => return None,
                }
            }
        }
    })
    .flat_map(|batch| {
        stream::iter(
            batch
                .into_iter()
                .map(|(id, kind, v)| Ok(SseEvent::default().id(id.to_string()).event(kind).data(v.to_string()))),
        )
    })
}
