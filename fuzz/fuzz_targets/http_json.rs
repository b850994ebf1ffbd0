//! What the HTTP API decodes from a client before any check of the state: each /v1
//! body type, a Marathon app mapped onto a berth spec, and the Authorization header.
//! No input may panic; a Marathon app the mapping accepts must give a spec berth
//! parses (or refuses with an error, never a crash).
#![no_main]

use axum::http::{HeaderMap, HeaderValue};
use berth_node::server::http::parse_json;
use berth_node::server::marathon::model;
use berth_node::server::{auth, ops, webhooks, workloads};
use berth_node::state::apps::spec::AppSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 9 {
        0 => drop(parse_json::<ops::PoolInput>(body)),
        1 => drop(parse_json::<ops::AllocationInput>(body)),
        2 => drop(parse_json::<ops::MemberInput>(body)),
        3 => drop(parse_json::<workloads::ScaleInput>(body)),
        4 => drop(parse_json::<workloads::RollbackInput>(body)),
        5 => drop(parse_json::<workloads::ExecInput>(body)),
        6 => drop(parse_json::<webhooks::WebhookInput>(body)),
        7 => {
            // POST /v2/apps: Marathon's app → berth's spec.
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else { return };
            let Ok(app) = model::parse(value) else { return };
            let Ok(id) = model::normalize_id(app.id.as_deref().unwrap_or("/fuzz")) else { return };
            if let Ok(spec) = model::to_spec(&app, &id) {
                let bytes = serde_json::to_vec(&spec).expect("a JSON value serializes");
                if let Ok(spec) = AppSpec::from_json(&bytes) {
                    let _ = spec.validate();
                }
            }
        }
        _ => {
            // Authorization: the token's shape, and splitting a berth token.
            let Ok(v) = HeaderValue::from_bytes(body) else { return };
            let mut h = HeaderMap::new();
            h.insert("authorization", v);
            if let Ok(Some(token)) = auth::presented(&h) {
                let _ = auth::split(&token);
            }
        }
    }
});
