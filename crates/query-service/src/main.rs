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

use query_service::{
    config::Settings,
    maintain::{
        dead_letters::DeadLetters,
        rebuild::Rebuild,
        reconcile::{reconcile, Repair, SETTLE},
    },
    read,
    read_model::{ActiveGeneration, Books},
    startup::{Application, Servers},
};

/// mimalloc rather than glibc's malloc: less CPU per request, and memory
/// handed back after load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str);
    if command == Some("openapi") {
        println!("{}", read::openapi().to_pretty_json()?);
        return Ok(());
    }
    // `.env` is a development convenience; real deployments set variables.
    let _ = dotenvy::dotenv();
    platform::telemetry::init("query-service");
    let settings = Settings::from_env()?;
    let Some(command) = command else {
        tracing::info!(?settings, "starting query-service");
        return Application::build(settings)
            .await?
            .run_until_stopped()
            .await;
    };
    let servers = Servers::open(&settings).await?;
    // Repairs go through the event stream, to every replica.
    let emit = Repair::Emit {
        redis: servers.redis.clone(),
        partitions: servers.partitions.clone(),
        settle: SETTLE,
    };
    let dead_letters = DeadLetters {
        redis: servers.redis,
        partitions: servers.partitions.clone(),
        dead_letter_stream: settings.dead_letter_stream.clone(),
    };
    match command {
        "dead-letters" => {
            for letter in dead_letters.list().await? {
                println!("{}", serde_json::to_string(&letter)?);
            }
        }
        "redrive" => {
            let count = dead_letters.redrive(&args[1..]).await?;
            println!("re-drove {count} dead letter(s) to {}", settings.stream);
        }
        "reconcile" => {
            let named = ActiveGeneration::named(&servers.read_db).await?;
            let books = Books::on(ActiveGeneration::fixed(&servers.read_db, &named));
            let report = reconcile(&servers.write_books, &books, &emit, None).await?;
            println!("{}", serde_json::to_string(&report)?);
        }
        "rebuild" => {
            let report = Rebuild {
                db: servers.read_db,
                write_books: servers.write_books,
                after_switch: emit,
                refresh: settings.generation_refresh,
            }
            .run()
            .await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        other => anyhow::bail!(
            "unknown command {other:?}; expected none, `openapi`, `dead-letters`, `redrive [ID...]`, `reconcile` or `rebuild`"
        ),
    }
    Ok(())
}
