//! The record rules shared by the agent and the hub: the resource catalog
//! ([`catalog`]) and the national data elements ([`element`]).
//!
//! This crate owns what a valid record is: which resources exist and who
//! provides them, how each item is normalized and checked, and the
//! canonical form both ends compare. It does not own how records are read,
//! queued or sent: it knows nothing of tokio, SQLite, files or gRPC, and
//! depends only on the protocol's message types. Every function here is a
//! pure function of its input, so the agent that normalizes and the hub that
//! checks cannot disagree.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod catalog;
pub mod element;
