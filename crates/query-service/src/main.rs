//! Entry point: load configuration, then hand over to the library.
//!
//! - `query-service` serves;
//! - `query-service openapi` prints the OpenAPI document;
//! - `query-service dead-letters` prints each dead letter as a JSON line;
//! - `query-service redrive [ID...]` appends dead letters (all, or these)
//!   to the event stream again once their cause is fixed.

use query_service::{config::Settings, dead_letters::DeadLetters, routes, startup::Application};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("openapi") {
        println!("{}", routes::openapi().to_pretty_json()?);
        return Ok(());
    }
    // `.env` is a development convenience; real deployments set variables.
    let _ = dotenvy::dotenv();
    platform::telemetry::init("query-service");
    let settings = Settings::from_env()?;
    match args.first().map(String::as_str) {
        None => {
            tracing::info!(?settings, "starting query-service");
            Application::build(settings)
                .await?
                .run_until_stopped()
                .await
        }
        Some("dead-letters") => {
            for letter in dead_letters(&settings)?.list().await? {
                println!("{}", serde_json::to_string(&letter)?);
            }
            Ok(())
        }
        Some("redrive") => {
            let count = dead_letters(&settings)?.redrive(&args[1..]).await?;
            println!("re-drove {count} dead letter(s) to {}", settings.stream);
            Ok(())
        }
        Some(other) => anyhow::bail!(
            "unknown command {other:?}; expected none, `openapi`, `dead-letters` or `redrive [ID...]`"
        ),
    }
}

fn dead_letters(settings: &Settings) -> anyhow::Result<DeadLetters> {
    let client = platform::connect::redis_client(&settings.redis_url)?;
    Ok(DeadLetters {
        redis: platform::connect::redis_manager(&client, settings.dependency_timeout)?,
        stream: settings.stream.clone(),
        dead_letter_stream: settings.dead_letter_stream.clone(),
    })
}
