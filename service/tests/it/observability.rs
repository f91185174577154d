//! What an operator sees: one structured log line per request (route, status, latency), and
//! `/metrics` in the Prometheus/OpenMetrics text format, with counters that move with requests;
//! never a password or a consistency token in a log line.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::common::TempPostgres;
use crate::http::{request, send};

/// Log output captured in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
            .collect()
    }
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// The samples of an OpenMetrics text, each line checked against the format: `# HELP`, `# TYPE`
/// and `# EOF` comments, or `name{label="value",...} number`.
fn samples(text: &str) -> Vec<(String, f64)> {
    assert!(text.ends_with("# EOF\n"), "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
            let name_end = series.find('{').unwrap_or(series.len());
            let name = &series[..name_end];
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name in {line}"
            );
            if name_end < series.len() {
                assert!(series.ends_with('}'), "{line}");
                for pair in series[name_end + 1..series.len() - 1].split(',') {
                    let (key, value) = pair.split_once('=').unwrap_or_else(|| panic!("{line}"));
                    assert!(
                        !key.is_empty() && value.starts_with('"') && value.ends_with('"'),
                        "{line}"
                    );
                }
            }
            (
                series.to_string(),
                value.parse::<f64>().unwrap_or_else(|_| panic!("{line}")),
            )
        })
        .collect()
}

fn value(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .map_or(0.0, |(_, v)| *v)
}

/// `GET /metrics`: its status and content type checked, its text.
async fn metrics_text(app: &axum::Router) -> String {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let response = app
        .clone()
        .oneshot(request("GET", "/metrics", None, &[]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn each_request_is_one_log_line_and_a_counter_that_moves() {
    let _one = crate::one_at_a_time().await;
    let Some(pg) = TempPostgres::start("observability") else {
        return;
    };
    // Trust authentication ignores the password, so it can be one no log line may show.
    let url = pg.url().replace("postgres@", "postgres:hunter2-secret@");
    let pool = quorumlab_service::connect(&url, 5).await.unwrap();
    let app = quorumlab_service::router(quorumlab_service::routing::Db::primary_only(pool));
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let body = json!({"name": "Ada", "email": "ada@example.org"}).to_string();
    let created = send(&app, request("POST", "/users", Some(&body), &[])).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.body["id"].as_i64().unwrap();
    let token = created.headers["x-consistency-token"]
        .to_str()
        .unwrap()
        .to_string();
    let read = send(
        &app,
        request(
            "GET",
            &format!("/users/{id}"),
            None,
            &[("x-consistency-token", &token)],
        ),
    )
    .await;
    assert_eq!(read.status, StatusCode::OK);

    let answered: Vec<Value> = logs
        .lines()
        .into_iter()
        .filter(|l| l["fields"]["message"] == "answered")
        .collect();
    assert_eq!(answered.len(), 2, "one line per request: {}", logs.text());
    let post = &answered[0];
    assert_eq!(post["span"]["route"], "/users", "{post}");
    assert_eq!(post["span"]["method"], "POST", "{post}");
    assert_eq!(post["fields"]["status"], 201, "{post}");
    assert!(
        post["fields"]["latency_ms"].as_f64().unwrap() > 0.0,
        "{post}"
    );
    // The pattern, not the path: ids do not become routes.
    assert_eq!(
        answered[1]["span"]["route"], "/users/{id}",
        "{}",
        answered[1]
    );

    let before = samples(&metrics_text(&app).await);
    let posts = r#"http_requests_total{method="POST",route="/users",status="201"}"#;
    assert_eq!(value(&before, posts), 1.0, "{before:?}");
    assert_eq!(
        value(
            &before,
            r#"token_waits_total{outcome="primary_no_replica"}"#
        ),
        1.0,
        "{before:?}"
    );
    assert!(
        before
            .iter()
            .any(|(s, v)| s.starts_with("reads_total{node=") && *v == 1.0),
        "{before:?}"
    );
    assert!(
        before
            .iter()
            .any(|(s, _)| s.starts_with("http_request_duration_seconds_bucket{")),
        "{before:?}"
    );
    let body = json!({"name": "Bo", "email": "bo@example.org"}).to_string();
    send(&app, request("POST", "/users", Some(&body), &[])).await;
    let after = samples(&metrics_text(&app).await);
    assert_eq!(value(&after, posts), 2.0, "{after:?}");

    let all = logs.text();
    assert!(
        !all.contains("hunter2-secret"),
        "a password in the logs: {all}"
    );
    assert!(!all.contains(&token), "a token in the logs: {all}");
}
