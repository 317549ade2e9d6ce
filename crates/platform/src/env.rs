//! Typed reads of configuration variables, with errors that name the
//! variable.

use std::{str::FromStr, time::Duration};

use anyhow::Context;

/// The variable's value, or `default` when it is unset or empty.
pub fn string(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value.trim().to_owned(),
        _ => default.to_owned(),
    }
}

/// The variable parsed as a `T`, or `default` when it is unset or empty.
pub fn parse<T>(name: &str, default: T) -> anyhow::Result<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value
            .trim()
            .parse()
            .with_context(|| format!("{name}={value:?} is not valid")),
        _ => Ok(default),
    }
}

/// A duration given in milliseconds.
pub fn millis(name: &str, default_ms: u64) -> anyhow::Result<Duration> {
    parse(name, default_ms).map(Duration::from_millis)
}
