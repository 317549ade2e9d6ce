//! Log setup: human-readable by default, JSON with `LOG_FORMAT=json`; the
//! level comes from `RUST_LOG` (or `LOG_LEVEL`), `info` when neither is set.

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Installs the global subscriber once. Later calls do nothing, so tests may
/// call it from every test.
pub fn init(service: &str) {
    let filter = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("LOG_LEVEL"))
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new(format!("info,{}=info", service.replace('-', "_"))));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init()
    } else {
        registry
            .with(fmt::layer().compact().with_ansi(ansi))
            .try_init()
    };
    // An error only means a subscriber is already installed.
    let _ = result;
}

/// Logs for tests: silent unless `TEST_LOG` is set.
pub fn init_for_tests(service: &str) {
    if std::env::var_os("TEST_LOG").is_some() {
        init(service);
    }
}
