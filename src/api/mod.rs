//! The HTTP surface: where a request enters. Routing, CORS, request logging, and the fallbacks
//! that answer unknown paths honestly. Handlers live in `client/` and `server/` (one file per
//! spec area), and `admin/` (Synapse's admin API), and stay thin: parse, call a service,
//! answer.

pub mod admin;
pub mod client;
pub mod metrics;
pub mod ruma;
pub mod server;

use std::time::Instant;

use axum::{
    Router,
    extract::Request,
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use http::{HeaderValue, Method, StatusCode, header};

use crate::Error;
pub use ruma::State;

/// The whole application: every route, with CORS and logging around it (and the metrics'
/// timing when they are served).
pub fn router(state: State) -> Router {
    let mut router = admin::routes(server::routes(client::routes(Router::new())))
        .fallback(unrecognized)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(catch_panic));
    if state.config.metrics.is_some() {
        router = router.layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::record_request,
        ));
    }
    router
        .layer(middleware::from_fn(cors))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// A handler that panics answers 500 `M_UNKNOWN` (and the panic is logged): the connection is
/// never dropped without an answer.
async fn catch_panic(request: Request, next: Next) -> Response {
    use futures_util::FutureExt;
    let path = request.uri().path().to_owned();
    match std::panic::AssertUnwindSafe(next.run(request))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(%path, "a request handler panicked: {message}");
            Error::internal("The request could not be handled.").into_response()
        }
    }
}

async fn unrecognized(request: Request) -> Error {
    drain(request).await;
    Error::unrecognized(StatusCode::NOT_FOUND, "Unrecognized request.")
}

/// Reads a request's small body that no handler wants: left unread, it makes the HTTP server
/// close the connection after the answer, and a client reusing the connection for its next
/// request finds it dropped. A large body is left (the connection then closes).
async fn drain(request: Request) {
    use http_body_util::BodyExt;
    let _ = http_body_util::Limited::new(request.into_body(), 64 * 1024)
        .collect()
        .await;
}

async fn method_not_allowed(request: Request) -> Error {
    drain(request).await;
    Error::unrecognized(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed on this path.",
    )
}

/// The CORS headers the spec asks every endpoint to send, so web clients (Element Web, Cinny)
/// work from any origin; `OPTIONS` pre-flights are answered here, for every path.
async fn cors(request: Request, next: Next) -> Response {
    let mut response = if request.method() == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization"),
    );
    response
}

/// One log line per request: method, path (never the query string: it may hold an access
/// token), status and duration.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let micros = started.elapsed().as_micros() as u64;
    if response.status().is_server_error() {
        tracing::warn!(%method, %path, status, micros, "request");
    } else {
        tracing::debug!(%method, %path, status, micros, "request");
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::{Router, body::Body, middleware, routing::get};
    use tower::ServiceExt;

    /// A handler that panics gets an answer out all the same: 500 `M_UNKNOWN`, not a dropped
    /// connection.
    #[tokio::test]
    async fn a_panicking_handler_is_answered_500_m_unknown() {
        let app = Router::new()
            .route(
                "/boom",
                get(|| async {
                    panic!("a handler bug");
                    #[allow(unreachable_code)]
                    ""
                }),
            )
            .layer(middleware::from_fn(super::catch_panic));
        let response = app
            .oneshot(
                http::Request::builder()
                    .uri("/boom")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["errcode"], "M_UNKNOWN");
    }
}
