//! Generates the node agent's gRPC client and server from `proto/agent.proto` (needs `protoc`,
//! which `cargo xtask` installs when it is missing).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::compile_protos("proto/agent.proto")?;
    Ok(())
}
