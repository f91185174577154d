//! The node agent's gRPC contract (`proto/agent.proto`): the only way the real-cluster driver
//! touches a host. Generated client and server live in [`agent`].

/// Generated types, client (`agent_client::AgentClient`) and server (`agent_server`).
#[allow(missing_docs, clippy::all)]
pub mod agent {
    tonic::include_proto!("quorumlab.agent.v1");
}
