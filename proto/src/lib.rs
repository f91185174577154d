//! The node agent's gRPC contract. The `.proto` files live in `proto/proto/`; the generated code
//! arrives with the node agent (issue 3), which is the first thing that speaks it.
