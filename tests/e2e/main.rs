//! End-to-end tests of the whole system: command-service and query-service
//! run in-process against the real MongoDB (FerretDB) and Redis, each test
//! with its own databases, stream and consumer group, so tests run in
//! parallel with each other and with other test binaries.

mod bad_input;
mod collection;
mod corpus;
mod delivery;
mod helpers;
mod idempotence;
mod pubsub;
mod round_trip;
mod short_errors;
mod tracing;
mod unicode;
