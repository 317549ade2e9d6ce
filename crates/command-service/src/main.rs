//! Entry point: load configuration, then hand over to the library.
//! `command-service openapi` prints the OpenAPI document instead.

use command_service::{config::Settings, routes, startup::Application};

/// mimalloc rather than glibc's malloc: less CPU per request, and memory
/// handed back after load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("openapi") {
        println!("{}", routes::openapi().to_pretty_json()?);
        return Ok(());
    }
    // `.env` is a development convenience; real deployments set variables.
    let _ = dotenvy::dotenv();
    platform::telemetry::init("command-service");
    let settings = Settings::from_env()?;
    tracing::info!(?settings, "starting command-service");
    Application::build(settings)
        .await?
        .run_until_stopped()
        .await
}
