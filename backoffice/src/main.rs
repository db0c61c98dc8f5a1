//! The `backoffice` command: `serve` runs the service (the default), `migrate` applies
//! migrations alone, `public-key` prints the key that verifies capability responses, and
//! `admin add` / `admin reset-password` recover access at the console.
//!
//! A bad setting or a failed start ends the process at once with one line on stderr and a
//! non-zero status.

use std::path::PathBuf;
use std::process::ExitCode;

use backoffice::{Application, Settings, console, db, keys};
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
    /// Recover access: add an administrator, reset a password.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Add a producer administrator; its generated password is printed once.
    Add { email: String },
    /// Give an administrator or a user a new generated password (printed once) and end
    /// their sessions.
    ResetPassword { email: String },
}

fn main() -> ExitCode {
    packaging::generate_if_requested::<Cli>("8");
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("backoffice: {e}");
            return ExitCode::from(2);
        }
    };
    match http_kit::telemetry::filter("info") {
        Ok(filter) => http_kit::telemetry::init(settings.log_format, filter),
        Err(e) => {
            eprintln!("backoffice: {e}");
            return ExitCode::from(2);
        }
    }
    match run(cli.command.unwrap_or(Command::Serve), settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("backoffice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve => actix_web::rt::System::new().block_on(async {
            let app = Application::build(settings).await?;
            tracing::info!(
                address = %app.address(),
                https = app.is_https(),
                "back office listening"
            );
            app.run_until_stopped().await?;
            Ok(())
        }),
        Command::Migrate => {
            let url = settings.database_url();
            let (backend, _) = db::Backend::from_url(&url)?;
            let (pool, _) = db::connect(&url, 1)?;
            drop(pool);
            println!("{backend:?}: schema up to date");
            Ok(())
        }
        Command::PublicKey => {
            let (_, public) = keys::load_or_create(&settings.signing_key_path())?;
            print!("{public}");
            Ok(())
        }
        Command::Admin(AdminCommand::Add { email }) => {
            let password = console::add_admin(&settings, &email)?;
            // On the console only, never in the log.
            println!("Added the producer administrator {email} with password: {password}");
            println!("(shown only now)");
            Ok(())
        }
        Command::Admin(AdminCommand::ResetPassword { email }) => {
            let (who, password) = console::reset_password(&settings, &email)?;
            println!("New password of the {who} {email}: {password}");
            println!("(shown only now; their sessions have ended)");
            Ok(())
        }
    }
}
