//! `license-server`: the local license server and its operator commands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use license_server::cli::{self, Remote};
use license_server::settings::Settings;

/// The local license server: gets its rights from the back office and serves floating
/// licenses to clients.
#[derive(Debug, Parser)]
#[command(name = "license-server", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server. Settings come from the TOML file, then from environment variables
    /// of the same names: HOSTID, LISTEN, DATA_DIR, BACKOFFICE_URL, BACKOFFICE_TOKEN,
    /// BACKOFFICE_PUBLIC_KEY, BACKUP_SERVER_HOSTID, LICENSING_BACKUP_URI,
    /// LICENSING_MAIN_URI, RIGHTS_IDS, CAPABILITY_POLL_INTERVAL,
    /// FAILOVER_MAINTENANCE_INTERVAL, BACKUP_ABSENCE_LIMIT, LEASE_DURATION, ADMIN_TOKEN,
    /// PUBLIC_URL, CLOCK_LEEWAY, BACKOFF_MAX.
    Serve {
        /// TOML settings file (keys as the environment variables, e.g. `LISTEN = "..."`).
        #[arg(long, env = "LICENSE_SERVER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Show a running server's status: role, back-office contact, rights, leases.
    Status(#[command(flatten)] Remote),
    /// List the features of a running server: count, in use, free, expiry.
    Features(#[command(flatten)] Remote),
    /// List the leases of a feature (operator token needed).
    Leases {
        /// The feature name.
        feature: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Force-release a lease (operator token needed).
    Release {
        /// The lease ID.
        lease_id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve { config } => {
                let settings = Settings::load(config.as_deref())?;
                license_server::server::serve(settings).await
            }
            Command::Status(r) => cli::status(&r).await,
            Command::Features(r) => cli::features(&r).await,
            Command::Leases { feature, remote } => cli::leases(&remote, &feature).await,
            Command::Release { lease_id, remote } => cli::release(&remote, &lease_id).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
