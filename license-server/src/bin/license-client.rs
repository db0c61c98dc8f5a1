//! `license-client`: check licenses out of a license server from the command line; every
//! grant and renewal is verified with the producer's public key before it is shown.

use std::time::Duration;

use clap::{Parser, Subcommand};
use licensing_client::{Client, ClientError};
use shared::lease::{CheckoutRequest, Lease};
use shared::signing::Verifier;
use uuid::Uuid;

/// A command-line client of the license server (built on the `licensing-client` library).
#[derive(Debug, Parser)]
#[command(name = "license-client", version = env!("BUILD_VERSION"), propagate_version = true)]
struct Cli {
    /// License server URL; repeat for an ordered list (the first is preferred).
    #[arg(
        long = "server",
        env = "LICENSE_SERVER_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    servers: Vec<String>,
    /// The producer's public key (PEM: the back office's `signing-key.pub.pem`): every
    /// grant and renewal must verify with it, offline. Required.
    #[arg(long, env = "LICENSE_PRODUCER_KEY", global = true)]
    producer_key: Option<std::path::PathBuf>,
    /// This client's identity (default: hostname:pid).
    #[arg(long, env = "LICENSE_CLIENT_ID", global = true)]
    client_id: Option<String>,
    /// The user checkouts name, what the server's options file matches (default: the
    /// OS's, `USER`).
    #[arg(long, env = "LICENSE_CLIENT_USER", global = true)]
    user: Option<String>,
    /// The host checkouts name, what the server's options file matches (default: the
    /// OS's host name).
    #[arg(long, env = "LICENSE_CLIENT_HOST", global = true)]
    host: Option<String>,
    /// PEM bundle of the CA that issued the servers' certificates (https:// servers with a
    /// private CA); the system's roots are trusted too.
    #[arg(long, env = "LICENSE_SERVER_CA", global = true)]
    ca: Option<std::path::PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check out seats of a feature and print the lease (its ID and token).
    Checkout {
        feature: String,
        /// Seats to take.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// A specific version of the feature (any version when absent).
        #[arg(long = "feature-version")]
        feature_version: Option<String>,
        /// Hold the lease this long (renewing it in the background), then return it.
        #[arg(long, value_parser = shared::duration::parse)]
        hold: Option<Duration>,
    },
    /// Renew a lease.
    Renew {
        lease_id: Uuid,
        /// The lease token printed by `checkout`.
        #[arg(
            long,
            env = "LEASE_TOKEN",
            hide_env_values = true,
            allow_hyphen_values = true
        )]
        token: String,
    },
    /// Return a lease.
    Return {
        lease_id: Uuid,
        /// The lease token printed by `checkout`.
        #[arg(
            long,
            env = "LEASE_TOKEN",
            hide_env_values = true,
            allow_hyphen_values = true
        )]
        token: String,
    },
    /// List the server's features: count, in use, free, each line item's end.
    Features,
}

fn print_lease(lease: &Lease, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(lease).unwrap_or_default()
        );
    } else {
        println!(
            "lease {} : {} seat(s) of {} {} for {}\ntoken {}\nexpires at {} (renew after {})",
            lease.lease_id,
            lease.count,
            lease.feature,
            lease.version,
            lease.client_id,
            lease.token,
            lease.expires_at,
            lease.renew_after
        );
    }
}

async fn run(cli: Cli) -> Result<(), ClientError> {
    let key = cli.producer_key.as_ref().ok_or_else(|| {
        ClientError::Invalid(
            "give the producer's public key (--producer-key FILE or LICENSE_PRODUCER_KEY): \
             every grant is verified with it"
                .into(),
        )
    })?;
    let pem = std::fs::read_to_string(key).map_err(|e| {
        ClientError::Invalid(format!(
            "--producer-key `{}` cannot be read: {e}",
            key.display()
        ))
    })?;
    let producer = Verifier::from_public_pem(&pem).map_err(|e| {
        ClientError::Invalid(format!(
            "--producer-key `{}` is not the producer's Ed25519 public key (PEM): {e}",
            key.display()
        ))
    })?;
    let mut builder = cli
        .servers
        .iter()
        .fold(Client::builder(producer), |b, s| b.server(s));
    if let Some(path) = &cli.ca {
        let pem = std::fs::read(path).map_err(|e| {
            ClientError::Invalid(format!("--ca `{}` cannot be read: {e}", path.display()))
        })?;
        builder = builder
            .ca_pem(&pem)
            .map_err(|e| ClientError::Invalid(format!("--ca `{}`: {e}", path.display())))?;
    }
    if let Some(id) = &cli.client_id {
        builder = builder.client_id(id.clone());
    }
    if let Some(user) = &cli.user {
        builder = builder.user(user.clone());
    }
    if let Some(host) = &cli.host {
        builder = builder.host(host.clone());
    }
    let client = builder.build()?;
    match cli.command {
        Command::Checkout {
            feature,
            count,
            feature_version,
            hold,
        } => {
            let req = CheckoutRequest {
                feature,
                version: feature_version,
                count,
                client_id: client.client_id().to_owned(),
                user: None,
                host: None,
                client_secret: None,
            };
            match hold {
                None => {
                    let lease = client.checkout_lease(&req).await?;
                    print_lease(&lease, cli.json);
                }
                Some(d) => {
                    let guard = client.checkout_with(req).await?;
                    print_lease(&guard.lease(), cli.json);
                    tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                    guard.release().await?;
                    if !cli.json {
                        println!("returned");
                    }
                }
            }
        }
        Command::Renew { lease_id, token } => {
            let lease = client.renew_by_id(lease_id, &token).await?;
            print_lease(&lease, cli.json);
        }
        Command::Return { lease_id, token } => {
            client.release_by_id(lease_id, &token).await?;
            if !cli.json {
                println!("returned lease {lease_id}");
            }
        }
        Command::Features => {
            let list = client.features().await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                println!(
                    "{:<24} {:<10} {:>7} {:>7} {:>7}  EXPIRY",
                    "FEATURE", "VERSION", "COUNT", "IN USE", "FREE"
                );
                for f in list {
                    let ends = if f.expired {
                        "expired".to_owned()
                    } else {
                        shared::lease::describe_ends(&f.rights)
                    };
                    println!(
                        "{:<24} {:<10} {:>7} {:>7} {:>7}  {ends}",
                        f.feature, f.version, f.count, f.in_use, f.free,
                    );
                }
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    packaging::generate_if_requested::<Cli>("1");
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(b) = e.body()
                && let Some(at) = b.next_free_at
            {
                eprintln!("next seat frees at {at} (Unix time, seconds)");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
