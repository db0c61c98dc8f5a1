//! `license-server serve`: check what the settings name (keys, certificates, the
//! descriptors the connection cap needs), load or make the server's own key, recover the
//! store (its rights verified), start the poller, the reaper and the pair's replicator
//! (or, for a member of a three-member cluster, its raft node and its hellos), serve HTTP
//! or HTTPS (actix-web), shut down cleanly on SIGTERM or ctrl-c.

use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpServer;
use anyhow::{Context, bail};
use http_kit::serve::{ConnectionGate, Limits, raise_nofile_limit};
use shared::capability::Role;
use shared::signing::Verifier;
use tokio::sync::watch;

use crate::cluster::{self, Cluster, ClusterConfig};
use crate::http::{self, AppContext};
use crate::identity::{self, Identity};
use crate::mail;
use crate::poller::{Poller, PollerConfig};
use crate::replication;
use crate::service::{Peer, Service, ServiceConfig, now_ms};
use crate::settings::{Settings, is_loopback};
use crate::stats::{self, UsageStats};
use crate::store::{self, StoreOptions};

/// The file the bound address is written to (useful with `LISTEN=127.0.0.1:0`).
pub const ADDR_FILE: &str = "listen.addr";

/// The connection limits for these settings, with `RLIMIT_NOFILE` raised to what they
/// need; an explicit `MAX_CONNECTIONS` the limit cannot allow is an error.
fn limits(settings: &Settings) -> anyhow::Result<Limits> {
    let mut limits = Limits::default();
    if let Some(n) = settings.max_connections {
        limits.max_connections = n;
    }
    if let Some(n) = settings.workers {
        limits.workers = n;
    }
    let needed = limits.fds_needed();
    let nofile = raise_nofile_limit(needed).context("raising RLIMIT_NOFILE")?;
    if nofile < needed {
        let fits = limits.max_connections_for(nofile);
        if settings.max_connections.is_some() || fits == 0 {
            bail!(
                "MAX_CONNECTIONS `{}` needs {needed} file descriptors, but RLIMIT_NOFILE allows {nofile}: \
                 raise the limit (ulimit -n, LimitNOFILE=) or set MAX_CONNECTIONS to at most {fits}",
                limits.max_connections
            );
        }
        tracing::info!(
            max_connections = fits,
            nofile,
            "RLIMIT_NOFILE allows fewer connections than the default; serving at most that many"
        );
        limits.max_connections = fits;
    }
    Ok(limits)
}

/// `BACKOFFICE_CA`'s certificates (none when unset).
fn ca_certificates(settings: &Settings) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let Some(path) = &settings.backoffice_ca else {
        return Ok(Vec::new());
    };
    let pem = std::fs::read(path)
        .with_context(|| format!("BACKOFFICE_CA `{}` cannot be read", path.display()))?;
    licensing_client::ca_certificates(&pem)
        .map_err(|e| anyhow::anyhow!("BACKOFFICE_CA `{}`: {e}", path.display()))
}

pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let role = settings.role();
    tracing::info!(
        hostid = %settings.hostid,
        role = %role,
        listen = %settings.listen,
        data_dir = %settings.data_dir.display(),
        backoffice = %settings.backoffice_url,
        backoffice_token = ?settings.backoffice_token,
        lease_duration = %shared::duration::format(settings.lease_duration),
        https = settings.tls.is_some(),
        "starting the license server"
    );
    // Everything a setting names is checked before anything starts.
    let tls = settings
        .tls
        .as_ref()
        .map(|t| http_kit::tls::server_config(&t.cert, &t.key))
        .transpose()?;
    let ca = ca_certificates(&settings)?;
    if let Some(m) = &settings.mail {
        mail::transport(m)?;
    }
    let limits = limits(&settings)?;
    let pem = std::fs::read_to_string(&settings.backoffice_public_key).with_context(|| {
        format!(
            "BACKOFFICE_PUBLIC_KEY `{}` cannot be read",
            settings.backoffice_public_key.display()
        )
    })?;
    let verifier = Verifier::from_public_pem(&pem).with_context(|| {
        format!(
            "BACKOFFICE_PUBLIC_KEY `{}` is not the back office's Ed25519 public key (PEM)",
            settings.backoffice_public_key.display()
        )
    })?;
    if settings.backoffice_url.starts_with("http://") && !is_loopback(&settings.backoffice_url) {
        tracing::warn!(
            backoffice = %settings.backoffice_url,
            "BACKOFFICE_URL is plain http:// to another machine: BACKOFFICE_TOKEN and the rights travel unencrypted; use https://"
        );
    }
    // 0700, its files 0600 (fixed, with a warning, when more open).
    store::files::prepare_dir(&settings.data_dir)
        .with_context(|| format!("preparing DATA_DIR {}", settings.data_dir.display()))?;
    let operators = settings.operator_access()?;
    tracing::info!(
        admin_access = operators.mode().as_str(),
        readonly_token = settings.admin_readonly_token.is_some(),
        "operator API"
    );
    let identity = Identity::new(
        settings.hostid.clone(),
        identity::load_or_create_key(&settings.data_dir)?,
        verifier,
        settings.pair_token.clone(),
        Some(&settings.data_dir),
    );
    // A cluster member also takes the pool's rights from the answers of the other two.
    let identity = Arc::new(match &settings.cluster {
        Some(c) => identity.in_cluster(c.members.iter().map(|(h, _)| h.clone()).collect()),
        None => identity,
    });
    identity.load_answer();

    // State is restored before anything is served; its rights are verified as they load.
    let dir = settings.data_dir.clone();
    let opts = StoreOptions {
        rights: Some(identity.rights_check().clone()),
        ..StoreOptions::default()
    };
    let (state, store, recovery) = tokio::task::spawn_blocking(move || store::open(&dir, opts))
        .await?
        .context("opening the local store")?;
    tracing::info!(
        seq = state.seq,
        snapshot_seq = recovery.snapshot_seq,
        replayed = recovery.replayed,
        torn_bytes_cut = recovery.truncated_bytes,
        leases = state.lease_count(),
        rights = state.current_rights().len(),
        "local store recovered"
    );
    // A data directory is a cluster member's or a standalone (or pair) server's, for good.
    match &settings.cluster {
        Some(_) if state.seq > 0 => bail!(
            "DATA_DIR {} holds the pool of a standalone or pair server ({} changes); a cluster \
             member starts from a data directory of its own (unset CLUSTER_MEMBER_HOSTIDS to \
             serve this pool, or give the member another DATA_DIR)",
            settings.data_dir.display(),
            state.seq
        ),
        None if cluster::log::is_member_dir(&settings.data_dir) => bail!(
            "DATA_DIR {} holds a cluster member's files; set CLUSTER_MEMBER_HOSTIDS as it was, \
             or give this server another DATA_DIR",
            settings.data_dir.display()
        ),
        _ => {}
    }
    // A member's rights are the cluster's, checked as its raft node loads them.
    if settings.cluster.is_none() {
        match state.rights.as_ref().and_then(|r| r.claims()) {
            None => tracing::info!(
                "no rights stored yet: nothing is served until the back office answers"
            ),
            Some(c) if c.serve_until <= shared::now_unix() => tracing::warn!(
                serve_until = %crate::domain::fmt_time(c.serve_until),
                "the stored rights are past their serve_until: nothing is granted until the back office answers"
            ),
            Some(_) => {}
        }
    }

    let listener = std::net::TcpListener::bind(&settings.listen)
        .with_context(|| format!("LISTEN `{}` cannot be bound", settings.listen))?;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let public_url = settings
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{local}"));
    // Clients wait at most this long for a backup that stalls before their change is
    // acknowledged without it; well under the failover timeout.
    let sync_timeout = (settings.failover_timeout / 2).max(settings.heartbeat_interval);
    let peer = Peer::new(identity.pair_token().clone(), sync_timeout, ca.clone())?;
    let service_config = ServiceConfig {
        hostid: settings.hostid.clone(),
        role,
        lease_ms: settings.lease_duration.as_millis() as i64,
        public_url: Some(public_url.clone()),
        backup_uri: settings.licensing_backup_uri.clone(),
        main_uri: settings.licensing_main_uri.clone(),
        backoffice_url: settings.backoffice_url.clone(),
        failover_timeout_ms: settings.failover_timeout.as_millis() as i64,
        maintenance_ms: settings.failover_maintenance_interval.as_millis() as i64,
        options_file: settings.licensing_options_file.clone(),
        queue_max_ms: settings.queue_max_wait.as_millis() as i64,
        usage_interval_ms: settings.usage_interval.as_millis() as i64,
        usage_retry_ms: settings.usage_retry_window.as_millis() as i64,
        admin_session_idle_ms: settings.admin_session_idle.as_millis() as i64,
    };
    let member = match &settings.cluster {
        Some(c) => Some(
            Cluster::start(
                ClusterConfig {
                    hostid: settings.hostid.clone(),
                    public_url: public_url.clone(),
                    members: c.members.clone(),
                    heartbeat_interval: c.heartbeat_interval,
                    member_timeout: c.member_timeout,
                    token: c.token.clone(),
                    admin: operators.fingerprint(&c.token),
                    ca: ca.clone(),
                    rights: identity.rights_check().clone(),
                },
                &settings.data_dir,
            )
            .await?,
        ),
        None => None,
    };
    let svc = match &member {
        Some(c) => {
            tracing::info!(
                members = ?settings.cluster.iter().flat_map(|c| c.members.iter().map(|(h, u)| format!("{h} at {u}"))).collect::<Vec<_>>(),
                "cluster member: serving with the other two members while a majority sees each other"
            );
            Service::start_member(service_config, c.clone(), store, identity)?
        }
        None => {
            Service::start(
                service_config,
                state,
                store,
                (role != Role::Standalone).then(|| peer.clone()),
                identity,
            )
            .await?
        }
    };
    if member.is_none() {
        svc.start_options()
            .await
            .context("LICENSING_OPTIONS_FILE: the server does not start with this options file")?;
    }
    if role == Role::Main && settings.licensing_backup_uri.is_none() {
        tracing::warn!(
            "BACKUP_SERVER_HOSTID is set but LICENSING_BACKUP_URI is not: nothing is replicated and clients get no backup to fail over to"
        );
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stats = Arc::new(UsageStats::open(
        &settings.data_dir,
        settings.usage_recycle_after,
    ));
    let stats_task = tokio::spawn(stats::run(stats.clone(), stop_rx.clone()));
    let mail = match settings.mail.clone() {
        Some(m) => {
            tracing::info!(
                server = %m.host,
                port = m.port,
                recipients = m.to.len(),
                events = ?m.events.iter().map(|e| e.name()).collect::<Vec<_>>(),
                "mail notifications"
            );
            let (n, sender) = mail::Notifier::start(m, settings.hostid.to_string())?;
            let watcher = tokio::spawn(mail::watch(
                n.clone(),
                svc.clone(),
                settings.data_dir.clone(),
                stop_rx.clone(),
            ));
            Some((n, sender, watcher))
        }
        None => None,
    };
    let poller = Poller::new(
        PollerConfig {
            url: settings.backoffice_url.clone(),
            token: settings.backoffice_token.clone(),
            hostid: settings.hostid.clone(),
            role,
            backup_hostid: settings.backup_server_hostid.clone(),
            cluster_member_hostids: settings
                .cluster
                .iter()
                .flat_map(|c| c.members.iter().map(|(h, _)| h.clone()))
                .collect(),
            rights: settings.rights_ids.clone(),
            poll_interval: settings.capability_poll_interval,
            live_link: settings.live_link,
            leeway: settings.clock_leeway,
            backoff_max: settings.backoff_max,
        },
        svc.clone(),
        ca,
    )?;
    let poller_task = tokio::spawn(poller.run(stop_rx.clone()));
    // A cluster's leader expires leases through the cluster.
    let reaper_task = member
        .is_none()
        .then(|| tokio::spawn(reaper(svc.clone(), stop_rx.clone())));
    let member_tasks = member
        .as_ref()
        .map(|c| {
            let mut tasks = c.run(stop_rx.clone());
            tasks.push(tokio::spawn(crate::service::member::line_server(
                svc.clone(),
                stop_rx.clone(),
            )));
            tasks
        })
        .unwrap_or_default();
    let pair_task = match role {
        Role::Main => Some(tokio::spawn(replication::run_main(
            svc.clone(),
            peer,
            replication::MainConfig {
                heartbeat: settings.heartbeat_interval,
                absence_limit: settings.backup_absence_limit,
            },
            stop_rx.clone(),
        ))),
        Role::Backup => Some(tokio::spawn(replication::run_backup(
            svc.clone(),
            (settings.failover_timeout / 10)
                .clamp(Duration::from_millis(10), Duration::from_millis(100)),
            stop_rx.clone(),
        ))),
        Role::Standalone => None,
    };

    let gate = ConnectionGate::new(limits.max_connections, http::is_priority);
    let ctx = AppContext::new(
        svc.clone(),
        operators,
        stats,
        svc.metrics.http.clone(),
        gate.clone(),
        limits.body_timeout,
    );
    #[cfg(unix)]
    if settings.licensing_options_file.is_some() && role != Role::Backup {
        tokio::spawn(reload_on_hangup(svc.clone(), stop_rx.clone()));
    }
    let server = limits
        .apply(HttpServer::new(move || http::app(ctx.clone())), &gate)
        .shutdown_signal({
            // Queued checkouts held open answer their place at once, not at the cut-off.
            let svc = svc.clone();
            async move {
                shutdown_signal().await;
                svc.stop_holding_queued();
            }
        });
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config)?,
        None => server.listen(listener)?,
    }
    .run();
    let addr_file = settings.data_dir.join(ADDR_FILE);
    store::files::write_private(&addr_file, format!("{local}\n").as_bytes())
        .with_context(|| format!("writing {}", addr_file.display()))?;
    tracing::info!(
        addr = %local,
        scheme,
        max_connections = limits.max_connections,
        workers = limits.workers,
        "serving clients"
    );
    if let Some((n, _, _)) = &mail {
        n.notify(
            mail::Event::Start,
            "start",
            "started",
            &format!(
                "The license server {} started, serving at {local}.",
                settings.hostid
            ),
        );
    }
    server.await?;

    tracing::info!("shutting down");
    if let Some((n, sender, watcher)) = mail {
        n.notify(
            mail::Event::Stop,
            "stop",
            "stopped",
            &format!(
                "The license server {} is stopping (asked to).",
                settings.hostid
            ),
        );
        if !n.flush(mail::STOP_GRACE).await {
            tracing::error!(
                "notifications not sent within {}: the mail server did not take them; they are dropped",
                shared::duration::format(mail::STOP_GRACE)
            );
        }
        watcher.abort();
        sender.abort();
    }
    let _ = stop_tx.send(true);
    let _ = poller_task.await;
    let _ = stats_task.await;
    if let Some(t) = reaper_task {
        let _ = t.await;
    }
    for t in member_tasks {
        let _ = t.await;
    }
    if let Some(t) = pair_task {
        let _ = t.await;
    }
    svc.shutdown().await;
    let _ = std::fs::remove_file(&addr_file);
    tracing::info!("stopped");
    Ok(())
}

/// Frees leases that were not renewed in time, as soon as they lapse.
async fn reaper(svc: Arc<Service>, mut stop: watch::Receiver<bool>) {
    loop {
        let (_, next) = svc.reap();
        let wait = match next {
            Some(at) => Duration::from_millis((at - now_ms()).clamp(10, 1000) as u64),
            None => Duration::from_secs(1),
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Reads the options file again on every `SIGHUP` (a bad file is refused and logged; the
/// options in force stay).
#[cfg(unix)]
async fn reload_on_hangup(svc: Arc<Service>, mut stop: watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "SIGHUP cannot be caught: reload the options file with `license-server reload-options`");
            return;
        }
    };
    loop {
        tokio::select! {
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                tracing::info!("SIGHUP: reading the options file again");
                // A refusal is logged by the reload itself.
                let _ = svc.reload_options().await;
            }
            _ = stop.changed() => return,
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
