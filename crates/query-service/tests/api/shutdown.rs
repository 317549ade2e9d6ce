//! The real binary under SIGTERM: it stops within `SHUTDOWN_TIMEOUT_MS`,
//! even while a request is still waiting for its answer.

use std::{process::Stdio, time::Duration};

use test_support::unique;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
    sync::mpsc,
};

use crate::helpers::{cleanup_for, new_book, test_settings};

/// Waits for a log line containing `text`.
async fn line_with(lines: &mut mpsc::UnboundedReceiver<String>, text: &str) -> String {
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.recv().await {
            if line.contains(text) {
                return line;
            }
        }
        panic!("the service exited before logging {text:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no log line with {text:?}"))
}

#[tokio::test]
async fn sigterm_stops_the_service_within_its_timeout_despite_a_request_in_flight() {
    let settings = test_settings().await;
    let _cleanup = cleanup_for(&settings);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_query-service"))
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("MONGO_URL", settings.mongo_url.expose())
        .env("REDIS_URL", settings.redis_url.expose())
        .env("READ_DB_NAME", &settings.database)
        .env("EVENTS_STREAM", &settings.stream)
        .env("DEAD_LETTER_STREAM", &settings.dead_letter_stream)
        .env("CONSUMER_GROUP", &settings.group)
        .env("CONSUMER_NAME", unique("consumer"))
        .env("CACHE_KEY_PREFIX", &settings.cache_prefix)
        .env("READ_YOUR_WRITES_TIMEOUT_MS", "60000")
        .env("SHUTDOWN_TIMEOUT_MS", "500")
        .env("RUST_LOG", "info,tower_http=debug")
        .env_remove("LOG_FORMAT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("query-service starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (sender, mut lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    line_with(&mut lines, "query-service listening").await;

    // A read of a version that never comes: it would wait a minute.
    let url = format!(
        "http://127.0.0.1:{port}/books/{}?minVersion=1",
        new_book("Never written").id
    );
    let waiting = tokio::spawn(async move { reqwest::get(url).await });
    line_with(&mut lines, "started processing request").await;

    let pid = child.id().expect("running").to_string();
    let signal = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(signal.success());

    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("stopped within the shutdown timeout, not after the request's minute")
        .expect("exit status");
    assert!(status.success(), "{status}");
    waiting.abort();
}
