//! query-service: consumes book events from the Redis Stream into its own
//! read model and serves reads.
//!
//! - `apply`: the stream, through a consumer group, into the read model;
//! - `read_model`: the books, author summaries, cache and generations;
//! - `read`: the HTTP routes;
//! - `maintain`: reconciliation, rebuilds and dead letters.

pub mod apply;
pub mod config;
pub mod maintain;
pub mod metrics;
pub mod read;
pub mod read_model;
pub mod startup;
pub mod state;
