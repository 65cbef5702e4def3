//! Qianzhi's TLS, for both ends of the link: one crate so that the agent and
//! the hub cannot drift apart on protocol versions, the crypto provider or
//! how an agency is named in a certificate.
//!
//! - [`tls`]: PEM files → rustls configs, TLS 1.3 only, the ring provider
//!   only; the client's (agent) and the server's (hub, client certificate
//!   required). Files are read at every call, so renewed certificates are
//!   used without a restart.
//! - [`identity`]: the agency a certificate names, and when it expires.
//! - [`dev`]: a development CA (rcgen) for tests, demos and trials.
//!
//! It owns no sockets and no runtime: callers bring their own connections
//! (tonic on the agent, tokio-rustls on the hub).

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod dev;
pub mod identity;
pub mod tls;

pub use identity::AGENCY_URI_PREFIX;
