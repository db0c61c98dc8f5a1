//! `license-server serve`: recover the store, start the poller and the reaper, serve HTTP,
//! shut down cleanly on SIGTERM or ctrl-c.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shared::signing::Verifier;
use tokio::sync::watch;

use crate::http::{AppState, router};
use crate::poller::{Poller, PollerConfig};
use crate::replication::{self, Peer};
use crate::service::{Service, ServiceConfig, now_ms};
use crate::settings::{Settings, admin_token_file};
use crate::store::{self, StoreOptions};

/// The file the bound address is written to (useful with `LISTEN=127.0.0.1:0`).
pub const ADDR_FILE: &str = "listen.addr";

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
        "starting the license server"
    );
    let pem = std::fs::read_to_string(&settings.backoffice_public_key).with_context(|| {
        format!(
            "reading BACKOFFICE_PUBLIC_KEY {}",
            settings.backoffice_public_key.display()
        )
    })?;
    let verifier = Verifier::from_public_pem(&pem).context("BACKOFFICE_PUBLIC_KEY")?;
    // 0700, its files 0600 (fixed, with a warning, when more open).
    store::files::prepare_dir(&settings.data_dir)
        .with_context(|| format!("preparing DATA_DIR {}", settings.data_dir.display()))?;
    let admin_token = match &settings.admin_token {
        Some(t) => t.clone(),
        None => admin_token_file(&settings.data_dir)?,
    };

    // State is restored before anything is served.
    let dir = settings.data_dir.clone();
    let (state, store, recovery) =
        tokio::task::spawn_blocking(move || store::open(&dir, StoreOptions::default()))
            .await?
            .context("opening the local store")?;
    tracing::info!(
        seq = state.seq,
        snapshot_seq = recovery.snapshot_seq,
        replayed = recovery.replayed,
        torn_bytes_cut = recovery.truncated_bytes,
        leases = state.lease_count(),
        rights = state.rights.len(),
        "local store recovered"
    );
    if state.rights_updated_at.is_none() {
        tracing::info!("no rights stored yet: nothing is served until the back office answers");
    }

    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("binding LISTEN {}", settings.listen))?;
    let local = listener.local_addr()?;
    let public_url = settings
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{local}"));
    let svc = Service::start(
        ServiceConfig {
            hostid: settings.hostid.clone(),
            role,
            lease_ms: settings.lease_duration.as_millis() as i64,
            public_url: Some(public_url),
            backup_uri: settings.licensing_backup_uri.clone(),
            main_uri: settings.licensing_main_uri.clone(),
            backoffice_url: settings.backoffice_url.clone(),
            failover_timeout_ms: settings.failover_timeout.as_millis() as i64,
            maintenance_ms: settings.failover_maintenance_interval.as_millis() as i64,
        },
        state,
        store,
    )
    .await?;
    if role == shared::capability::Role::Main && settings.licensing_backup_uri.is_none() {
        tracing::warn!(
            "BACKUP_SERVER_HOSTID is set but LICENSING_BACKUP_URI is not: nothing is replicated and clients get no backup to fail over to"
        );
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let poller = Poller::new(
        PollerConfig {
            url: settings.backoffice_url.clone(),
            token: settings.backoffice_token.clone(),
            hostid: settings.hostid.clone(),
            role,
            backup_hostid: settings.backup_server_hostid.clone(),
            rights: settings.rights_ids.clone(),
            poll_interval: settings.capability_poll_interval,
            leeway: settings.clock_leeway,
            backoff_max: settings.backoff_max,
        },
        verifier,
        svc.clone(),
    )?;
    let poller_task = tokio::spawn(poller.run(stop_rx.clone()));
    let reaper_task = tokio::spawn(reaper(svc.clone(), stop_rx.clone()));
    // Clients wait at most this long for a backup that stalls before their change is
    // acknowledged without it; well under the failover timeout.
    let sync_timeout = (settings.failover_timeout / 2).max(settings.heartbeat_interval);
    let peer = Peer::new(settings.pair_token.clone(), sync_timeout)?;
    let pair_task = match role {
        shared::capability::Role::Main => Some(tokio::spawn(replication::run_main(
            svc.clone(),
            peer.clone(),
            replication::MainConfig {
                heartbeat: settings.heartbeat_interval,
                absence_limit: settings.backup_absence_limit,
            },
            stop_rx.clone(),
        ))),
        shared::capability::Role::Backup => Some(tokio::spawn(replication::run_backup(
            svc.clone(),
            (settings.failover_timeout / 10)
                .clamp(Duration::from_millis(10), Duration::from_millis(100)),
            stop_rx.clone(),
        ))),
        shared::capability::Role::Standalone => None,
    };

    let app = router(AppState {
        svc: svc.clone(),
        admin_token: Arc::new(admin_token),
        pair_token: Arc::new(settings.pair_token.clone()),
        peer,
    });
    let addr_file = settings.data_dir.join(ADDR_FILE);
    store::files::write_private(&addr_file, format!("{local}\n").as_bytes())
        .with_context(|| format!("writing {}", addr_file.display()))?;
    tracing::info!(addr = %local, "serving clients");

    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;

    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = poller_task.await;
    let _ = reaper_task.await;
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
