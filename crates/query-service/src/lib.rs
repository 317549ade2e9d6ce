//! query-service: consumes book events from the Redis Stream through a
//! consumer group, applies them to its own read model with a version guard
//! (so duplicates and reordering change nothing), keeps author summaries and
//! a Redis read cache current from the same events, and serves reads.

pub mod cache;
pub mod config;
pub mod consumer;
pub mod dead_letters;
pub mod generation;
pub mod listing;
pub mod local_copy;
pub mod lookup;
pub mod metrics;
pub mod projection;
pub mod projector;
pub mod rebuild;
pub mod reconcile;
pub mod routes;
pub mod startup;
pub mod state;
pub mod summary;
