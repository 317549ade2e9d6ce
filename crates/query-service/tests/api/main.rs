//! query-service against real MongoDB (FerretDB) and Redis.

mod books;
mod consumer;
mod health;
mod helpers;
