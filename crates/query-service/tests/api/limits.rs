//! What a client may hold of the server: slow and idle connections are
//! closed, thousands of stalled ones do not slow the others, and a burst
//! over the cap is shed at once.

use std::time::{Duration, Instant};

use platform::limits::ClientLimits;
use test_support::metrics::Scrape;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{new_book, spawn_cleaned_app_with, test_settings, TestApp};

async fn app_with(limits: ClientLimits) -> TestApp {
    let mut settings = test_settings().await;
    settings.client_limits = limits;
    // Reads waiting for a version that never comes hold a request this long.
    settings.read_your_writes_timeout = Duration::from_secs(3);
    spawn_cleaned_app_with(settings).await
}

/// Reads until the server closes the connection; how long that took.
async fn closed_after(mut stream: TcpStream) -> Duration {
    let started = Instant::now();
    let mut buffer = vec![0; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
    started.elapsed()
}

#[tokio::test]
async fn a_client_that_stops_mid_headers_is_disconnected_at_the_header_timeout() {
    let app = app_with(ClientLimits {
        header_read: Duration::from_millis(500),
        ..ClientLimits::default()
    })
    .await;
    let mut stream = TcpStream::connect(app.address).await.unwrap();
    stream
        .write_all(b"GET /books HTTP/1.1\r\nHost: localhost\r\nAccept: ")
        .await
        .unwrap();

    let closed = closed_after(stream).await;

    assert!(
        closed >= Duration::from_millis(400),
        "closed after {closed:?}"
    );
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_at_the_idle_timeout() {
    let app = app_with(ClientLimits {
        idle: Duration::from_millis(500),
        ..ClientLimits::default()
    })
    .await;
    let mut stream = TcpStream::connect(app.address).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0; 4096];
    let read = stream.read(&mut answer).await.unwrap();
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"));

    let closed = closed_after(stream).await;

    assert!(
        closed >= Duration::from_millis(400),
        "closed after {closed:?}"
    );
}

#[tokio::test]
async fn a_slow_request_is_not_cut_by_the_idle_timeout() {
    let app = app_with(ClientLimits {
        idle: Duration::from_millis(200),
        header_read: Duration::from_millis(200),
        ..ClientLimits::default()
    })
    .await;
    let id = new_book("Waited for").id;
    let started = Instant::now();

    // Waits for a version that never comes: longer than both timeouts.
    let response = app
        .http
        .get(app.url(&format!("/books/{id}?minVersion=1")))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 503);
    assert!(started.elapsed() >= app.settings.read_your_writes_timeout);
}

#[tokio::test]
async fn two_thousand_stalled_connections_do_not_hold_up_a_normal_request() {
    let app = app_with(ClientLimits::default()).await;
    let mut stalled = Vec::new();
    for _ in 0..2_000 {
        let mut stream = TcpStream::connect(app.address).await.unwrap();
        stream
            .write_all(b"GET /books HTTP/1.1\r\nHost: ")
            .await
            .unwrap();
        stalled.push(stream);
    }

    // The best of a few, so that one hiccup of a shared machine is not
    // taken for the server's doing.
    let mut fastest = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        let response = app
            .http
            .get(app.url("/books?limit=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        fastest = fastest.min(started.elapsed());
    }

    assert!(
        fastest < Duration::from_millis(100),
        "the fastest of 5 requests took {fastest:?}"
    );
    drop(stalled);
}

#[tokio::test]
async fn a_burst_over_the_cap_gets_fast_503s_while_health_still_answers() {
    let app = app_with(ClientLimits {
        max_in_flight: 2,
        ..ClientLimits::default()
    })
    .await;
    // Two reads that wait for a version that never comes hold the cap.
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let (http, url) = (
                app.http.clone(),
                app.url(&format!("/books/{}?minVersion=1", new_book("Held").id)),
            );
            tokio::spawn(async move { http.get(url).send().await.unwrap().status() })
        })
        .collect();
    let shed_before = Scrape::of(&app.http, &app.url(""))
        .await
        .sum("books_http_requests_shed_total", &[])
        .unwrap_or(0.0);
    test_support::eventually(
        "both reads to hold the cap",
        crate::helpers::DEADLINE,
        || async {
            let response = app.http.get(app.url("/books")).send().await.ok()?;
            (response.status() == 503).then_some(())
        },
    )
    .await;

    let started = Instant::now();
    let response = app.http.get(app.url("/books")).send().await.unwrap();
    let shed_in = started.elapsed();

    assert_eq!(response.headers()["retry-after"], "1");
    let problem = test_support::assert_problem(response, 503).await;
    assert!(
        shed_in < app.settings.read_your_writes_timeout / 2,
        "shed after {shed_in:?}"
    );
    assert_eq!(problem["type"], "urn:books:problem:overloaded");
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let shed_after = Scrape::of(&app.http, &app.url(""))
        .await
        .sum("books_http_requests_shed_total", &[])
        .unwrap_or(0.0);
    assert!(
        shed_after >= shed_before + 2.0,
        "{shed_before} -> {shed_after}"
    );
    for held in waiting {
        assert_eq!(held.await.unwrap(), 503);
    }
}
