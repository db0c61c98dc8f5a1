//! `license-client`: check licenses out of a license server from the command line; every
//! grant and renewal is verified with the producer's public key before it is shown.

use std::time::Duration;

use clap::{Parser, Subcommand};
use licensing_client::{Client, ClientError};
use shared::lease::{CheckoutRequest, Lease, QueuePlace};
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
        /// When no seat is free, wait in line up to SECS seconds for one (first come,
        /// first served; at most the server's QUEUE_MAX_WAIT); the place in line is
        /// printed to standard error as it changes.
        #[arg(long = "queue", value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        queue: Option<u64>,
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
    /// Borrow seats for offline use: the lease (with its grant, binding and token) is
    /// verified, then written to FILE (mode 0600) for `verify` and `return`.
    Borrow {
        feature: String,
        /// How long to borrow (e.g. `8h`, `7d`), at most the line item's maximum.
        #[arg(long, value_parser = shared::duration::parse)]
        period: Duration,
        /// Where to keep the borrowed lease.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Seats to take.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// A specific version of the feature (any version when absent).
        #[arg(long = "feature-version")]
        feature_version: Option<String>,
    },
    /// Check a borrowed lease offline, with the producer's key alone (no server): exits 0
    /// and says until when it is valid, or 1 and why not.
    Verify {
        /// The file `borrow` wrote.
        lease_file: std::path::PathBuf,
    },
    /// Give a borrowed lease back before it ends (the seat is free again at once).
    ReturnBorrowed {
        /// The file `borrow` wrote; removed once the server took the lease back.
        lease_file: std::path::PathBuf,
    },
    /// List the server's features: count, in use, free, each line item's end.
    Features,
}

/// Reads a lease file written by `borrow`.
fn read_lease(path: &std::path::Path) -> Result<Lease, String> {
    let text = std::fs::read(path)
        .map_err(|e| format!("the lease file `{}` cannot be read: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| {
        format!(
            "`{}` is not a lease written by `license-client borrow`: {e}",
            path.display()
        )
    })
}

/// Writes a borrowed lease (it holds the lease token) readable by its owner only.
fn write_lease(path: &std::path::Path, lease: &Lease) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let json = serde_json::to_vec_pretty(lease).map_err(|e| e.to_string())?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            format!(
                "the lease file `{}` cannot be created (it must not exist yet): {e}",
                path.display()
            )
        })?;
    f.write_all(&json)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("writing `{}`: {e}", path.display()))
}

fn print_lease(lease: &Lease, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(lease).unwrap_or_default()
        );
    } else {
        println!(
            "lease {} : {} seat(s) of {} {} for {}{}{}\ntoken {}\nexpires at {} (renew after {})",
            lease.lease_id,
            lease.count,
            lease.feature,
            lease.version,
            lease.client_id,
            if lease.borrowed { " (borrowed)" } else { "" },
            if lease.overdraft { " (overdraft)" } else { "" },
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
        .fold(Client::builder(producer.clone()), |b, s| b.server(s));
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
            queue,
        } => {
            let req = CheckoutRequest {
                borrow_secs: None,
                queue_secs: None,
                feature,
                version: feature_version,
                count,
                client_id: client.client_id().to_owned(),
                user: None,
                host: None,
                client_secret: None,
            };
            let lease = match queue {
                None => client.checkout_lease(&req).await?,
                Some(secs) => {
                    let mut last = None;
                    let show = |p: &QueuePlace| {
                        if last != Some(p.position) {
                            last = Some(p.position);
                            eprintln!(
                                "waiting in line for {}: place {} of {} (gives up at {})",
                                p.feature, p.position, p.queued, p.queued_until
                            );
                        }
                    };
                    client
                        .checkout_lease_queued(&req, Duration::from_secs(secs), show)
                        .await?
                }
            };
            match hold {
                None => print_lease(&lease, cli.json),
                Some(d) => {
                    let guard = client.guard(lease);
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
        Command::Borrow {
            feature,
            period,
            out,
            count,
            feature_version,
        } => {
            let lease = client
                .borrow(&feature, feature_version.as_deref(), count, period)
                .await?;
            write_lease(&out, &lease).map_err(ClientError::Invalid)?;
            print_lease(&lease, cli.json);
        }
        Command::ReturnBorrowed { lease_file } => {
            let lease = read_lease(&lease_file).map_err(ClientError::Invalid)?;
            client.release(&lease).await?;
            std::fs::remove_file(&lease_file).map_err(|e| {
                ClientError::Invalid(format!(
                    "returned lease {}, but `{}` could not be removed: {e}",
                    lease.lease_id,
                    lease_file.display()
                ))
            })?;
            if !cli.json {
                println!("returned lease {}", lease.lease_id);
            }
        }
        Command::Verify { lease_file } => {
            let lease = read_lease(&lease_file).map_err(ClientError::Invalid)?;
            let v = licensing_client::verify_borrowed(
                &producer,
                &lease,
                shared::now_unix(),
                i64::try_from(licensing_client::DEFAULT_CLOCK_LEEWAY.as_secs()).unwrap_or(60),
            )
            .map_err(|e| ClientError::Untrusted {
                server: lease.served_by.clone().unwrap_or_default(),
                reason: e.to_string(),
            })?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"valid": true, "lease_id": lease.lease_id, "feature": v.grant.feature, "count": v.grant.count, "expires_at": v.grant.exp, "granted_by": v.grant.iss})
                );
            } else {
                println!(
                    "valid: {} seat(s) of {} {} borrowed by {} from {}, until {} (Unix time, seconds)",
                    v.grant.count,
                    v.grant.feature,
                    v.grant.version,
                    v.grant.sub,
                    v.grant.iss,
                    v.grant.exp
                );
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
