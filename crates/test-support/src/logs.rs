//! Capturing what a service logs, as the JSON lines of `LOG_FORMAT=json`
//! at the default `info` level, to check what an operator would see.
//!
//! The capture is the current thread's subscriber: it sees everything a
//! test on a current-thread runtime (plain `#[tokio::test]`) does, the
//! services it spawns included, and nothing of tests on other threads.
//!
//! With a single subscriber registered in the process, tracing decides
//! whether a log statement is wanted by asking the subscriber of whichever
//! thread reaches it first, and remembers the answer: a statement first
//! reached by another test's thread (which has none) would stay off for
//! good. A second, silent subscriber kept alive beside the capture makes
//! tracing ask every subscriber instead.

use std::{
    io,
    sync::{Arc, Mutex},
};

use serde_json::Value;
use tracing::{
    subscriber::{DefaultGuard, NoSubscriber},
    Dispatch,
};
use tracing_subscriber::fmt::MakeWriter;

/// The log lines written since `LogCapture::start`, until it is dropped.
pub struct LogCapture {
    buffer: Buffer,
    _guard: DefaultGuard,
    _second: Dispatch,
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl io::Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .expect("the log buffer is not poisoned")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Buffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl LogCapture {
    /// Captures this thread's logs at `info` and above.
    pub fn start() -> Self {
        let second = Dispatch::new(NoSubscriber::default());
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_env_filter("info")
            .with_writer(buffer.clone())
            .finish();
        Self {
            buffer,
            _guard: tracing::subscriber::set_default(subscriber),
            _second: second,
        }
    }

    /// Every line so far, each a JSON object.
    pub fn lines(&self) -> Vec<Value> {
        let bytes = self
            .buffer
            .0
            .lock()
            .expect("the log buffer is not poisoned")
            .clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON log line"))
            .collect()
    }
}

/// The value of `field` on `line`'s span named `span`, if any.
pub fn span_field<'a>(line: &'a Value, span: &str, field: &str) -> Option<&'a str> {
    line["spans"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == span)?
        .get(field)?
        .as_str()
}
