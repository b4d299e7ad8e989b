//! In-process test harness: a real instance (SQLite + blob folder in a temp
//! dir) behind the real router, driven with `oneshot` requests.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode, header};
use ferry_core::Ferry;
use ferry_store::{FsBlobStore, Permission, SqliteStore};
use ferry_types::{FeedName, FeedType};
use http_body_util::BodyExt;
use tower::ServiceExt;

pub const ADMIN: &str = "test-admin-key";

/// The peer address every in-process request comes from.
pub const CLIENT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)), 40711);

pub struct Instance {
    pub ferry: Ferry,
    pub router: Router,
    pub dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Instance {
    /// Creates an incoming replication over `feeds` in `mode` and returns
    /// a new sync token for it.
    pub async fn incoming(&self, name: &str, feeds: &[&str], mode: &str) -> String {
        let body = serde_json::json!({ "name": name, "feeds": feeds, "mode": mode }).to_string();
        let r = self
            .send(
                "POST",
                "/api/v1/replications",
                Some(ADMIN),
                &[("content-type", "application/json")],
                body,
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let path = format!("/api/v1/replications/{name}/tokens");
        let r = self.send("POST", &path, Some(ADMIN), &[], Body::empty()).await;
        r.json()["token"].as_str().unwrap().to_string()
    }

    pub async fn new() -> Self {
        Self::with_config(ferry_core::Config::default()).await
    }

    pub async fn with_config(cfg: ferry_core::Config) -> Self {
        Self::open_in(tempfile::tempdir().unwrap(), cfg).await
    }

    async fn open_in(dir: tempfile::TempDir, cfg: ferry_core::Config) -> Self {
        let meta = SqliteStore::open(dir.path().join("ferry.db")).await.unwrap();
        let blobs = FsBlobStore::open(dir.path().join("blobs")).await.unwrap();
        let meta = Arc::new(meta);
        let ferry = Ferry::open(meta.clone(), Arc::new(blobs), cfg).await.unwrap();
        ferry.set_admin_key(ADMIN).await.unwrap();
        let replicator = ferry_replication::Replicator::new(ferry.clone(), meta);
        // As served: every request comes from a known client address.
        let router = ferry_server::router(ferry.clone(), replicator)
            .into_router()
            .layer(MockConnectInfo(CLIENT));
        Self { ferry, router, dir }
    }

    /// The same data directory opened again by a new instance (as after
    /// a restart); this one is closed.
    pub async fn reopen(self) -> Self {
        let Instance { ferry, router, dir } = self;
        drop(router);
        let cfg = ferry.config().clone();
        drop(ferry);
        Self::open_in(dir, cfg).await
    }

    pub async fn feed(&self, name: &str, ty: FeedType, private: bool) {
        self.ferry
            .create_feed(&FeedName::new(name).unwrap(), ty, private)
            .await
            .unwrap();
    }

    pub async fn key(&self, name: &str, p: Permission, feeds: Option<&[&str]>) -> String {
        let feeds = feeds.map(|f| f.iter().map(|n| FeedName::new(*n).unwrap()).collect());
        self.ferry.create_key(name, p, feeds).await.unwrap().1
    }

    /// Sends one request. `key`: sent as a bearer token when given.
    pub async fn send(
        &self,
        method: &str,
        uri: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(k) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let resp = self
            .router
            .clone()
            .oneshot(req.body(body.into()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Serves this instance's router on a TCP port of 127.0.0.1 (for another
    /// in-process instance to replicate with); returns its URL.
    pub async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = self.router.clone();
        tokio::spawn(async move {
            axum::serve(listener, router).await.ok();
        });
        url
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.send("GET", uri, None, &[], Body::empty()).await
    }

    /// Files left in the blob staging area (must be none after any request).
    pub fn staging_files(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("blobs/staging"))
            .unwrap()
            .count()
    }

    /// Files in the blob tree (`blobs/sha256/XX/HEX`): what was placed.
    #[allow(dead_code)]
    pub fn blob_files(&self) -> usize {
        let Ok(dirs) = std::fs::read_dir(self.dir.path().join("blobs/sha256")) else {
            return 0;
        };
        dirs.map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
            .sum()
    }
}
