//! What both book services share: logging setup, the problem+json error
//! body, the HTTP layers every route gets, shutdown on signals, health
//! checks, metrics, trace context and connections to MongoDB and Redis.

pub mod backoff;
pub mod connect;
pub mod document;
pub mod env;
pub mod error;
pub mod health;
pub mod http;
pub mod lease;
pub mod limits;
pub mod metrics;
pub mod mongo;
pub mod openapi;
pub mod problem;
pub mod server;
pub mod shutdown;
pub mod stream;
pub mod telemetry;
pub mod trace;

pub use connect::{RedactedUrl, RedisClient, RedisConnection};
pub use error::ApiError;
pub use problem::Problem;
