//! What the agent counts, served as OpenMetrics text on `metrics_listen` (plain HTTP, `GET
//! /metrics`; the counts hold no secret): faults applied, by kind, and calls refused, by reason
//! (the gRPC status code: `unauthenticated` for a wrong token, `invalid_argument`, ...).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// The agent's counters.
pub struct AgentMetrics {
    registry: Registry,
    faults: Family<KindLabel, Counter>,
    refused: Family<ReasonLabel, Counter>,
}

impl AgentMetrics {
    /// Both families registered, empty.
    pub fn new() -> Arc<AgentMetrics> {
        let mut registry = Registry::default();
        let faults = Family::<KindLabel, Counter>::default();
        let refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "agent_faults_applied",
            "Faults the agent carried out, by kind",
            faults.clone(),
        );
        registry.register(
            "agent_calls_refused",
            "Calls the agent refused, by reason",
            refused.clone(),
        );
        Arc::new(AgentMetrics {
            registry,
            faults,
            refused,
        })
    }

    /// A fault of `kind` was carried out.
    pub fn applied(&self, kind: &str) {
        self.faults
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// A call was refused with `code`.
    pub fn refused(&self, code: tonic::Code) {
        let reason = format!("{code:?}");
        // CamelCase to snake_case: `InvalidArgument` -> `invalid_argument`.
        let mut snake = String::new();
        for (i, c) in reason.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                snake.push('_');
            }
            snake.push(c.to_ascii_lowercase());
        }
        self.refused
            .get_or_create(&ReasonLabel { reason: snake })
            .inc();
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Serves `GET /metrics` on `listen` until the task is dropped: one short HTTP/1.1 answer per
/// connection, 404 for any other path.
pub async fn serve_metrics(listen: SocketAddr, metrics: Arc<AgentMetrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(listen = %listen, "agent metrics served");
    loop {
        let (mut stream, _) = listener.accept().await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let n = stream.read(&mut request).await.unwrap_or(0);
            let asked = String::from_utf8_lossy(&request[..n]);
            let (status, kind, body) = if asked.starts_with("GET /metrics ") {
                (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics.encode(),
                )
            } else {
                (
                    "404 Not Found",
                    "text/plain",
                    "only GET /metrics\n".to_string(),
                )
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}

/// Reads an agent's `GET /metrics` text (plain HTTP, the connection closed by the agent), within
/// `limit`.
pub async fn scrape(addr: SocketAddr, limit: Duration) -> std::io::Result<String> {
    let read = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: agent\r\n\r\n")
            .await?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await?;
        match reply.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200 ") => Ok(body.to_string()),
            _ => Err(std::io::Error::other(format!(
                "{addr}: not a metrics answer: {}",
                reply.lines().next().unwrap_or("(empty)")
            ))),
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| std::io::Error::other(format!("{addr}: no metrics answer within {limit:?}")))?
}

/// `agent_faults_applied_total` by kind, from an agent's metrics text.
pub fn faults_applied(text: &str) -> BTreeMap<String, u64> {
    let mut faults = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("agent_faults_applied_total{kind=\"") else {
            continue;
        };
        let Some((kind, value)) = rest.split_once("\"} ") else {
            continue;
        };
        if let Ok(n) = value.trim().parse::<u64>() {
            *faults.entry(kind.to_string()).or_insert(0) += n;
        }
    }
    faults
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counts_read_back_from_the_text_are_the_counts_made() {
        let metrics = AgentMetrics::new();
        assert!(faults_applied(&metrics.encode()).is_empty());
        metrics.applied("signal-kill");
        metrics.applied("signal-kill");
        metrics.applied("cut-links");
        metrics.refused(tonic::Code::Unauthenticated);
        let read = faults_applied(&metrics.encode());
        let expected: BTreeMap<String, u64> =
            [("cut-links".to_string(), 1), ("signal-kill".to_string(), 2)].into();
        assert_eq!(read, expected, "{}", metrics.encode());
    }
}
