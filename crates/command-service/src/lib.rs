//! command-service: validates book commands, stores each book together with
//! the event it causes in one MongoDB document write, and relays those
//! events to a Redis Stream (and Pub/Sub) without losing any.

pub mod auth;
pub mod commands;
pub mod config;
pub mod metrics;
pub mod relay;
pub mod routes;
pub mod startup;
pub mod state;
pub mod store;
