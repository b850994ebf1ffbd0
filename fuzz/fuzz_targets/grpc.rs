//! What arrives on the gRPC port: the protobuf messages of the public and node-to-node
//! services, and inside them the bincode payloads — Raft's vote and append-entries
//! requests, and forwarded writes with their callers' credentials. A forwarded write
//! that decodes has its credentials checked and is applied to a state: apply runs on
//! every replica, so a panic there would stop the whole cluster.
#![no_main]

use berth_node::server::auth::check_on_leader;
use berth_node::server::proposer::{LeaderCall, LeaderRequest};
use berth_node::state::State;
use berth_proto::berth as pb;
use berth_raft::codec::decode;
use berth_raft::state_machine::StateMachine;
use berth_raft::TypeConfig;
use libfuzzer_sys::fuzz_target;
use prost::Message;

type C = TypeConfig<State>;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 8 {
        0 => drop(pb::CreatePoolRequest::decode(body)),
        1 => drop(pb::AllocateRequest::decode(body)),
        2 => drop(pb::AddMemberRequest::decode(body)),
        3 => {
            drop(pb::ProposeRequest::decode(body));
            drop(pb::ForwardRequest::decode(body));
        }
        4 => drop(berth_proto::raft::RaftMessage::decode(body)),
        5 => drop(decode::<openraft::raft::VoteRequest<C>>(body)),
        6 => drop(decode::<openraft::raft::AppendEntriesRequest<C>>(body)),
        _ => {
            if let Ok(LeaderRequest { call: LeaderCall::Write(req), credentials }) = decode::<LeaderRequest>(body) {
                let mut state = State::default();
                if let Some(c) = &credentials {
                    let _ = check_on_leader(&state, c);
                }
                let _ = state.apply(1, *req);
            }
        }
    }
});
