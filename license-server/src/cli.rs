//! Operator commands: talk to a running server over HTTP or HTTPS.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use licensing_client::describe_error;
use shared::ErrorBody;
use shared::lease::{FeatureInfo, LeaseInfo, PoolHolders, QueuedInfo, describe_ends};

use crate::http::admin::Reread;
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
    /// Operator token, full or restricted (else ADMIN_TOKEN, else --readonly-token, else
    /// DATA_DIR/admin.token).
    #[arg(
        long,
        env = "ADMIN_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub token: Option<String>,
    /// The restricted (read-only) operator token (else ADMIN_READONLY_TOKEN): status,
    /// leases, usage and statistics, nothing that acts.
    #[arg(
        long,
        env = "ADMIN_READONLY_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub readonly_token: Option<String>,
    /// The server's data directory, to read admin.token from.
    #[arg(long, env = "DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// PEM bundle of the CA that issued the server's certificate (an https:// server
    /// with a private CA); the system's roots are trusted too.
    #[arg(long, env = "LICENSE_SERVER_CA")]
    pub ca: Option<PathBuf>,
    /// The key of the full administration session this operator holds (`license-server
    /// session open` prints it): needed to act while a session is open.
    #[arg(
        long,
        env = "LICENSE_ADMIN_SESSION",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub session: Option<String>,
}

impl Remote {
    /// An HTTP client for the server (and the other server of its pair).
    fn http(&self) -> anyhow::Result<reqwest::Client> {
        let ca = match &self.ca {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("--ca `{}` cannot be read", path.display()))?;
                licensing_client::ca_certificates(&pem)
                    .map_err(|e| anyhow::anyhow!("--ca `{}`: {e}", path.display()))?
            }
            None => Vec::new(),
        };
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = self.session.as_deref().filter(|k| !k.is_empty()) {
            let mut value = reqwest::header::HeaderValue::from_str(key)
                .map_err(|_| anyhow::anyhow!("--session: not a session key"))?;
            value.set_sensitive(true);
            headers.insert(crate::http::admin::SESSION_HEADER, value);
        }
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .tls_certs_merge(ca)
            .default_headers(headers)
            .build()
            .map_err(|e| anyhow::anyhow!("{}", describe_error(&e)))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }

    fn admin_token(&self) -> anyhow::Result<String> {
        if let Some(t) = [&self.token, &self.readonly_token]
            .into_iter()
            .find_map(|t| t.as_ref().filter(|t| !t.is_empty()))
        {
            return Ok(t.clone());
        }
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("license-server-data"));
        let path = dir.join("admin.token");
        let t = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no operator token: pass --token (or --readonly-token), set ADMIN_TOKEN (or ADMIN_READONLY_TOKEN), or point --data-dir at the server's DATA_DIR ({} not readable)",
                path.display()
            )
        })?;
        Ok(t.trim().to_owned())
    }
}

async fn send(req: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
    let resp = req
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("the server did not answer: {}", describe_error(&e)))?;
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
    if bytes.is_empty() {
        return Ok(serde_json::Value::Null); // 204 No Content
    }
    Ok(serde_json::from_slice(&bytes)?)
}

fn when(v: &serde_json::Value) -> String {
    v.as_i64().map_or_else(|| "-".to_owned(), fmt_time)
}

/// Which servers of a pair `status` shows (Synergy's `-pls`, `-bls`, `-als`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// The server at --url.
    This,
    /// The pair's main (--url may name either server).
    Main,
    /// The pair's backup (--url may name either server).
    Backup,
    /// Both servers of the pair.
    All,
}

async fn fetch_status(http: &reqwest::Client, url: &str) -> anyhow::Result<serde_json::Value> {
    send(http.get(format!("{}/api/v1/status", url.trim_end_matches('/')))).await
}

