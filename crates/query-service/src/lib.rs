//! query-service: consumes book events from the Redis Stream through a
//! consumer group, applies them to its own read model with a version guard
//! (so duplicates and reordering change nothing), and serves reads.

pub mod config;
pub mod consumer;
pub mod projection;
pub mod routes;
pub mod startup;
pub mod state;
