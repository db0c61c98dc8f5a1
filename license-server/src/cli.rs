//! Operator commands: talk to a running server over HTTP.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use shared::ErrorBody;
use shared::lease::{FeatureInfo, LeaseInfo};

use crate::service::fmt_time;

#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// The server's URL.
    #[arg(
        long,
        env = "LICENSE_SERVER_URL",
        default_value = "http://127.0.0.1:7070"
    )]
    pub url: String,
    /// Operator token (else ADMIN_TOKEN, else DATA_DIR/admin.token).
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The server's data directory, to read admin.token from.
    #[arg(long, env = "DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl Remote {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }

    fn admin_token(&self) -> anyhow::Result<String> {
        if let Some(t) = self.token.as_ref().filter(|t| !t.is_empty()) {
            return Ok(t.clone());
        }
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("license-server-data"));
        let path = dir.join("admin.token");
        let t = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no operator token: pass --token, set ADMIN_TOKEN, or point --data-dir at the server's DATA_DIR ({} not readable)",
                path.display()
            )
        })?;
        Ok(t.trim().to_owned())
    }
}

async fn send(req: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
    let resp = req.send().await.context("the server did not answer")?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
    if !status.is_success() {
        if let Ok(body) = serde_json::from_slice::<ErrorBody>(&bytes) {
            bail!("{} (HTTP {})", body, status.as_u16());
        }
        bail!(
            "HTTP {}: {}",
            status.as_u16(),
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(serde_json::from_slice(&bytes)?)
}

fn when(v: &serde_json::Value) -> String {
    v.as_i64().map_or_else(|| "-".to_owned(), fmt_time)
}

pub async fn status(r: &Remote) -> anyhow::Result<()> {
    let v = send(reqwest::Client::new().get(r.url("/api/v1/status"))).await?;
    if r.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let bo = &v["backoffice"];
    let contact = bo["state"].as_str().unwrap_or("?");
    println!(
        "server:      {} ({})",
        r.url,
        v["hostid"].as_str().unwrap_or("?")
    );
    println!(
        "role:        {}   status: {}",
        v["role"].as_str().unwrap_or("?"),
        v["server_status"].as_str().unwrap_or("?")
    );
    if let Some(b) = v["backup_uri"].as_str() {
        println!("backup:      {b}");
    }
    if let Some(m) = v["main_uri"].as_str() {
        println!("main:        {m}");
    }
    println!(
        "backoffice:  {} since {} ({})",
        contact.replace('_', " "),
        when(&bo["since"]),
        bo["url"].as_str().unwrap_or("?")
    );
    println!(
        "last poll:   {}   last success: {}   next: {}",
        when(&bo["last_attempt_at"]),
        when(&bo["last_success_at"]),
        when(&bo["next_attempt_at"])
    );
    if let Some(e) = bo["last_error"].as_str() {
        println!("last error:  {e}");
    }
    let rights = &v["rights"];
    println!(
        "rights:      {} rights, {} features, {} seats, {} in use, updated {}, next expiry {}",
        rights["rights"],
        rights["features"],
        rights["seats"],
        rights["in_use"],
        when(&rights["updated_at"]),
        when(&rights["next_expiry"])
    );
    println!(
        "leases:      {}   journal seq {} (durable {})",
        v["leases"], v["journal_seq"], v["durable_seq"]
    );
    Ok(())
}

pub async fn features(r: &Remote) -> anyhow::Result<()> {
    let v = send(reqwest::Client::new().get(r.url("/api/v1/features"))).await?;
    if r.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let list: Vec<FeatureInfo> = serde_json::from_value(v)?;
    println!(
        "{:<24} {:<10} {:>7} {:>7} {:>7}  EXPIRES",
        "FEATURE", "VERSION", "COUNT", "IN USE", "FREE"
    );
    for f in list {
        let exp = match (f.expires_at, f.expired) {
            (_, true) => "expired".to_owned(),
            (Some(e), false) => fmt_time(e),
            (None, false) => "permanent".to_owned(),
        };
        println!(
            "{:<24} {:<10} {:>7} {:>7} {:>7}  {exp}",
            f.feature, f.version, f.count, f.in_use, f.free
        );
    }
    Ok(())
}

pub async fn leases(r: &Remote, feature: &str) -> anyhow::Result<()> {
    let token = r.admin_token()?;
    let path = format!("/api/v1/admin/features/{}/leases", encode_segment(feature));
    let v = send(reqwest::Client::new().get(r.url(&path)).bearer_auth(token)).await?;
    if r.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let list: Vec<LeaseInfo> = serde_json::from_value(v)?;
    println!(
        "{:<36} {:<24} {:>5}  {:<20} {:<20}",
        "LEASE", "CLIENT", "SEATS", "SINCE", "UNTIL"
    );
    for l in &list {
        println!(
            "{:<36} {:<24} {:>5}  {:<20} {:<20}",
            l.lease_id,
            l.client_id,
            l.count,
            fmt_time(l.granted_at),
            fmt_time(l.expires_at)
        );
    }
    println!("{} lease(s) of {feature}", list.len());
    Ok(())
}

pub async fn release(r: &Remote, lease_id: &str) -> anyhow::Result<()> {
    let token = r.admin_token()?;
    let path = format!("/api/v1/admin/leases/{}", encode_segment(lease_id));
    let v = send(
        reqwest::Client::new()
            .delete(r.url(&path))
            .bearer_auth(token),
    )
    .await?;
    if r.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let l: LeaseInfo = serde_json::from_value(v)?;
    println!(
        "released lease {} ({} seat(s) of {} held by {})",
        l.lease_id, l.count, l.feature, l.client_id
    );
    Ok(())
}

/// Percent-encodes a path segment.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
