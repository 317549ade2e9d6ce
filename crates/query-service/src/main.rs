//! Entry point: load configuration, then hand over to the library.
//!
//! - `query-service` serves;
//! - `query-service openapi` prints the OpenAPI document;
//! - `query-service dead-letters` prints each dead letter as a JSON line;
//! - `query-service redrive [ID...]` appends dead letters (all, or these)
//!   to the event stream again once their cause is fixed;
//! - `query-service reconcile` re-emits what the read model lacks or holds
//!   at an older version than the write model, and prints what it found;
//! - `query-service rebuild` rebuilds the read model into a new generation
//!   of collections and switches the running replicas to it.

use platform::document::BookDocument;
use query_service::{
    config::Settings,
    maintain::{
        dead_letters::DeadLetters,
        rebuild::Rebuild,
        reconcile::{reconcile, Repair, SETTLE},
    },
    read,
    read_model::{ActiveGeneration, Books},
    startup::{self, Application},
};

/// mimalloc rather than glibc's malloc: less CPU per request, and memory
/// handed back after load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("openapi") {
        println!("{}", read::openapi().to_pretty_json()?);
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
        Some("reconcile") => {
            let models = Models::connect(&settings).await?;
            let named = ActiveGeneration::named(&models.read_db).await?;
            let read_model = Books::on(ActiveGeneration::fixed(&models.read_db, &named));
            let report = reconcile(&models.write_books, &read_model, &models.emit).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Some("rebuild") => {
            let models = Models::connect(&settings).await?;
            let report = Rebuild {
                db: models.read_db,
                write_books: models.write_books,
                after_switch: models.emit,
                refresh: settings.generation_refresh,
            }
            .run()
            .await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Some(other) => anyhow::bail!(
            "unknown command {other:?}; expected none, `openapi`, `dead-letters`, `redrive [ID...]`, `reconcile` or `rebuild`"
        ),
    }
}

/// What the maintenance commands work on.
struct Models {
    read_db: mongodb::Database,
    write_books: mongodb::Collection<BookDocument>,
    /// Repairs go through the event stream, to every replica.
    emit: Repair,
}

impl Models {
    async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let client = platform::connect::mongo_client(
            &settings.mongo_url,
            "query-service",
            settings.dependency_timeout,
            settings.mongo_command_metrics,
        )
        .await?;
        let redis = platform::connect::redis_client(&settings.redis_url)?;
        Ok(Self {
            read_db: client.database(&settings.database),
            write_books: startup::write_books(settings, &client).await?,
            emit: Repair::Emit {
                redis: platform::connect::redis_manager(&redis, settings.dependency_timeout)?,
                stream: settings.stream.clone(),
                settle: SETTLE,
            },
        })
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
