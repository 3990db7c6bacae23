//! Health, readiness, metrics and the session admin API (the admin listener).

use crate::http::body::RequestBody;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::json;

use crate::app::App;
use crate::http::body::{self, Body};

/// The Prometheus text format as prometheus-client writes it (OpenMetrics).
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Answers one request on the admin listener.
///
/// - `GET /healthz`: 200 `{"status":"ok"}` while the process serves.
/// - `GET /readyz`: 200 `{"status":"ready"}` when sign-in's dependencies
///   (the session store) answer, else 503 `{"status":"unavailable"}`; also
///   503, with a `reason`, while an `https://` `sign_in.adopt.jwks` has
///   never been fetched.
/// - `GET /metrics`: every registered metric.
/// - `/admin/...`: the session admin API, handled by sign-in.
pub async fn handle(app: &App, req: Request<RequestBody>) -> Response<Body> {
    let path = req.uri().path();
    if path == "/admin" || path.starts_with("/admin/") {
        return app.sign_in.admin(req).await;
    }
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match path {
        "/healthz" | "/readyz" | "/metrics" if !get => {
            let mut res = body::json_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            res
        }
        "/healthz" => body::json(StatusCode::OK, &json!({ "status": "ok" })),
        "/readyz" => {
            if let Some(reason) = app.not_ready() {
                body::json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({ "status": "unavailable", "reason": reason }),
                )
            } else if app.sign_in.ready().await {
                body::json(StatusCode::OK, &json!({ "status": "ready" }))
            } else {
                body::json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({ "status": "unavailable" }),
                )
            }
        }
        "/metrics" => {
            let mut res = Response::new(body::full(app.metrics.encode()));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(METRICS_CONTENT_TYPE),
            );
            res
        }
        _ => body::json_error(StatusCode::NOT_FOUND, "Not found"),
    }
}
