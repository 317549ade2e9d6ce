//! command-service against real MongoDB (FerretDB) and Redis.

mod books;
mod changes;
mod health;
mod helpers;
mod relay;
