//! Prometheus metrics (prometheus-client), rendered by `GET /metrics`; the HTTP
//! requests' (by route and status) come from `http_kit::observe`.

use std::sync::Arc;

use http_kit::observe::HttpMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub grants: Counter,
    pub renewals: Counter,
    pub returns: Counter,
    pub expirations: Counter,
    pub releases: Counter,
    /// Clients that joined a line, were granted a seat from it, whose wait lapsed, or
    /// that left it.
    pub queue_joins: Counter,
    pub queue_grants: Counter,
    pub queue_lapses: Counter,
    pub queue_leaves: Counter,
    pub queued: Gauge,
    pub denials: Family<CodeLabel, Counter>,
    pub polls: Family<ResultLabel, Counter>,
    pub http: Arc<HttpMetrics>,
    pub leases: Gauge,
    pub seats_in_use: Gauge,
    pub seats_licensed: Gauge,
    pub store_commits: Counter,
    pub store_events: Counter,
    pub store_snapshots: Counter,
    pub takeovers: Counter,
    pub failbacks: Counter,
    pub replication_batches: Counter,
    pub replication_events: Counter,
    pub replication_failures: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("lls");
        let m = Metrics {
            grants: Counter::default(),
            renewals: Counter::default(),
            returns: Counter::default(),
            expirations: Counter::default(),
            releases: Counter::default(),
            queue_joins: Counter::default(),
            queue_grants: Counter::default(),
            queue_lapses: Counter::default(),
            queue_leaves: Counter::default(),
            queued: Gauge::default(),
            denials: Family::default(),
            polls: Family::default(),
            http: HttpMetrics::register(&mut registry),
            leases: Gauge::default(),
            seats_in_use: Gauge::default(),
            seats_licensed: Gauge::default(),
            store_commits: Counter::default(),
            store_events: Counter::default(),
            store_snapshots: Counter::default(),
            takeovers: Counter::default(),
            failbacks: Counter::default(),
            replication_batches: Counter::default(),
            replication_events: Counter::default(),
            replication_failures: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "lease_grants",
            "Leases granted (new seats)",
            m.grants.clone(),
        );
        registry.register(
            "lease_renewals",
            "Leases renewed (including a repeated checkout by the same client)",
            m.renewals.clone(),
        );
        registry.register(
            "lease_returns",
            "Leases returned by clients",
            m.returns.clone(),
        );
        registry.register(
            "lease_expirations",
            "Leases freed because they were not renewed in time",
            m.expirations.clone(),
        );
        registry.register(
            "lease_releases",
            "Leases force-released by an operator",
            m.releases.clone(),
        );
        registry.register(
            "queue_joins",
            "Checkouts that joined the line for a seat (queue_secs)",
            m.queue_joins.clone(),
        );
        registry.register(
            "queue_grants",
            "Seats granted to clients in line",
            m.queue_grants.clone(),
        );
        registry.register(
            "queue_lapses",
            "Clients in line whose wait ended without a seat",
            m.queue_lapses.clone(),
        );
        registry.register(
            "queue_leaves",
            "Clients that left the line themselves",
            m.queue_leaves.clone(),
        );
        registry.register(
            "queued",
            "Clients waiting in line now (all features)",
            m.queued.clone(),
        );
        registry.register(
            "denials",
            "Client requests refused, by error code",
            m.denials.clone(),
        );
        registry.register(
            "capability_polls",
            "Capability requests to the back office, by result",
            m.polls.clone(),
        );
        registry.register("leases", "Leases held now", m.leases.clone());
        registry.register("seats_in_use", "Seats held now", m.seats_in_use.clone());
        registry.register(
            "seats_licensed",
            "Seats licensed now (all features)",
            m.seats_licensed.clone(),
        );
        registry.register(
            "store_commits",
            "Journal commits (one fdatasync each)",
            m.store_commits.clone(),
        );
        registry.register(
            "store_events",
            "Events written to the journal",
            m.store_events.clone(),
        );
        registry.register(
            "store_snapshots",
            "Snapshots written",
            m.store_snapshots.clone(),
        );
        registry.register(
            "takeovers",
            "Times this backup took over from a silent main",
            m.takeovers.clone(),
        );
        registry.register(
            "failbacks",
            "Times this main took its backup's changes back",
            m.failbacks.clone(),
        );
        registry.register(
            "replication_batches",
            "Batches of changes (or heartbeats) the backup acknowledged",
            m.replication_batches.clone(),
        );
        registry.register(
            "replication_events",
            "Changes the backup acknowledged",
            m.replication_events.clone(),
        );
        registry.register(
            "replication_failures",
            "Attempts to reach the backup that failed",
            m.replication_failures.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn deny(&self, code: shared::ErrorCode) {
        self.denials
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
    }

    pub fn poll(&self, result: &'static str) {
        self.polls.get_or_create(&ResultLabel { result }).inc();
    }

    /// Raises a counter to an absolute value read elsewhere.
    pub fn catch_up(counter: &Counter, value: u64) {
        let now = counter.get();
        if value > now {
            counter.inc_by(value - now);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
