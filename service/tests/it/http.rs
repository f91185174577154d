//! Requests through the service's router in process (`tower::ServiceExt::oneshot`): no HTTP
//! client and no port, only the database behind it.

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// What the service answered.
pub struct Reply {
    /// The status code.
    pub status: StatusCode,
    /// The response headers (the consistency token, the serving node).
    pub headers: HeaderMap,
    /// The JSON body, or `Null` when the body is not JSON.
    pub body: Value,
}

/// A request with a JSON body given as text (so a test can send malformed JSON too) and extra
/// headers.
pub fn request(
    method: &str,
    uri: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Request<Body> {
    let mut request = Request::builder().method(method).uri(uri);
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
        .body(Body::from(body.unwrap_or_default().to_string()))
        .unwrap()
}

/// Sends one request through the router.
pub async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

/// Sends `method uri` with an optional JSON body and no extra headers; the status and the body.
pub async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let reply = send(app, request(method, uri, body, &[])).await;
    (reply.status, reply.body)
}
