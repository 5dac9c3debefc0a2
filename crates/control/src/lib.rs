//! The coordination server.
//!
//! Layout, from the inside out:
//! - [`model`]: plain records (users, nodes, keys, policy, audit entries).
//! - [`store`]: persistence behind the [`store::Store`] trait (SQLite by default).
//! - [`policy`]: the HuJSON ACL policy: parse, validate, test, compile per node.
//! - [`state`]: the tailnet in memory: every rule that changes it (registration, auth keys,
//!   approval, expiry, routes), written through to the store, with change notification.
//! - [`mapper`]: builds each node's network map and the deltas between two maps.
//! - [`server`]: HTTP: `/key`, the ts2021 upgrade, `/machine/*` over Noise, the map stream.
//! - [`api`]: the admin REST API shaped like Tailscale's API v2.
//! - [`cli`]: the admin commands (`control keys|nodes|routes|users|policy|apikeys|audit`).

pub mod api;
pub mod config;
pub mod mapper;
pub mod model;
pub mod policy;
pub mod server;
pub mod state;
pub mod store;
