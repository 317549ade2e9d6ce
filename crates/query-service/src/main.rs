//! Entry point: load configuration, then hand over to the library.

use query_service::{config::Settings, startup::Application};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `.env` is a development convenience; real deployments set variables.
    let _ = dotenvy::dotenv();
    platform::telemetry::init("query-service");
    let settings = Settings::from_env()?;
    tracing::info!(?settings, "starting query-service");
    Application::build(settings)
        .await?
        .run_until_stopped()
        .await
}
