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
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::audience::{self, Cursor, Filter, Tally};
use crate::cluster::SharedStatus;
use crate::config::Settings;
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
        .route("/v1/segments", get(segments))
        .route("/v1/segments/{dimension}/{tier}/customers", get(export))
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
    let ready = st.ready();
    let body = json!({
        "ready": ready,
        "consuming": st.running,
        "assigned": st.assigned,
        "restoring": st.restoring,
        "blocked": st.blocked,
        "delivering": !st.delivery_stalled,
        "broker_reachable": !st.broker_unreachable,
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
    // One read of the customer in its partition's store (the only store that can
    // hold them), evaluated against that partition's thresholds in force.
    let (store, owned, route) = {
        let st = s.status.lock().unwrap();
        let route = (st.partitions > 0).then(|| {
            let p = crate::cluster::partition_of(id.as_bytes(), st.partitions);
            (p, st.restoring.contains(&p), st.owners.get(&p).cloned())
        });
        let store = match route {
            Some((p, _, _)) => st.stores.get(&p).cloned(),
            // No partitioning (`demo --serve`): its one store.
            None => st.stores.values().next().cloned(),
        };
        (
            store,
            st.assigned.iter().copied().collect::<Vec<_>>(),
            route,
        )
    };
    let settings = s.settings.clone();
    let me = &s.settings.advertised_address;
    let result = tokio::task::spawn_blocking(move || -> Result<_, crate::store::StoreError> {
        match store {
            Some(store) => audience::get_in_force(&store, &settings, &id),
            None => Ok(None),
        }
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

fn unauthorised() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({"error": "missing or wrong bearer token"})),
    )
        .into_response()
}

fn bad_request(why: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": why}))).into_response()
}

fn internal(why: String) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": why})),
    )
        .into_response()
}

/// `GET /v1/segments`: the whole cluster's segment summary, merged from the
/// partitions' summaries on the stats topic (each counted every
/// `kafka.segments_interval_ms` by the partition's owner); `coverage` says which
/// partitions are in it and how old the oldest count is. Without partitioning
/// (`demo --serve`) the one store is counted on the spot.
async fn segments(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if !authorised(&s, &headers) {
        return unauthorised();
    }
    let (partitions, summaries, stores) = {
        let st = s.status.lock().unwrap();
        (
            st.partitions,
            st.segments.clone(),
            st.stores.values().cloned().collect::<Vec<_>>(),
        )
    };
    if partitions == 0 {
        let settings = s.settings.clone();
        let counted = tokio::task::spawn_blocking(move || {
            let mut tally = Tally::default();
            let mut as_of = None;
            for store in &stores {
                if let Some((d, t)) = audience::summarize_in_force(store, &settings)? {
                    tally.merge(&t);
                    as_of = as_of.max(Some(d));
                }
            }
            Ok::<_, crate::store::StoreError>((as_of, tally))
        })
        .await;
        return match counted {
            Ok(Ok((as_of, tally))) => Json(tally.to_json(as_of)).into_response(),
            Ok(Err(e)) => internal(e.to_string()),
            Err(e) => internal(e.to_string()),
        };
    }
    let mut tally = Tally::default();
    let (mut as_of, mut oldest_as_of, mut oldest_counted) = (None, None, None);
    let mut missing = Vec::new();
    for p in 0..partitions {
        match summaries.get(&p) {
            Some(sum) => {
                tally.merge(&sum.tally);
                as_of = as_of.max(Some(sum.as_of));
                oldest_as_of = Some(oldest_as_of.map_or(sum.as_of, |d: i32| d.min(sum.as_of)));
                oldest_counted = Some(
                    oldest_counted.map_or(sum.counted_at_ms, |t: i64| t.min(sum.counted_at_ms)),
                );
            }
            None => missing.push(p),
        }
    }
    let mut body = tally.to_json(as_of);
    body["coverage"] = json!({
        "partitions": partitions,
        "missing": missing,
        "oldest_as_of": oldest_as_of.map(crate::day::format_day),
        "oldest_counted_at_ms": oldest_counted,
        "age_ms": oldest_counted.map(|t| crate::day::now_millis() - t),
    });
    Json(body).into_response()
}

#[derive(serde::Deserialize)]
struct ExportQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// Most customers one export page lists.
const EXPORT_MAX_LIMIT: usize = 10_000;

