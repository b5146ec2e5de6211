//! `strata run`: wires the Kafka loop ([`crate::kafka`]), the HTTP endpoints
//! ([`crate::http`]) and signals together. The Kafka loop runs on a thread of its own
//! (librdkafka and RocksDB block); HTTP runs on a small tokio runtime. SIGTERM or
//! SIGINT sets the shutdown flag: the loop finishes its batch, writes, publishes,
//! commits and leaves the group, then the HTTP server stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::cluster::SharedStatus;
use crate::config::Settings;
use crate::http::{serve, AppState};
use crate::kafka::{self, KafkaError};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Http(std::io::Error),
}

/// Run until SIGTERM/SIGINT, or until `shutdown` is set by the caller (tests).
pub fn run(settings: Arc<Settings>, shutdown: Arc<AtomicBool>) -> Result<(), ServiceError> {
    let metrics = Arc::new(Metrics::new());
    let status = SharedStatus::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("strata-http")
        .build()
        .map_err(ServiceError::Http)?;

    // Signals set the flag the Kafka loop checks between batches.
    {
        let shutdown = shutdown.clone();
        rt.spawn(async move {
            let term = async {
                #[cfg(unix)]
                {
                    let mut s =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .expect("install a SIGTERM handler");
                    s.recv().await;
                }
                #[cfg(not(unix))]
                std::future::pending::<()>().await;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term => {},
            }
            tracing::info!("Signal received: shutting down gracefully.");
            shutdown.store(true, Ordering::Relaxed);
        });
    }

    let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
    let state = AppState {
        settings: settings.clone(),
        metrics: metrics.clone(),
        status: status.clone(),
    };
    let listen = settings.raw.http.listen.clone();
    let http = rt.spawn(async move {
        serve(&listen, state, async {
            stopped.await.ok();
        })
        .await
    });
    // Fail fast when the port is taken (the server task ends at once).
    std::thread::sleep(std::time::Duration::from_millis(100));
    if http.is_finished() {
        return match rt.block_on(http) {
            Ok(Err(e)) => Err(ServiceError::Http(e)),
            _ => Err(ServiceError::Http(std::io::Error::other(
                "the HTTP server stopped",
            ))),
        };
    }

    let result = kafka::run(settings, status, metrics, shutdown);
    stop_http.send(()).ok();
    rt.block_on(http).ok();
    result.map_err(ServiceError::from)
}
