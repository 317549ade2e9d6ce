//! command-service against real MongoDB (FerretDB) and Redis.

mod books;
mod health;
mod helpers;
mod relay;
