//! A body that stops arriving does not hold the request: it is answered
//! 408 at the body timeout, and nothing is written.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{spawn_app_with, test_settings, TOKEN};

#[tokio::test]
async fn a_body_that_stops_arriving_gets_a_408_at_the_body_timeout() {
    let mut settings = test_settings().await;
    settings.client_limits.body_read = Duration::from_millis(500);
    let app = spawn_app_with(settings).await;
    let mut stream = TcpStream::connect(app.address).await.unwrap();
    let head = format!(
        "POST /books HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"title\": "
    );
    let started = Instant::now();
    stream.write_all(head.as_bytes()).await.unwrap();

    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;

    assert!(read.is_ok(), "no answer while the body never came");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("urn:books:problem:request-timeout"),
        "{answer}"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(app.stored_books().await.is_empty());
}
