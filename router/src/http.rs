//! The router's HTTP endpoint (`http_addr`, default 127.0.0.1:47294; off
//! when empty): `GET /metrics` (Prometheus text), `GET /api/status` (JSON:
//! STATUS and ROUTER_SHOW_WORKERS answers plus recent failures), `GET /`
//! (a self-contained dashboard page that refreshes itself). Served from a
//! thread of its own, from snapshots the poll loop refreshes every tick —
//! the router's state is never touched from here.

use std::sync::{Arc, Mutex};

/// What the HTTP thread serves.
#[derive(Default, Clone)]
pub struct Snapshot {
    pub metrics: String,
    pub status_json: String,
}

pub type SharedSnapshot = Arc<Mutex<Snapshot>>;

const DASHBOARD: &str = include_str!("dashboard.html");

/// Binds `addr` and serves from `snapshot` on a new thread.
pub fn spawn(addr: &str, snapshot: SharedSnapshot) -> Result<String, String> {
    let server = tiny_http::Server::http(addr).map_err(|e| format!("cannot bind http_addr {addr}: {e}"))?;
    let bound = server.server_addr().to_string();
    std::thread::Builder::new()
        .name("emq-http".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let snap = snapshot.lock().map(|s| s.clone()).unwrap_or_default();
                let path = request.url().split('?').next().unwrap_or("/").to_owned();
                let (body, content_type, code) = match path.as_str() {
                    "/metrics" => (snap.metrics, "text/plain; version=0.0.4; charset=utf-8", 200),
                    "/api/status" => (snap.status_json, "application/json", 200),
                    "/" | "/index.html" => (DASHBOARD.to_owned(), "text/html; charset=utf-8", 200),
                    _ => ("not found\n".to_owned(), "text/plain", 404),
                };
                let header = tiny_http::Header::from_bytes("Content-Type", content_type).expect("valid header");
                let _ =
                    request.respond(tiny_http::Response::from_string(body).with_header(header).with_status_code(code));
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(bound)
}
