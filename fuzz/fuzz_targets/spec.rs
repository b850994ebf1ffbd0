//! The app spec parser, as the CLI (YAML) and the API (JSON, with the path's id) take
//! it. Whatever the input: no panic; a spec that parses and validates survives a JSON
//! round trip unchanged and still validates (what the API stores is what it accepted).
#![no_main]

use berth_node::server::workloads::parse_spec;
use berth_node::state::apps::spec::AppSpec;
use libfuzzer_sys::fuzz_target;

fn round_trip(spec: &AppSpec) {
    let json = serde_json::to_vec(spec).expect("a spec serializes");
    let again = AppSpec::from_json(&json).expect("a serialized spec parses");
    assert_eq!(&again, spec, "JSON round trip changed the spec");
    again.validate().expect("a valid spec stays valid");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    if mode % 2 == 0 {
        // The CLI: YAML (JSON is YAML too).
        let Ok(text) = std::str::from_utf8(body) else { return };
        if let Ok(spec) = AppSpec::from_yaml(text) {
            if spec.validate().is_ok() {
                round_trip(&spec);
            }
        }
    } else if let Ok(spec) = parse_spec("app", body) {
        // The API: PUT /v1/apps/app (parse_spec validates).
        round_trip(&spec);
    }
});
