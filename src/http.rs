//! The operations endpoints (SPEC §7), served on `[http] listen`:
//!
//! - `GET /metrics`: Prometheus text format;
//! - `GET /healthz`: 200 while the process runs;
//! - `GET /readyz`: 200 when consuming and no assigned partition is restoring; else
//!   503 with a JSON body naming the partitions that are not ready;
//! - `GET /v1/customers/{id}`: the state-dump object (SPEC §6) of a customer in one
//!   of this instance's partitions, evaluated at the stored clock over this
//!   instance's partitions. A customer whose partition (Kafka's default murmur2
//!   partitioner over the id) another instance owns gets `307 Temporary Redirect` to
//!   that instance's advertised address (announced on the stats topic), with the
//!   owner in the JSON body too; strata does not proxy. 404 when the customer's
//!   partition is ours and the customer unknown; 503 while the partition restores or
//!   its owner is not known yet (during a rebalance).
//!   With `[http] token` set, `/v1/*` needs `Authorization: Bearer <token>` (401).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::config::Settings;
use crate::dump;
use crate::kafka::SharedStatus;
use crate::store::Union;
use crate::telemetry::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    pub status: SharedStatus,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/customers/{id}", get(customer))
        .with_state(state)
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    let st = s.status.lock().unwrap();
    let ready = st.running && st.restoring.is_empty();
    let body = json!({
        "ready": ready,
        "consuming": st.running,
        "assigned": st.assigned,
        "restoring": st.restoring,
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

fn authorised(s: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = &s.settings.raw.http.token else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Constant-time comparison: the token must not leak through timing.
    given.is_some_and(|g| {
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

async fn customer(
    State(s): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if !authorised(&s, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "missing or wrong bearer token"})),
        )
            .into_response();
    }
    let (stores, owned, route) = {
        let st = s.status.lock().unwrap();
        let route = (st.partitions > 0).then(|| {
            let p = crate::kafka::partition_of(id.as_bytes(), st.partitions);
            (p, st.restoring.contains(&p), st.owners.get(&p).cloned())
        });
        (
            st.stores.values().cloned().collect::<Vec<_>>(),
            st.assigned.iter().copied().collect::<Vec<_>>(),
            route,
        )
    };
    let settings = s.settings.clone();
    let me = &s.settings.advertised_address;
    let result = tokio::task::spawn_blocking(move || -> Result<_, crate::store::StoreError> {
        let Some(day) = dump::latest_clock(&stores)? else {
            return Ok(None);
        };
        let union = Union(stores);
        dump::get(&union, &settings, &id, day)
    })
    .await;
    match result {
        Ok(Ok(Some(r))) => Json(r).into_response(),
        Ok(Ok(None)) => match route {
            Some((p, _, _)) if owned.contains(&p) => (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "unknown customer", "partition": p})),
            )
                .into_response(),
            Some((p, true, _)) => unavailable(p, "the customer's partition is restoring here"),
            Some((p, false, Some(owner))) if owner != *me => {
                let location = format!("{owner}{}", uri.path());
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, location.clone())],
                    Json(json!({
                        "error": "another instance owns the customer's partition",
                        "partition": p,
                        "owner": owner,
                        "location": location,
                    })),
                )
                    .into_response()
            }
            Some((p, false, _)) => unavailable(
                p,
                "the owner of the customer's partition is not known yet (rebalancing); retry",
            ),
            None => (
                StatusCode::NOT_FOUND,
                Json(json!({
                    "error": "customer not found in this instance's partitions",
                    "partitions": owned,
                })),
            )
                .into_response(),
        },
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

fn unavailable(partition: i32, why: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        Json(json!({"error": why, "partition": partition})),
    )
        .into_response()
}

/// Serve until `shutdown` resolves. Binding errors are returned at once.
pub async fn serve(
    listen: &str,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {listen} (http.listen): {e}"),
        )
    })?;
    tracing::info!(address = %listener.local_addr()?, "Serving /metrics, /healthz, /readyz, /v1/customers/{{id}}.");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
