//! query-service against real MongoDB (FerretDB) and Redis.

mod authors;
mod books;
mod cache;
mod consumer;
mod health;
mod helpers;
mod limits;
mod list;
mod metrics;
mod openapi;
mod partitions;
mod read_model;
mod read_your_writes;
mod reconcile;
mod shutdown;