pub async fn status(r: &Remote, which: Which) -> anyhow::Result<()> {
    let http = r.http()?;
    let here = fetch_status(&http, &r.url).await?;
    let role = here["role"].as_str().unwrap_or("standalone");
    let this = r.url.trim_end_matches('/').to_owned();
    let main_url = match role {
        "backup" => here["main_uri"].as_str().map(str::to_owned),
        _ => Some(this.clone()),
    };
    let backup_url = match role {
        "main" => here["backup_uri"].as_str().map(str::to_owned),
        "backup" => Some(this.clone()),
        _ => None,
    };
    let targets: Vec<(&str, Option<String>)> = match which {
        Which::This => vec![(role, Some(this.clone()))],
        Which::Main => vec![("main", main_url)],
        Which::Backup => vec![("backup", backup_url)],
        Which::All => vec![("main", main_url), ("backup", backup_url)],
    };
    let mut shown = Vec::new();
    for (label, url) in targets {
        let Some(url) = url else {
            shown.push(serde_json::json!({"role": label, "error": "no such server in this pair"}));
            continue;
        };
        let v = if url == this {
            Ok(here.clone())
        } else {
            fetch_status(&http, &url).await
        };
        shown.push(match v {
            Ok(v) => serde_json::json!({"url": url, "status": v}),
            Err(e) => serde_json::json!({
                "url": url,
                "role": label,
                "server_status": "inaccessible",
                "error": format!("{e:#}"),
            }),
        });
    }
    if r.json {
        let out = if which == Which::This {
            here
        } else {
            serde_json::Value::Array(shown)
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for (i, s) in shown.iter().enumerate() {
        if i > 0 {
            println!();
        }
        match s.get("status") {
            Some(v) => print_status(s["url"].as_str().unwrap_or("?"), v),
            None => println!(
                "server:      {} ({}): {}",
                s["url"].as_str().unwrap_or("-"),
                s["role"].as_str().unwrap_or("?"),
                s["error"].as_str().unwrap_or("inaccessible")
            ),
        }
    }
    // Who serves each license and who holds its seats: the server that serves the pool
    // now (or the one asked, when none does).
    let serving = shown
        .iter()
        .filter_map(|s| s.get("status"))
        .find(|v| v["pair"]["serving"].as_bool() == Some(true))
        .unwrap_or(&here);
    let url = serving["public_url"]
        .as_str()
        .map_or_else(|| this.clone(), |u| u.trim_end_matches('/').to_owned());
    let by = format!("{url} ({})", serving["hostid"].as_str().unwrap_or("?"));
    match r.admin_token() {
        // The token is the server's at --url: the holders as it holds them (a backup in
        // step holds its main's leases).
        Ok(token) => {
            let v = send(
                http.get(format!("{this}/api/v1/admin/usage"))
                    .bearer_auth(token),
            )
            .await
            .with_context(|| format!("who holds the seats, from {this}"))?;
            let pools: Vec<PoolHolders> = serde_json::from_value(v)?;
            print_pools(
                &by,
                pools
                    .iter()
                    .map(|p| (&p.pool, Some((p.leases.as_slice(), p.queued.as_slice())))),
            );
        }
        Err(why) => {
            if let Ok(list) = send(http.get(format!("{url}/api/v1/features"))).await
                && let Ok(list) = serde_json::from_value::<Vec<FeatureInfo>>(list)
            {
                print_pools(&by, list.iter().map(|f| (f, None)));
            }
            println!();
            println!("seat holders not shown: {why:#}");
        }
    }
    Ok(())
}

/// The columns of the seat holders' table, in order: a heading and the cell of a lease.
/// A column more (the client's user and host) is one line here.
type Column = (&'static str, fn(&LeaseInfo) -> String);
const HOLDER_COLUMNS: &[Column] = &[
    ("CLIENT", |l| l.client_id.clone()),
    ("SEATS", |l| l.count.to_string()),
    ("SINCE", |l| fmt_time(l.granted_at)),
    ("UNTIL", |l| fmt_time(l.expires_at)),
    ("SERVED BY", |l| {
        l.granted_by.clone().unwrap_or_else(|| "-".to_owned())
    }),
    ("LEASE", |l| l.lease_id.to_string()),
];

/// The columns of the line of waiting clients (`IN LINE` is the place in its feature's).
type QueueColumn = (&'static str, fn(&QueuedInfo) -> String);
const QUEUE_COLUMNS: &[QueueColumn] = &[
    ("IN LINE", |q| q.position.to_string()),
    ("CLIENT", |q| q.client_id.clone()),
    ("USER", |q| q.user.clone().unwrap_or_else(|| "-".to_owned())),
    ("HOST", |q| q.host.clone().unwrap_or_else(|| "-".to_owned())),
    ("SEATS", |q| q.count.to_string()),
    ("SINCE", |q| fmt_time(q.queued_at)),
    ("GIVES UP", |q| fmt_time(q.queued_until)),
];

/// Rows under headings, each column as wide as its widest cell, indented.
fn table(indent: &str, headings: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = headings
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let row: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{indent}{}\n", row.join("  ").trim_end())
    };
    let mut out = line(&mut headings.iter().copied());
    for r in rows {
        out.push_str(&line(&mut r.iter().map(String::as_str)));
    }
    out
}

/// The `lmstat -a` view: per pool its counts with the ends of its rights, who serves
/// it, and (with the operator token) who holds its seats.
fn print_pools<'a>(
    served_by: &str,
    pools: impl Iterator<Item = (&'a FeatureInfo, Option<(&'a [LeaseInfo], &'a [QueuedInfo])>)>,
) {
    for (f, leases) in pools {
        println!();
        println!(
            "{}: {} in use of {}, {} free  served by {served_by}",
            f.name(),
            f.in_use,
            if f.expired {
                format!("{} (expired)", f.count)
            } else {
                f.count_with_expiry()
            },
            f.free
        );
        if f.queued > 0 {
            println!("    {} waiting in line", f.queued);
        }
        let Some((leases, queued)) = leases else {
            continue;
        };
        if leases.is_empty() {
            println!("    no seat held");
        } else {
            let headings: Vec<&str> = HOLDER_COLUMNS.iter().map(|c| c.0).collect();
            let rows: Vec<Vec<String>> = leases
                .iter()
                .map(|l| HOLDER_COLUMNS.iter().map(|c| (c.1)(l)).collect())
                .collect();
            print!("{}", table("    ", &headings, &rows));
        }
        if !queued.is_empty() {
            let headings: Vec<&str> = QUEUE_COLUMNS.iter().map(|c| c.0).collect();
            let rows: Vec<Vec<String>> = queued
                .iter()
                .map(|q| QUEUE_COLUMNS.iter().map(|c| (c.1)(q)).collect())
                .collect();
            print!("{}", table("    ", &headings, &rows));
        }
    }
}

/// A cluster member's view of its cluster: the status, then one line per member.
fn print_cluster(c: &serde_json::Value) {
    let Some(status) = c["status"].as_str() else {
        return;
    };
    println!(
        "cluster:     {}   leader: {}   term {}",
        status.replace('_', " "),
        c["leader"].as_str().unwrap_or("none"),
        c["term"]
    );
    if let Some(voters) = c["membership"].as_array() {
        let names: Vec<&str> = voters.iter().filter_map(|v| v.as_str()).collect();
        println!(
            "membership:  {}",
            if names.is_empty() {
                "none yet (no cluster log)".to_owned()
            } else {
                names.join(", ")
            }
        );
    }
    if let Some(problem) = c["membership_problem"].as_str() {
        println!("  {problem}");
    }
    for m in c["members"].as_array().into_iter().flatten() {
        println!(
            "  {:<9} {:<8} {} ({}){}{}{}",
            m["role"].as_str().unwrap_or("?"),
            if m["up"].as_bool() == Some(true) {
                "up"
            } else {
                "DOWN"
            },
            m["url"].as_str().unwrap_or("?"),
            m["hostid"].as_str().unwrap_or("?"),
            if m["this"].as_bool() == Some(true) {
                "  this member".to_owned()
            } else {
                format!("  last seen {}", when(&m["last_seen"]))
            },
            m["error"]
                .as_str()
                .map(|e| format!("\n            {e}"))
                .unwrap_or_default(),
            m["warning"]
                .as_str()
                .map(|w| format!("\n            warning: {w}"))
                .unwrap_or_default()
        );
    }
}

fn print_status(url: &str, v: &serde_json::Value) {
    let bo = &v["backoffice"];
    let contact = bo["state"].as_str().unwrap_or("?");
    println!(
        "server:      {} ({})",
        url,
        v["hostid"].as_str().unwrap_or("?")
    );
    println!(
        "role:        {}   status: {}   pair: {}",
        v["role"].as_str().unwrap_or("?"),
        v["server_status"].as_str().unwrap_or("?"),
        v["pair_status"].as_str().unwrap_or("-").replace('_', " ")
    );
    print_cluster(&v["cluster"]);
    let pair = &v["pair"];
    if let Some(b) = v["backup_uri"].as_str() {
        println!(
            "backup:      {b}   link: {}   last seen {}   replicated to seq {}",
            pair["link"].as_str().unwrap_or("-").replace('_', " "),
            when(&pair["backup_last_seen"]),
            pair["replicated_seq"]
        );
    }
    if let Some(m) = v["main_uri"].as_str() {
        println!(
            "main:        {m}   last heard {}",
            when(&pair["main_last_heard"])
        );
    }
    if let Some(since) = pair["active_since"].as_i64() {
        println!(
            "serving alone since {} (took over); maintenance interval ends {}",
            fmt_time(since),
            when(&pair["maintenance_ends_at"])
        );
    }
    if pair["detached"].as_bool() == Some(true) {
        println!(
            "detached:    {}",
            pair["detached_reason"].as_str().unwrap_or("yes")
        );
    }
    if let Some(by) = v["served_by"].as_str() {
        println!("served by:   {by}");
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
    let trust = &v["trust"];
    println!(
        "trust:       key {}, bound until {}; rights served until {}{}",
        trust["key_id"].as_str().unwrap_or("?"),
        trust["bound_until"]
            .as_i64()
            .map_or_else(|| "- (not bound: grants nothing)".to_owned(), fmt_time),
        when(&trust["serve_until"]),
        trust["pair_secret"]
            .as_str()
            .map_or_else(String::new, |s| format!(
                "; pair secret: {}",
                s.replace('_', " ")
            ))
    );
    println!(
        "leases:      {}   journal seq {} (durable {})",
        v["leases"], v["journal_seq"], v["durable_seq"]
    );
}

/// Removes the backup from the pair (run on either server); the other server is told.
pub async fn pair_detach(r: &Remote) -> anyhow::Result<()> {
    let token = r.admin_token()?;
    let v = send(
        r.http()?
            .post(r.url("/api/v1/admin/pair/detach"))
            .bearer_auth(token),
    )
    .await?;
    if r.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "detached: {}",
            v["pair"]["detached_reason"].as_str().unwrap_or("yes")
        );
    }
    Ok(())
}

/// Gives the main a new address for its backup.
pub async fn pair_set_backup(r: &Remote, backup_url: &str) -> anyhow::Result<()> {
    let token = r.admin_token()?;
    let v = send(
        r.http()?
            .put(r.url("/api/v1/admin/pair/backup"))
            .bearer_auth(token)
            .json(&serde_json::json!({"url": backup_url})),
    )
    .await?;
    if r.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("backup: {}", v["backup_uri"].as_str().unwrap_or("-"));
    }
    Ok(())
}

pub async fn features(r: &Remote) -> anyhow::Result<()> {
    let v = send(r.http()?.get(r.url("/api/v1/features"))).await?;
    if r.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let list: Vec<FeatureInfo> = serde_json::from_value(v)?;
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|f| {
            let ends = match (f.expired, f.expires_at) {
                (true, _) => "expired".to_owned(),
                // A server of before per-right ends: the pool's last end.
                _ if f.rights.is_empty() => f
                    .expires_at
                    .map_or_else(|| "permanent".to_owned(), fmt_time),
                _ => describe_ends(&f.rights),
            };
            vec![
                f.feature.clone(),
                f.version.clone(),
                f.count.to_string(),
                f.in_use.to_string(),
                f.free.to_string(),
                ends,
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            "",
            &["FEATURE", "VERSION", "COUNT", "IN USE", "FREE", "EXPIRY"],
            &rows
        )
    );
    Ok(())
}

/// `reread`: the server polls the back office now; what changed, feature by feature.
pub async fn reread(r: &Remote) -> anyhow::Result<()> {
    let token = r.admin_token()?;
    let v = send(
        r.http()?
            .post(r.url("/api/v1/admin/reread"))
            .bearer_auth(token),
    )
    .await?;
    if r.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let Reread { before, after } = serde_json::from_value(v)?;
    let changes = reread_changes(&before, &after);
    if changes.is_empty() {
        println!("rights unchanged: the back office's answer grants what was held");
    } else {
        println!("rights changed:");
        for c in changes {
            println!("  {c}");
        }
    }
    Ok(())
}

/// One line per pool whose count or rights changed: `cad 1.0: 4 until 2027-03-31 ->
/// 14 (10 permanent, 4 until 2027-03-31)`; a pool added or gone says so.
pub fn reread_changes(before: &[FeatureInfo], after: &[FeatureInfo]) -> Vec<String> {
    let key = |f: &FeatureInfo| (f.feature.clone(), f.version.clone());
    let mut out = Vec::new();
    for a in after {
        match before.iter().find(|b| key(b) == key(a)) {
            None => out.push(format!("{}: new, {}", a.name(), a.count_with_expiry())),
            Some(b) if b.count != a.count || b.rights != a.rights => out.push(format!(
                "{}: {} -> {}",
                a.name(),
                b.count_with_expiry(),
                a.count_with_expiry()
            )),
            Some(_) => {}
        }
    }
    for b in before {
        if !after.iter().any(|a| key(a) == key(b)) {
            out.push(format!(
                "{}: gone (was {})",
                b.name(),
                b.count_with_expiry()
            ));
        }
    }
    out
}

pub async fn leases(r: &Remote, feature: &str) -> anyhow::Result<()> {
    let token = r.admin_token()?;
    let path = format!("/api/v1/admin/features/{}/leases", encode_segment(feature));
    let v = send(r.http()?.get(r.url(&path)).bearer_auth(token)).await?;
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

/// The usage statistics: per feature, each user's uses, first and last use.
pub async fn statistics(r: &Remote) -> anyhow::Result<()> {
    let token = r.admin_token()?;
    let v = send(
        r.http()?
            .get(r.url("/api/v1/admin/statistics"))
            .bearer_auth(token),
    )
    .await?;
    if r.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let stats: crate::stats::UsageStatistics = serde_json::from_value(v)?;
    println!(
        "{:<24} {:<32} {:>7}  {:<20} {:<20}",
        "FEATURE", "USER", "USES", "FIRST USED", "LAST USED"
    );
    for f in &stats.features {
        for u in &f.users {
            println!(
                "{:<24} {:<32} {:>7}  {:<20} {:<20}",
                f.feature,
                u.user,
                u.uses,
                fmt_time(u.first_used),
                fmt_time(u.last_used)
            );
        }
    }
    println!(
        "named users not seen for {} are recycled daily at 00:00 UTC (USAGE_RECYCLE_AFTER); last: {}",
        shared::duration::format(std::time::Duration::from_secs(stats.recycle_after_secs)),
        stats.last_recycled_at.map_or("never".to_owned(), fmt_time)
    );
    Ok(())
}

pub async fn release(r: &Remote, lease_id: &str) -> anyhow::Result<()> {
    let token = r.admin_token()?;
    let path = format!("/api/v1/admin/leases/{}", encode_segment(lease_id));
    let v = send(r.http()?.delete(r.url(&path)).bearer_auth(token)).await?;
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

/// Opens the full administration session and prints its key.
pub async fn session_open(
    r: &Remote,
    operator: Option<&str>,
    take_over: bool,
) -> anyhow::Result<()> {
    let token = r.admin_token()?;
    let body = serde_json::json!({ "operator": operator, "take_over": take_over });
    let v = send(
        r.http()?
            .post(r.url(crate::http::admin::SESSION_PATH))
            .bearer_auth(token)
            .json(&body),
    )
    .await?;
    if r.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let opened: crate::service::session::OpenedSession = serde_json::from_value(v)?;
    if let Some(was) = &opened.took_over {
        println!("taken over from {}", was.operator);
    }
    println!(
        "full administration session opened for {}; it lapses after {} without a request \
         carrying its key. For the commands that act:\nexport LICENSE_ADMIN_SESSION={}",
        opened.holder.operator,
        shared::duration::format(std::time::Duration::from_secs(opened.idle_secs)),
        opened.key
    );
    Ok(())
}

/// Who holds the full administration session.
pub async fn session_show(r: &Remote) -> anyhow::Result<()> {
    let token = r.admin_token()?;
    let v = send(
        r.http()?
            .get(r.url(crate::http::admin::SESSION_PATH))
            .bearer_auth(token),
    )
    .await?;
    if r.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    match serde_json::from_value::<Option<crate::service::session::SessionHolder>>(v)? {
        Some(h) => println!(
            "{} holds the full administration session since {} (last request {}; lapses at {} if left idle)",
            h.operator,
            crate::domain::fmt_time(h.opened_at),
            crate::domain::fmt_time(h.last_used_at),
            crate::domain::fmt_time(h.lapses_at)
        ),
        None => println!("no full administration session is open: the full token acts alone"),
    }
    Ok(())
}

/// Closes the full administration session this operator holds (`--session`).
pub async fn session_close(r: &Remote) -> anyhow::Result<()> {
    let token = r.admin_token()?;
    send(
        r.http()?
            .delete(r.url(crate::http::admin::SESSION_PATH))
            .bearer_auth(token),
    )
    .await?;
    println!("no full administration session is open now");
    Ok(())
}

/// Makes the server read its options file again (as `SIGHUP` does).
pub async fn reload_options(r: &Remote) -> anyhow::Result<()> {
    let token = r.admin_token()?;
    let v = send(
        r.http()?
            .post(r.url("/api/v1/admin/options/reload"))
            .bearer_auth(token),
    )
    .await?;
    if r.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "options file {} in force: {} rule(s)",
            v["file"].as_str().unwrap_or("?"),
            v["rules"]
        );
    }
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

/// Where a server's store is, and what its rights are verified with.
#[derive(Debug, Clone, Args)]
pub struct StoreDir {
    /// The server's data directory.
    #[arg(long, env = "DATA_DIR", default_value = "license-server-data")]
    pub data_dir: PathBuf,
    /// The back office's public key (PEM), to verify the stored rights with; without it
    /// their signatures are not checked.
    #[arg(long, env = "BACKOFFICE_PUBLIC_KEY")]
    pub backoffice_public_key: Option<PathBuf>,
    /// The server's hostid, whose rights these are (default: as the server derives it).
    #[arg(long, env = "HOSTID")]
    pub hostid: Option<String>,
}

impl StoreDir {
    /// The check of the stored rights, when the back office's key is given.
    fn rights_check(&self) -> anyhow::Result<Option<crate::domain::RightsCheck>> {
        let Some(path) = &self.backoffice_public_key else {
            println!(
                "note: the rights' signatures are not checked (give --backoffice-public-key or BACKOFFICE_PUBLIC_KEY)"
            );
            return Ok(None);
        };
        let pem = std::fs::read_to_string(path).with_context(|| {
            format!(
                "--backoffice-public-key `{}` cannot be read",
                path.display()
            )
        })?;
        let producer = shared::signing::Verifier::from_public_pem(&pem).with_context(|| {
            format!(
                "--backoffice-public-key `{}` is not the back office's Ed25519 public key (PEM)",
                path.display()
            )
        })?;
        let hostid = match self
            .hostid
            .as_deref()
            .map(str::trim)
            .filter(|h| !h.is_empty())
        {
            Some(h) => shared::HostId::parse(h).with_context(|| format!("--hostid `{h}`"))?,
            None => crate::settings::default_hostid()
                .context("no --hostid (HOSTID) and no network interface to derive one from")?,
        };
        Ok(Some(crate::domain::RightsCheck::new(producer, hostid)))
    }
}

/// `store verify`: what the store holds; an error when something is damaged.
pub fn store_verify(d: &StoreDir) -> anyhow::Result<()> {
    if crate::store::files::in_use(&d.data_dir) {
        println!(
            "note: a server is using this store; a record it is writing may show as cut short"
        );
    }
    let check = d.rights_check()?;
    let scan = crate::store::repair::verify(&d.data_dir, check.as_ref())?;
    print!("{}", crate::store::repair::report(&d.data_dir, &scan));
    if crate::store::repair::is_damaged(&scan) {
        bail!("the store is damaged");
    }
    Ok(())
}

/// `store recover`: keeps what is readable, after asking.
pub fn store_recover(d: &StoreDir, yes: bool) -> anyhow::Result<()> {
    use crate::store::repair;
    let check = d.rights_check()?;
    let scan = repair::verify(&d.data_dir, check.as_ref())?;
    print!("{}", repair::report(&d.data_dir, &scan));
    if !repair::is_damaged(&scan) {
        println!("nothing to recover");
        return Ok(());
    }
    if !yes {
        println!(
            "keep what is readable (state at sequence {}, {} leases) and move the damaged files aside? [y/N]",
            scan.state.seq,
            scan.state.lease_count()
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!("nothing was changed");
        }
    }
    let done = repair::recover(&d.data_dir, &scan)?;
    for p in &done.moved_aside {
        println!("moved aside: {}", p.display());
    }
    println!(
        "recovered: state at sequence {} with {} leases; the lost part is listed above under damage",
        done.seq, done.leases
    );
    Ok(())
}
