//! What SIGHUP changes while the hub serves: the catalog and the TLS server
//! config (its certificate, key and client CA). Each is an `Arc` behind a
//! lock that readers clone when a unit of work starts: a connection's
//! handshake takes the TLS config of that moment, a session the catalog of
//! its Hello. A reload therefore reaches new connections and sessions, and
//! the ones already open finish with what they started with.
//!
//! Not here: reading and validating the new files (the binary does, and
//! replaces both only when both are good).

use std::sync::{Arc, PoisonError, RwLock};

use rules::catalog::Catalog;

/// The catalog and TLS config in force.
pub struct Live {
    catalog: RwLock<Arc<Catalog>>,
    tls: RwLock<Arc<rustls::ServerConfig>>,
}

impl Live {
    pub fn new(catalog: Arc<Catalog>, tls: Arc<rustls::ServerConfig>) -> Arc<Live> {
        Arc::new(Live {
            catalog: RwLock::new(catalog),
            tls: RwLock::new(tls),
        })
    }

    // A poisoned lock still holds a whole `Arc` (a store of one pointer
    // cannot be left half done), so it is used as it is.

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn tls(&self) -> Arc<rustls::ServerConfig> {
        self.tls.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Puts a new catalog and TLS config in force for what starts next.
    pub fn replace(&self, catalog: Arc<Catalog>, tls: Arc<rustls::ServerConfig>) {
        *self.catalog.write().unwrap_or_else(PoisonError::into_inner) = catalog;
        *self.tls.write().unwrap_or_else(PoisonError::into_inner) = tls;
    }
}
