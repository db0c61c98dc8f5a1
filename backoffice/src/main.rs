//! `backoffice serve` runs the service; `backoffice migrate` applies migrations alone.

use std::path::PathBuf;

use anyhow::Context;
use backoffice::{Application, Settings, db, telemetry};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "backoffice", version = env!("BUILD_VERSION"), about = "The licensing back office")]
struct Cli {
    /// Settings file (TOML); environment variables of the same names override it.
    #[arg(long, short, global = true, env = "BACKOFFICE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the back office (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the public key that verifies capability responses (PEM).
    PublicKey,
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    packaging::generate_if_requested::<Cli>("8");
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref()).context("invalid settings")?;
    telemetry::init(&settings.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = Application::build(settings).await?;
            tracing::info!(port = app.port(), "back office listening");
            app.run_until_stopped().await?;
        }
        Command::Migrate => {
            let url = settings.database_url();
            let (backend, _) = db::Backend::from_url(&url)?;
            let (pool, _) = db::connect(&url, 1)?;
            let mut conn = pool.get()?;
            let ran = db::migrate(&mut conn)?;
            println!("{backend:?}: schema up to date ({ran} migrations applied now)");
        }
        Command::PublicKey => {
            let (_, public) = backoffice::app::load_or_create_key(&settings.signing_key_path())?;
            print!("{public}");
        }
    }
    Ok(())
}
