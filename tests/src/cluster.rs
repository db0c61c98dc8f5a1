//! Three-member clusters for tests and benchmarks: three `license-server` members of
//! one pool, registered with the back office as one cluster by their own requests (each
//! names the other two in `CLUSTER_MEMBER_HOSTIDS` and asks `RIGHTS_IDS` for the pool,
//! which is mapped once, to the cluster), each with its own key and binding, the three
//! sharing a `PAIR_TOKEN` and an `ADMIN_TOKEN` of their own. Member `i` reaches member `j`
//! through its own link-cutting proxy, so that a member can be cut off from the other
//! two while clients still reach it directly.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;
use uuid::Uuid;

use crate::{BackOffice, Fixture, LicenseServer, Proxy, free_port, tail};

/// Three members' settings: member `i` reaches member `j` through `links[i][j]`.
pub struct ClusterSetup {
    pub tmp: tempfile::TempDir,
    pub ports: [u16; 3],
    pub hostids: [String; 3],
    pub links: Vec<Vec<Option<Proxy>>>,
    pub common: Vec<(String, String)>,
    /// Extra settings of one member (a clock set off, another cluster's members).
    pub extra: [Vec<(String, String)>; 3],
    /// The producer's key: clients verify the members' grants with it.
    pub producer: shared::signing::Verifier,
    /// The members' secret (`PAIR_TOKEN`).
    pub member_token: String,
    /// Each member's `DATA_DIR`, under `tmp`.
    pub dirs: [String; 3],
}

/// A member taken out by [`ClusterSetup::replace`]: what it runs with, to start it again
/// with its old settings; its links to the other two stay open while this is kept.
pub struct Replaced {
    pub hostid: String,
    pub port: u16,
    pub dir: String,
    pub env: Vec<(String, String)>,
    pub links: Vec<Proxy>,
}

