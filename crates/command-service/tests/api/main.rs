//! command-service against real MongoDB (FerretDB) and Redis.

mod auth;
mod books;
mod changes;
mod concurrency;
mod health;
mod helpers;
mod idempotency;
mod limits;
mod metrics;
mod openapi;
mod relay;
mod store;
mod trace;
