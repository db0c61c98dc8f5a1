//! `license-server`: the local license server and its operator commands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use license_server::cli::{self, Remote};
use license_server::settings::Settings;

/// The local license server: gets its rights from the back office and serves floating
/// licenses to clients.
#[derive(Debug, Parser)]
#[command(name = "license-server", version = env!("BUILD_VERSION"), propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server. Settings come from the TOML file, then from environment variables
    /// of the same names: HOSTID, LISTEN, DATA_DIR, BACKOFFICE_URL, BACKOFFICE_TOKEN,
    /// BACKOFFICE_PUBLIC_KEY, BACKOFFICE_CA, BACKUP_SERVER_HOSTID, LICENSING_BACKUP_URI,
    /// LICENSING_MAIN_URI, RIGHTS_IDS, CAPABILITY_POLL_INTERVAL,
    /// FAILOVER_MAINTENANCE_INTERVAL, BACKUP_ABSENCE_LIMIT, LEASE_DURATION, QUEUE_MAX_WAIT,
    /// ADMIN_TOKEN, ADMIN_READONLY_TOKEN, ADMIN_ACCESS, PUBLIC_URL, CLOCK_LEEWAY, BACKOFF_MAX,
    /// FAILOVER_TIMEOUT, HEARTBEAT_INTERVAL,
    /// PAIR_TOKEN, TLS_CERT, TLS_KEY, MAX_CONNECTIONS, WORKERS, CLUSTER_MEMBER_HOSTIDS,
    /// CLUSTER_MEMBER_URIS, CLUSTER_HEARTBEAT_INTERVAL, CLUSTER_MEMBER_TIMEOUT,
    /// LICENSING_OPTIONS_FILE, MAIL_SMTP_HOST, MAIL_SMTP_PORT, MAIL_SMTP_TLS, MAIL_FROM,
    /// MAIL_TO, MAIL_EVENTS, MAIL_DISK_THRESHOLD, MAIL_ISOLATED_AFTER, MAIL_EXPIRY_DAYS,
    /// USAGE_INTERVAL, USAGE_RETRY_WINDOW, USAGE_RECYCLE_AFTER. Logging:
    /// RUST_LOG, LOG_FORMAT.
    Serve {
        /// TOML settings file (keys as the environment variables, e.g. `LISTEN = "..."`).
        #[arg(long, env = "LICENSE_SERVER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Show a running server's status: role, pair or cluster, back-office contact, rights, leases;
    /// with --pair, the main's, the backup's or both; then per feature its count (with
    /// each line item's end), who serves it and, with the operator token, who holds each
    /// seat (the `lmstat -a` view).
    Status {
        #[command(flatten)]
        remote: Remote,
        /// Which server of the pair to show.
        #[arg(long, value_enum, default_value = "this")]
        pair: cli::Which,
    },
    /// Failover pair operations (the full operator token needed).
    #[command(subcommand)]
    Pair(PairCommand),
    /// List the features of a running server: count, in use, free, each line item's end.
    Features(#[command(flatten)] Remote),
    /// Make a running server poll the back office now (`lmreread`) and say what changed
    /// (the full operator token needed).
    Reread(#[command(flatten)] Remote),
    /// List the leases of a feature (an operator token needed, the restricted one will do).
    Leases {
        /// The feature name.
        feature: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Usage statistics per feature and user: uses, first and last used (an operator
    /// token needed, the restricted one will do).
    Statistics(#[command(flatten)] Remote),
    /// Force-release a lease (the full operator token needed).
    Release {
        /// The lease ID.
        lease_id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make a running server read its options file again (as SIGHUP does; the full operator
    /// token needed). A bad file is refused with its line; the options in force stay.
    ReloadOptions(#[command(flatten)] Remote),
    /// The full administration session: one operator at a time acts (on a cluster, on
    /// the three members). While one is open, the commands that act need its key
    /// (`--session`, or LICENSE_ADMIN_SESSION).
    #[command(subcommand)]
    Session(SessionCommand),
    /// The local store's files: check them, or keep what is readable of damaged ones
    /// (on the server's machine; `recover` needs the server stopped).
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Read every file of the store and report what is readable and what is damaged;
    /// changes nothing. Exits non-zero when something is damaged.
    Verify(#[command(flatten)] cli::StoreDir),
    /// Keep every record that verifies, as a new snapshot; move damaged files aside
    /// (`*.damaged-<time>`, never deleted) and say what was lost. Asks first.
    Recover {
        #[command(flatten)]
        dir: cli::StoreDir,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SessionCommand {
    /// Open it (the full token needed) and print its key; refused while another operator
    /// holds it, unless --take-over.
    Open {
        /// A name for the other operators to see (else this machine's address).
        #[arg(long)]
        operator: Option<String>,
        /// Take it from the operator who holds it (who is then out).
        #[arg(long)]
        take_over: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Who holds it, since when, and when it lapses (never its key).
    Show(#[command(flatten)] Remote),
    /// Close the session this operator holds (its key in --session).
    Close(#[command(flatten)] Remote),
}

#[derive(Debug, Subcommand)]
enum PairCommand {
    /// Remove the backup from the pair, on the main or on the backup; the other server,
    /// the clients and the back office learn it.
    Detach(#[command(flatten)] Remote),
    /// Give the main a new address for its backup; clients learn it with their next
    /// lease answer.
    SetBackup {
        /// The backup's new URL, e.g. http://backup-2:7070.
        backup_url: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `LOG_FORMAT` and `RUST_LOG` (default `info`), refused when they do not parse.
fn init_tracing() -> Result<(), String> {
    use http_kit::telemetry::{LogFormat, filter, init};
    init(LogFormat::from_env()?, filter("info")?);
    Ok(())
}

fn main() -> std::process::ExitCode {
    packaging::generate_if_requested::<Cli>("8");
    let cli = Cli::parse();
    if let Err(e) = init_tracing() {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
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
            Command::Status { remote, pair } => cli::status(&remote, pair).await,
            Command::Pair(PairCommand::Detach(r)) => cli::pair_detach(&r).await,
            Command::Pair(PairCommand::SetBackup { backup_url, remote }) => {
                cli::pair_set_backup(&remote, &backup_url).await
            }
            Command::Features(r) => cli::features(&r).await,
            Command::Reread(r) => cli::reread(&r).await,
            Command::Leases { feature, remote } => cli::leases(&remote, &feature).await,
            Command::Release { lease_id, remote } => cli::release(&remote, &lease_id).await,
            Command::Statistics(r) => cli::statistics(&r).await,
            Command::ReloadOptions(r) => cli::reload_options(&r).await,
            Command::Session(SessionCommand::Open {
                operator,
                take_over,
                remote,
            }) => cli::session_open(&remote, operator.as_deref(), take_over).await,
            Command::Session(SessionCommand::Show(r)) => cli::session_show(&r).await,
            Command::Session(SessionCommand::Close(r)) => cli::session_close(&r).await,
            Command::Store(StoreCommand::Verify(d)) => cli::store_verify(&d),
            Command::Store(StoreCommand::Recover { dir, yes }) => cli::store_recover(&dir, yes),
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
