//! The books CQRS system: this root package only owns the cross-service
//! end-to-end tests in `tests/`. The services live in `crates/`.
