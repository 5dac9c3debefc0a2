//! Admin REST API (placeholder).
use std::sync::Arc;
pub fn router(_shared: Arc<crate::server::Shared>) -> axum::Router<Arc<crate::server::Shared>> { axum::Router::new() }
