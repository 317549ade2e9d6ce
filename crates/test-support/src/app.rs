//! A service running on a task of the test's runtime, and the checks every
//! service test makes of an error answer.

use std::{fmt::Display, future::Future};

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Cleanup;

/// A running service: stopped (as SIGTERM would) when dropped; its data is
/// removed afterwards when it was given a `Cleanup`.
pub struct RunningApp {
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), String>>>,
    // Declared last: dropped after the service was told to stop.
    cleanup: Option<Cleanup>,
}

impl RunningApp {
    /// Runs `serve` (an application's `run_until_stopped()`), which stops
    /// when `shutdown` is cancelled.
    pub fn spawn<F, E>(shutdown: CancellationToken, serve: F) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Display,
    {
        let handle = tokio::spawn(async move { serve.await.map_err(|e| format!("{e:#}")) });
        Self {
            shutdown,
            handle: Some(handle),
            cleanup: None,
        }
    }

    /// Removes this data when the app is dropped.
    pub fn clean_up_after(&mut self, cleanup: Cleanup) {
        self.cleanup = Some(cleanup);
    }

    /// Starts the stop, as SIGTERM would, without waiting for it.
    pub fn begin_stop(&self) {
        self.shutdown.cancel();
    }

    /// Stops the service gracefully and asserts it stopped without error.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("the service task panicked")
                .unwrap_or_else(|error| panic!("the service stopped with an error: {error}"));
        }
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Asserts an `application/problem+json` answer with `status` and the
/// members every problem has, and returns its body.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:books:problem:")),
        "{body}"
    );
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    body
}
