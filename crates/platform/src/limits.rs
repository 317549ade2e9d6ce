//! What one client may hold of a server, so that slow, idle or bursting
//! clients cannot starve the others: a connection's clock (its request
//! head must arrive in time, and an idle connection is closed), a deadline
//! on reading a body, and a cap on requests in flight past which requests
//! are shed at once with a 503 rather than queued until clients time out.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll, Waker},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, HeaderValue},
    middleware::Next,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Semaphore,
    time::{Instant, Sleep},
};

use crate::problem::{Problem, ProblemKind};

/// Routes that answer whatever the load: an orchestrator must still see the
/// process alive, and an operator its figures.
const NEVER_SHED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The bounds a server puts on its clients.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// How long a request head may take, from its first byte (or from the
    /// connection opening) to its last.
    pub header_read: Duration,
    /// How long a request body may take to arrive.
    pub body_read: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub idle: Duration,
    /// Requests handled at once; more are answered 503 at once.
    pub max_in_flight: usize,
}

impl ClientLimits {
    /// `HTTP_HEADER_READ_TIMEOUT_MS` (default 10000), `HTTP_BODY_READ_TIMEOUT_MS`
    /// (5000), `HTTP_IDLE_TIMEOUT_MS` (60000), `MAX_CONCURRENT_REQUESTS` (1024).
    pub fn from_env() -> anyhow::Result<Self> {
        let default = Self::default();
        Ok(Self {
            header_read: env_millis("HTTP_HEADER_READ_TIMEOUT_MS", default.header_read)?,
            body_read: env_millis("HTTP_BODY_READ_TIMEOUT_MS", default.body_read)?,
            idle: env_millis("HTTP_IDLE_TIMEOUT_MS", default.idle)?,
            max_in_flight: crate::env::parse("MAX_CONCURRENT_REQUESTS", default.max_in_flight)?,
        })
    }
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(5),
            idle: Duration::from_secs(60),
            max_in_flight: 1024,
        }
    }
}

fn env_millis(name: &str, default: Duration) -> anyhow::Result<Duration> {
    crate::env::millis(name, default.as_millis() as u64)
}

/// Where one connection stands, shared by its IO and its requests.
#[derive(Debug)]
struct Clock {
    in_flight: usize,
    /// Set by the first byte of a request head, cleared once the head is in.
    head_deadline: Option<Instant>,
    /// The connection opened, or last wrote.
    last_active: Instant,
    /// The connection's reader, waiting while requests are in flight: the
    /// last one to end wakes it to start the idle clock.
    reader: Option<Waker>,
}

/// One connection's clock, to be shared by its IO (`Clocked`) and its
/// requests (`request`).
#[derive(Debug, Clone)]
pub(crate) struct ConnectionClock {
    clock: Arc<Mutex<Clock>>,
    limits: ClientLimits,
}

impl ConnectionClock {
    /// A new connection: its first request head must arrive within the
    /// header timeout.
    pub(crate) fn new(limits: ClientLimits) -> Self {
        let now = Instant::now();
        Self {
            clock: Arc::new(Mutex::new(Clock {
                in_flight: 0,
                head_deadline: Some(now + limits.header_read),
                last_active: now,
                reader: None,
            })),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Clock> {
        self.clock.lock().expect("never poisoned")
    }

    /// A request head has arrived: the connection is busy until the guard
    /// drops, with the response.
    pub(crate) fn request(&self) -> InFlight {
        let mut clock = self.lock();
        clock.in_flight += 1;
        clock.head_deadline = None;
        InFlight(self.clone())
    }

    /// When the connection times out if nothing happens; `None` while a
    /// request is in flight, when `reader` is woken once none is.
    fn deadline(&self, reader: &Waker) -> Option<Instant> {
        let mut clock = self.lock();
        if clock.in_flight > 0 {
            clock.reader = Some(reader.clone());
            return None;
        }
        Some(
            clock
                .head_deadline
                .unwrap_or(clock.last_active + self.limits.idle),
        )
    }

    fn read(&self) {
        let mut clock = self.lock();
        if clock.in_flight == 0 && clock.head_deadline.is_none() {
            clock.head_deadline = Some(Instant::now() + self.limits.header_read);
        }
    }

    fn wrote(&self) {
        self.lock().last_active = Instant::now();
    }
}

/// A request in flight on a connection.
pub(crate) struct InFlight(ConnectionClock);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut clock = self.0.lock();
        clock.in_flight -= 1;
        clock.last_active = Instant::now();
        if clock.in_flight == 0 {
            if let Some(reader) = clock.reader.take() {
                reader.wake();
            }
        }
    }
}

/// A connection's IO that fails a read once the connection's clock runs out.
pub(crate) struct Clocked<S> {
    io: S,
    clock: ConnectionClock,
    sleep: Pin<Box<Sleep>>,
}

impl<S> Clocked<S> {
    pub(crate) fn new(io: S, clock: ConnectionClock) -> Self {
        Self {
            io,
            sleep: Box::pin(tokio::time::sleep_until(
                Instant::now() + clock.limits.header_read,
            )),
            clock,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Clocked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.clock.read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                let Some(deadline) = self.clock.deadline(cx.waker()) else {
                    return Poll::Pending;
                };
                if self.sleep.deadline() != deadline {
                    self.sleep.as_mut().reset(deadline);
                }
                ready!(self.sleep.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client was idle or slow past its limit",
                )))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Clocked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.io).poll_write(cx, buf));
        if matches!(written, Ok(n) if n > 0) {
            self.clock.wrote();
        }
        Poll::Ready(written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A request body that fails once its deadline passes.
struct DeadlineBody {
    inner: Body,
    limit: Duration,
    sleep: Pin<Box<Sleep>>,
}

/// The body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(pub Duration);

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        ready!(self.sleep.as_mut().poll(cx));
        Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(self.limit)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Gives the request's body `limit` to arrive.
pub(crate) async fn body_deadline(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let sleep = Box::pin(tokio::time::sleep(limit));
    let request = request.map(|inner| {
        Body::new(DeadlineBody {
            inner,
            limit,
            sleep,
        })
    });
    next.run(request).await
}

/// Answers 503 at once, with `Retry-After`, when `permits` are all taken.
pub(crate) async fn shed_load(
    State(permits): State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    if NEVER_SHED.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let Ok(_permit) = permits.try_acquire() else {
        crate::metrics::request_shed();
        return Problem::new(
            ProblemKind::Overloaded,
            "the service is handling as many requests as it can; retry shortly",
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
        .into_response();
    };
    next.run(request).await
}