impl ClusterSetup {
    /// Three members serving `seats` of the fixture's line item (each asks for them; the
    /// cluster they register holds them once); `extra` overrides or adds settings on all
    /// three.
    pub async fn new(
        bo: &BackOffice,
        fx: &Fixture,
        seats: u32,
        extra: &[(&str, &str)],
    ) -> Result<ClusterSetup> {
        let ports = [free_port(), free_port(), free_port()];
        let tag = Uuid::new_v4().simple().to_string();
        let hostids = [0, 1, 2].map(|i| format!("string:member{i}-{}", &tag[..8]));
        let mut links = Vec::new();
        for i in 0..3 {
            let mut row = Vec::new();
            for (j, port) in ports.iter().enumerate() {
                row.push(if i == j {
                    None
                } else {
                    Some(Proxy::start(*port).await?)
                });
            }
            links.push(row);
        }
        let member_token = shared::random_token::<32>();
        let common = [
            ("PAIR_TOKEN", member_token.clone()),
            // The cluster's operator token, the same on the three (required of a member).
            ("ADMIN_TOKEN", shared::random_token::<32>()),
            ("BACKOFFICE_URL", bo.url.clone()),
            ("BACKOFFICE_TOKEN", fx.device_token.clone()),
            (
                "BACKOFFICE_PUBLIC_KEY",
                bo.public_key_path().display().to_string(),
            ),
            ("CAPABILITY_POLL_INTERVAL", "1s".to_owned()),
            ("BACKOFF_MAX", "500ms".to_owned()),
            ("LEASE_DURATION", "60s".to_owned()),
            ("RIGHTS_IDS", format!("{}:{seats}", fx.activation_id)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
        Ok(ClusterSetup {
            tmp: tempfile::tempdir()?,
            ports,
            hostids,
            links,
            common,
            extra: Default::default(),
            producer: bo.producer(),
            member_token,
            dirs: [0, 1, 2].map(|i| format!("member{i}")),
        })
    }

    /// Replaces member `k` in the settings by a new server (another hostid, port and
    /// `DATA_DIR`, its own links): `env(i)` of every member names it from now on. Starts
    /// nothing; the member taken out keeps its settings and links in what is returned.
    pub async fn replace(&mut self, k: usize) -> Result<Replaced> {
        let env = self.env(k);
        let port = free_port();
        let tag = Uuid::new_v4().simple().to_string();
        let hostid = std::mem::replace(
            &mut self.hostids[k],
            format!("string:member{k}-new-{}", &tag[..8]),
        );
        let mut links = Vec::new();
        for j in (0..3).filter(|j| *j != k) {
            links.extend(self.links[k][j].replace(Proxy::start(self.ports[j]).await?));
            // The other members' links to the old one go nowhere now.
            self.links[j][k] = Some(Proxy::start(port).await?);
        }
        let old_port = std::mem::replace(&mut self.ports[k], port);
        let dir = std::mem::replace(&mut self.dirs[k], format!("member{k}-new"));
        Ok(Replaced {
            hostid,
            port: old_port,
            dir,
            env,
            links,
        })
    }

    /// A client of the cluster that knows member `first` (it learns the others).
    pub fn client(&self, first: &str) -> Result<licensing_client::Client> {
        Ok(licensing_client::Client::new(first, self.producer.clone())?)
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    pub fn env(&self, i: usize) -> Vec<(String, String)> {
        let others: Vec<usize> = (0..3).filter(|j| *j != i).collect();
        let mut env = self.common.clone();
        env.push(("HOSTID".into(), self.hostids[i].clone()));
        env.push(("PUBLIC_URL".into(), self.url(i)));
        env.push((
            "CLUSTER_MEMBER_HOSTIDS".into(),
            others
                .iter()
                .map(|j| self.hostids[*j].clone())
                .collect::<Vec<_>>()
                .join(","),
        ));
        env.push((
            "CLUSTER_MEMBER_URIS".into(),
            others
                .iter()
                .map(|j| {
                    self.links[i][*j]
                        .as_ref()
                        .map(Proxy::url)
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join(","),
        ));
        for (k, v) in &self.extra[i] {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    pub async fn start(&self, i: usize) -> Result<LicenseServer> {
        LicenseServer::start(
            &self.dirs[i],
            &self.tmp.path().join(&self.dirs[i]),
            self.ports[i],
            &self.env(i),
        )
        .await
    }

    pub async fn start_all(&self) -> Result<Vec<LicenseServer>> {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(self.start(i).await?);
        }
        Ok(v)
    }

    /// Starts the three members and waits until they are `operational` with one serving
    /// `seats`; the members and the serving one's index.
    pub async fn start_operational(
        &self,
        seats: u32,
        timeout: Duration,
    ) -> Result<(Vec<LicenseServer>, usize)> {
        let members = self.start_all().await?;
        let leader = wait_cluster(
            &members.iter().collect::<Vec<_>>(),
            "operational",
            seats,
            timeout,
        )
        .await?;
        Ok((members, leader))
    }

    /// Cuts member `k` off from the other two (both directions), or heals it.
    pub fn isolate(&self, k: usize, cut: bool) {
        for j in (0..3).filter(|j| *j != k) {
            for p in [&self.links[k][j], &self.links[j][k]].into_iter().flatten() {
                if cut { p.cut() } else { p.heal() }
            }
        }
    }
}

/// A member's view of its cluster (`null` when it does not answer).
pub async fn cluster_of(m: &LicenseServer) -> Option<Value> {
    let s = m.status().await.ok()?;
    Some(s["cluster"].clone())
}

/// Waits until every member of `members` reports `status`, one serves and it holds
/// `seats`; returns the serving member's index.
pub async fn wait_cluster(
    members: &[&LicenseServer],
    status: &str,
    seats: u32,
    timeout: Duration,
) -> Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut serving = None;
        let mut all = true;
        for (i, m) in members.iter().enumerate() {
            match m.status().await {
                Ok(s) => {
                    all &= s["cluster_status"] == status;
                    if s["cluster"]["serving"] == true
                        && s["rights"]["seats"].as_u64() == Some(seats.into())
                    {
                        serving = Some(i);
                    }
                }
                Err(_) => all = false,
            }
        }
        if let (true, Some(i)) = (all, serving) {
            return Ok(i);
        }
        if Instant::now() > deadline {
            let mut report = String::new();
            for m in members {
                let view = cluster_of(m).await;
                report.push_str(&format!(
                    "--- {} ---\n{}\n{}\n",
                    m.name,
                    view.clone().unwrap_or_default(),
                    tail(&m.log_text(), 30)
                ));
                // A member that does not answer at all: where are its threads?
                if view.is_none()
                    && let Some(stacks) = m.process.stacks()
                {
                    report.push_str(&format!("--- {}'s threads ---\n{stacks}", m.name));
                }
            }
            bail!("the members do not all report {status} with one serving:\n{report}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills the leader `members[leader]` with kill -9 and waits until the other two report
/// `partially_operational` with one serving `seats`: that one's index, and the two alive.
pub async fn kill_the_leader(
    members: &mut [LicenseServer],
    leader: usize,
    seats: u32,
    timeout: Duration,
) -> Result<(usize, Vec<usize>)> {
    members[leader].kill9();
    let alive: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let new = alive[wait_cluster(
        &[&members[alive[0]], &members[alive[1]]],
        "partially_operational",
        seats,
        timeout,
    )
    .await?];
    Ok((new, alive))
}
