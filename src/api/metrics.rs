//! The metrics listener (`GET /metrics`, Prometheus' text format) and the layer that times
//! every request of the main listener. Both exist only when `[global.metrics]` is set: the
//! metrics are served on their own address, never on the public port.

use std::{
    sync::{Arc, Weak},
    time::Instant,
};

use axum::{
    Router,
    extract::{MatchedPath, Request},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use http::{Method, StatusCode, header};

use crate::service::{Services, metrics::Endpoint};

/// Times a request and counts it under its route template (a path that matched no route
/// counts as `unmatched`: its text may hold anything).
pub async fn record_request(
    axum::extract::State(services): axum::extract::State<super::State>,
    request: Request,
    next: Next,
) -> Response {
    let endpoint = match request.extensions().get::<MatchedPath>() {
        Some(path) => Endpoint(Arc::from(path.as_str())),
        None => Endpoint(Arc::from("unmatched")),
    };
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    services.metrics.request(
        endpoint,
        method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The metrics listener's routes. It holds the services weakly: a stopped server's database
/// closes whatever a scraper does.
pub fn router(services: Weak<Services>) -> Router {
    Router::new()
        .route("/metrics", get(move || metrics(services.clone())))
        .fallback(|| async { StatusCode::NOT_FOUND })
}

async fn metrics(services: Weak<Services>) -> Response {
    let Some(services) = services.upgrade() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    // Reading the database's figures and counting queues touches the disk: off the runtime.
    match tokio::task::spawn_blocking(move || services.render_metrics()).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
