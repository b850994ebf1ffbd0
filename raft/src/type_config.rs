//! The openraft type configuration, generic over the replicated state machine.
//!
//! openraft's `declare_raft_types!` makes a concrete type; berth's Raft layer is generic
//! over the [`StateMachine`] it replicates, so the configuration is a zero-sized
//! `TypeConfig<SM>` whose application data and response types come from `SM`. The
//! marker traits openraft asks for (`Copy`, `Ord`, ...) are implemented by hand because
//! derives would wrongly require them of `SM` too.

use std::cmp::Ordering;
use std::fmt;
use std::marker::PhantomData;

use crate::state_machine::StateMachine;

/// The node type stored in Raft membership: the node's gRPC address.
pub type Node = openraft::impls::BasicNode;

/// Node ids are `u64`, chosen by the operator (`--id`), never reused.
pub type NodeId = u64;

/// openraft's type configuration for replicating `SM`.
pub struct TypeConfig<SM>(PhantomData<fn() -> SM>);

impl<SM> Clone for TypeConfig<SM> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<SM> Copy for TypeConfig<SM> {}
impl<SM> Default for TypeConfig<SM> {
    fn default() -> Self {
        TypeConfig(PhantomData)
    }
}
impl<SM> fmt::Debug for TypeConfig<SM> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TypeConfig")
    }
}
impl<SM> PartialEq for TypeConfig<SM> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<SM> Eq for TypeConfig<SM> {}
impl<SM> PartialOrd for TypeConfig<SM> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<SM> Ord for TypeConfig<SM> {
    fn cmp(&self, _: &Self) -> Ordering {
        Ordering::Equal
    }
}

type LeaderIdOf = openraft::impls::leader_id_adv::LeaderId<u64, NodeId>;

impl<SM: StateMachine> openraft::RaftTypeConfig for TypeConfig<SM> {
    type D = SM::Command;
    type R = SM::Response;
    type NodeId = NodeId;
    type Node = Node;
    type Term = u64;
    type LeaderId = LeaderIdOf;
    type Vote = openraft::impls::Vote<LeaderIdOf>;
    type Payload = openraft::EntryPayload<SM::Command, NodeId, Node>;
    type Entry = openraft::Entry<<LeaderIdOf as openraft::vote::RaftLeaderId>::Committed, Self::Payload>;
    type AsyncRuntime = openraft::impls::TokioRuntime;
    type Responder<T>
        = openraft::impls::ProgressResponder<Self, T>
    where
        T: openraft::OptionalSend + 'static;
    type Batch<T>
        = openraft::impls::InlineBatch<T>
    where
        T: openraft::OptionalSend + 'static;
    type ErrorSource = openraft::impls::BoxedErrorSource;
}

/// Short aliases of the openraft types instantiated for `SM` (the `typ` module of
/// openraft's examples).
pub mod typ {
    use super::TypeConfig;

    pub type Raft<SM> = openraft::Raft<TypeConfig<SM>, crate::sm_store::SmStore<SM>>;
    pub type Entry<SM> = openraft::alias::EntryOf<TypeConfig<SM>>;
    pub type LogId<SM> = openraft::alias::LogIdOf<TypeConfig<SM>>;
    pub type Vote<SM> = openraft::alias::VoteOf<TypeConfig<SM>>;
    pub type SnapshotMeta<SM> = openraft::alias::SnapshotMetaOf<TypeConfig<SM>>;
    pub type Snapshot<SM> = openraft::alias::SnapshotOf<TypeConfig<SM>, Vec<u8>>;
    pub type StoredMembership<SM> = openraft::alias::StoredMembershipOf<TypeConfig<SM>>;
    pub type RaftMetrics<SM> = openraft::RaftMetrics<TypeConfig<SM>>;
    pub type RaftError<SM, E = openraft::errors::Infallible> = openraft::errors::RaftError<TypeConfig<SM>, E>;
    pub type ClientWriteError<SM> = openraft::errors::ClientWriteError<TypeConfig<SM>>;
    pub type ClientWriteResponse<SM> = openraft::raft::ClientWriteResponse<TypeConfig<SM>>;
    pub type StorageError<SM> = openraft::StorageError<TypeConfig<SM>>;
    pub type ForwardToLeader<SM> = openraft::errors::ForwardToLeader<TypeConfig<SM>>;
    /// A follower's answer to one AppendEntries request of a replication session, as
    /// links and gRPC's `StreamAppend` carry it: openraft's result, or its core stopped.
    pub type AppendReply<SM> =
        Result<openraft::raft::StreamAppendResult<TypeConfig<SM>>, openraft::errors::Fatal<TypeConfig<SM>>>;
}