/// `GET /v1/segments/{dimension}/{tier}/customers?limit=N&cursor=C`: one page of
/// the customers of a tier on this instance's partitions, as the engine sees them
/// (dump objects), in partition then id order; `next_cursor` continues it (`null`
/// after the last); `partitions` lists the partitions covered, so a client visits
/// every instance to list the cluster's.
async fn export(
    State(s): State<AppState>,
    Path((dimension, tier)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<ExportQuery>,
    headers: HeaderMap,
) -> Response {
    if !authorised(&s, &headers) {
        return unauthorised();
    }
    let filter = match Filter::new(&dimension, &tier) {
        Ok(f) => f,
        Err(e) => return bad_request(e),
    };
    let limit = q.limit.unwrap_or(1_000);
    if limit == 0 || limit > EXPORT_MAX_LIMIT {
        return bad_request(format!("limit must be 1..={EXPORT_MAX_LIMIT}, got {limit}"));
    }
    let cursor = match q.cursor.as_deref().map(|c| Cursor::decode(c).ok_or(c)) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(c)) => {
            return bad_request(format!("cursor {c:?} is not one this endpoint returned"))
        }
    };
    let stores: Vec<(i32, _)> = {
        let st = s.status.lock().unwrap();
        st.stores
            .iter()
            .filter(|(p, _)| !st.restoring.contains(p))
            .map(|(p, store)| (*p, store.clone()))
            .collect()
    };
    let partitions: Vec<i32> = stores.iter().map(|(p, _)| *p).collect();
    let settings = s.settings.clone();
    let page = tokio::task::spawn_blocking(move || {
        audience::page(&stores, &settings, &filter, cursor.as_ref(), limit)
    })
    .await;
    match page {
        Ok(Ok(page)) => Json(json!({
            "dimension": dimension,
            "tier": tier,
            "partitions": partitions,
            "customers": page.customers,
            "next_cursor": page.next.map(|c| c.encode()),
        }))
        .into_response(),
        Ok(Err(e)) => internal(e.to_string()),
        Err(e) => internal(e.to_string()),
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

/// What one client may take of the server (`[http]`): a slow or flooding client
/// must not hold the service or delay its shutdown.
#[derive(Clone, Copy)]
struct Limits {
    header_read_timeout: Duration,
    request_timeout: Duration,
    max_connections: usize,
    max_path_bytes: usize,
}

impl Limits {
    fn of(h: &crate::config::HttpConfig) -> Limits {
        Limits {
            header_read_timeout: Duration::from_millis(h.header_read_timeout_ms),
            request_timeout: Duration::from_millis(h.request_timeout_ms),
            max_connections: h.max_connections,
            max_path_bytes: h.max_path_bytes,
        }
    }
}

/// Paths beyond the cap get 414 before any routing; a request not answered in time
/// gets 503 (its blocking work, if any, finishes on its own thread).
async fn limit(
    State(l): State<Limits>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if req.uri().path().len() > l.max_path_bytes {
        return (
            StatusCode::URI_TOO_LONG,
            Json(json!({"error": format!("the path is longer than {} bytes (http.max_path_bytes)", l.max_path_bytes)})),
        )
            .into_response();
    }
    match tokio::time::timeout(l.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(json!({"error": "the request timed out (http.request_timeout_ms)"})),
        )
            .into_response(),
    }
}

/// How long requests in hand may finish at shutdown; connections still open then
/// are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Answers to connections over the cap being written at once; beyond them a
/// connection is closed without one (a flood must not pile up tasks either).
const REFUSALS: usize = 64;

/// Answer a connection over the cap (503) and close it, without waiting for it.
fn refuse(mut stream: tokio::net::TcpStream, refusals: &Arc<tokio::sync::Semaphore>) {
    use tokio::io::AsyncWriteExt;
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return; // dropped: closed at once
    };
    tokio::spawn(async move {
        let _permit = permit;
        let body = r#"{"error":"too many connections (http.max_connections)"}"#;
        let head = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let write = async {
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body.as_bytes()).await?;
            stream.shutdown().await
        };
        tokio::time::timeout(Duration::from_secs(1), write)
            .await
            .ok();
    });
}

/// Serve until `shutdown` resolves. Binding errors are returned at once.
///
/// Each connection serves one request (no keep-alive: nothing waits idle for a
/// next request) whose header must arrive within `http.header_read_timeout_ms`; at
/// most `http.max_connections` are served at once (more are answered 503 and
/// closed). At shutdown the listener closes at once, requests in hand get up to
/// 2 s to finish, and whatever is still open then is dropped.
pub async fn serve(
    listen: &str,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower_service::Service;

    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {listen} (http.listen): {e}"),
        )
    })?;
    tracing::info!(address = %listener.local_addr()?, "Serving /metrics, /healthz, /readyz, /v1/customers/{{id}}.");
    let limits = Limits::of(&state.settings.raw.http);
    let metrics = state.metrics.clone();
    let app = router(state).layer(axum::middleware::from_fn_with_state(limits, limit));
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let refusals = Arc::new(tokio::sync::Semaphore::new(REFUSALS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, a reset before accept: go on.
                    tracing::warn!(error = %e, "Could not accept an HTTP connection.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.http_connections_rejected.inc();
            refuse(stream, &refusals);
            continue;
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |req| app.clone().call(req));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(false)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            conn.await.ok();
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(
        SHUTDOWN_GRACE.min(limits.request_timeout),
        graceful.shutdown(),
    )
    .await
    .is_err()
    {
        tracing::warn!("HTTP connections still open at shutdown were dropped.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_service::Service;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_millis(50),
            max_connections: 4,
            max_path_bytes: 64,
        }
    }

    async fn status_of(app: &mut Router, path: &str) -> StatusCode {
        let req = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        app.call(req).await.unwrap().status()
    }

    /// A handler slower than `http.request_timeout_ms` is answered 503; a path over
    /// `http.max_path_bytes` 414, before any handler runs.
    #[tokio::test]
    async fn slow_requests_time_out_and_long_paths_are_refused() {
        let mut app = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    "late"
                }),
            )
            .route("/fast", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(limits(), limit));
        assert_eq!(status_of(&mut app, "/fast").await, StatusCode::OK);
        let t0 = std::time::Instant::now();
        assert_eq!(
            status_of(&mut app, "/slow").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(
            t0.elapsed() < Duration::from_millis(400),
            "answered at the timeout"
        );
        let long = format!("/fast/{}", "x".repeat(64));
        assert_eq!(status_of(&mut app, &long).await, StatusCode::URI_TOO_LONG);
    }
}
