//! `/health`, `/ready`, `/metrics`.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use ferry_core::auth;

use crate::AppState;
use crate::access;
use crate::error::ApiError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
}

/// Live (200) as long as the process serves. Says "ok", or what is known
/// to be damaged in storage (found by reads and `fsck`, kept across
/// restarts), so a monitor can alert on it without taking the instance out
/// of rotation. Damage of blobs no live item references is forgotten here
/// (see [`current_damage`]), so deleting what needed them clears it.
async fn health(State(st): State<AppState>) -> String {
    let damaged = current_damage(&st).await;
    if damaged.is_empty() {
        return "ok\n".into();
    }
    let mut out = format!(
        "degraded: {} stored blobs are damaged; run `ferry fsck --repair`\n",
        damaged.len()
    );
    for d in damaged.iter().take(100) {
        let kind = match d.kind {
            ferry_core::DamageKind::Missing => "missing",
            ferry_core::DamageKind::Corrupt => "corrupt",
        };
        out.push_str(&format!("{kind} {}\n", d.digest));
    }
    out
}

/// The known damage worth reporting: blobs that some live item still
/// references. Damage of a blob nothing references any more (every item
/// that needed it deleted) is forgotten
/// ([`Ferry::forget_unreferenced_damage`]): no client can ask for it and
/// garbage collection removes it once its lease ends. The question is one
/// indexed look-up per feed and blob, for at most 1000 blobs per call
/// (those asked about longest ago first). Also sets the
/// `ferry_blobs_damaged` gauge.
///
/// [`Ferry::forget_unreferenced_damage`]: ferry_core::Ferry::forget_unreferenced_damage
pub(crate) async fn current_damage(st: &AppState) -> Vec<ferry_core::Damage> {
    if st.ferry.damaged().is_empty() {
        return Vec::new();
    }
    let feeds: Vec<_> = match st.ferry.feeds().await {
        Ok(f) => f.into_iter().map(|f| f.id).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list feeds to check damaged blobs' references");
            return st.ferry.damaged();
        }
    };
    let store = st.replicator.store().clone();
    st.ferry
        .forget_unreferenced_damage(|digest| {
            let (store, feeds) = (store.clone(), feeds.clone());
            async move { Ok(store.blob_referenced(&digest, &feeds).await?) }
        })
        .await;
    st.ferry.damaged()
}

/// How long `/ready` waits for the metadata store: less than the usual
/// probe timeouts (Kubernetes: 1 s), where a request waits up to the
/// pool's acquire timeout (5 s).
const READY_WAIT: std::time::Duration = std::time::Duration::from_millis(800);

/// Ready when the metadata store answers (within [`READY_WAIT`]) and the
/// blob store can be reached ([`ferry_store::BlobStore::ready`]: a bucket
/// answers).
async fn ready(State(st): State<AppState>) -> impl IntoResponse {
    let feeds = tokio::time::timeout(READY_WAIT, st.ferry.feeds())
        .await
        .unwrap_or_else(|_| {
            Err(ferry_core::CoreError::Unavailable(
                "no answer within 800 ms".into(),
            ))
        });
    if let Err(e) = feeds {
        tracing::warn!(error = %e, "not ready: metadata store");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the metadata database is unavailable\n".to_string(),
        );
    }
    match st.ferry.blob_store().ready().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: blob store");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: blob storage is unavailable\n".to_string(),
            )
        }
    }
}

/// Prometheus metrics. Their labels name private feeds and replications,
/// so they need a key that is not limited to some feeds (any permission),
/// unless the instance makes them public (`Config::metrics_public`); see
/// [`auth::authorize_metrics`].
///
/// They answer during an outage of the metadata database too: the store
/// gets [`ferry_core::STORE_CHECK_WAIT`] to answer, and while it does not,
/// a key verified recently ([`ferry_core::Ferry::authenticate_metrics`])
/// still opens them. `ferry_database_up` and `ferry_blob_store_up` (1 or 0)
/// say whether the metadata store and the blob store answer now; what
/// needs the database (damage references, peer gauges) keeps its last
/// values meanwhile.
async fn metrics(State(st): State<AppState>, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    let public = st.ferry.config().metrics_public;
    let database_up = st.ferry.metadata_reachable().await;
    if !public {
        let who = match access::presented_secret(&headers).map_err(ApiError::text)? {
            Some(secret) if !secret.is_empty() => Some(
                st.ferry
                    .authenticate_metrics(&secret, database_up)
                    .await
                    .map_err(ApiError::text)?,
            ),
            _ => None,
        };
        auth::authorize_metrics(who.as_ref(), public).map_err(ApiError::text)?;
    }
    let blob_store_up = matches!(
        tokio::time::timeout(ferry_core::STORE_CHECK_WAIT, st.ferry.blob_store().ready()).await,
        Ok(Ok(()))
    );
    metrics::gauge!("ferry_database_up").set(if database_up { 1.0 } else { 0.0 });
    metrics::gauge!("ferry_blob_store_up").set(if blob_store_up { 1.0 } else { 0.0 });
    // The per-peer gauges of incoming replications and the lag gauges of
    // replications are rendered from what is known now (a forgotten peer
    // or a deleted replication is gone at once), after the rest.
    let mut peers = String::new();
    if database_up {
        // Sets `ferry_blobs_damaged` (0 included) before rendering.
        current_damage(&st).await;
        peers = st.replicator.peer_metrics().await;
        peers.push_str(&st.replicator.lag_metrics().await);
    } else {
        // What is known in memory, without asking the store about
        // references (sets `ferry_blobs_damaged`).
        st.ferry.damaged();
    }
    let mut body = st.metrics.render();
    if !peers.is_empty() && !body.is_empty() && !body.ends_with('\n') {
        body.push('\n');
    }
    body.push_str(&peers);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body))
}
