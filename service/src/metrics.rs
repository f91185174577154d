//! What the service counts, for `/metrics` (Prometheus scrapes it; OpenMetrics text), and the
//! request middleware that counts each request and logs it as one line.
//!
//! - `http_requests_total{method, route, status}` and `http_request_duration_seconds{...}`: the
//!   route is the matched pattern (`/users/{id}`), never the raw path, so ids do not multiply
//!   the series.
//! - `reads_total{node}`: reads by the node that served them (the `x-served-by` split).
//! - `token_waits_total{outcome}`: reads that carried a consistency token, by how they ended.
//! - `primary_changes_total`: primaries the role poller has seen change.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A request's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// GET, POST, ...
    pub method: String,
    /// The matched route pattern, or `unmatched`.
    pub route: String,
    /// The status code.
    pub status: u16,
}

/// A serving node's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    /// The node's name.
    pub node: String,
}

/// How a read with a consistency token ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum TokenWait {
    /// A replica had replayed past the token (at once or after waiting).
    ReplicaCaughtUp,
    /// No replica caught up within the wait: the primary answered.
    PrimaryAfterTimeout,
    /// No replica could be asked (none, or it failed): the primary answered.
    PrimaryNoReplica,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The service's counters and histograms.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram>,
    reads: Family<NodeLabel, Counter>,
    token_waits: Family<OutcomeLabel, Counter>,
    primary_changes: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Latency buckets: 0.5 ms to about 4 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 14,
    ))
}

impl Metrics {
    /// Every series registered, at zero.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RequestLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let reads = Family::<NodeLabel, Counter>::default();
        let token_waits = Family::<OutcomeLabel, Counter>::default();
        let primary_changes = Counter::default();
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            latency.clone(),
        );
        registry.register(
            "reads",
            "Reads, by the node that served them",
            reads.clone(),
        );
        registry.register(
            "token_waits",
            "Reads carrying a consistency token, by how they ended",
            token_waits.clone(),
        );
        registry.register(
            "primary_changes",
            "Primary changes the role poller has seen",
            primary_changes.clone(),
        );
        Arc::new(Metrics {
            registry,
            requests,
            latency,
            reads,
            token_waits,
            primary_changes,
        })
    }

    /// A read served by `node`.
    pub fn read_served(&self, node: &str) {
        self.reads
            .get_or_create(&NodeLabel {
                node: node.to_string(),
            })
            .inc();
    }

    /// A read with a token ended so.
    pub fn token_wait(&self, outcome: TokenWait) {
        let outcome = match outcome {
            TokenWait::ReplicaCaughtUp => "replica_caught_up",
            TokenWait::PrimaryAfterTimeout => "primary_after_timeout",
            TokenWait::PrimaryNoReplica => "primary_no_replica",
        };
        self.token_waits
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// The role poller saw a new primary.
    pub fn primary_changed(&self) {
        self.primary_changes.inc();
    }

    fn request(&self, labels: &RequestLabels, seconds: f64) {
        self.requests.get_or_create(labels).inc();
        self.latency.get_or_create(labels).observe(seconds);
    }

    /// The OpenMetrics text of every series.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// `GET /metrics`.
pub async fn metrics_handler(metrics: Arc<Metrics>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
        .into_response()
}

/// Middleware: one span per request (method, route), one log line when it is answered (status,
/// latency), and the request counted. Only the route pattern and the method are recorded: no
/// query string, header or body, so no token or credential reaches a log line.
pub async fn observe(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let span = tracing::info_span!("request", method = %method, route = %route);
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    span.in_scope(|| {
        tracing::info!(
            status,
            latency_ms = (seconds * 1e6).round() / 1e3,
            "answered"
        )
    });
    metrics.request(
        &RequestLabels {
            method,
            route,
            status,
        },
        seconds,
    );
    response
}
