//! The Qianzhi exchange protocol, `qianzhi.exchange.v1`: the messages and
//! the `Exchange` gRPC service shared by the agent and the hub.
//!
//! The `.proto` file under `proto/` is the source of truth; this crate only
//! includes what `build.rs` generates from it.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

/// Version 1 of the exchange protocol.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("qianzhi.exchange.v1");
}

pub mod view;
