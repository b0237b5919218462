//! The router's HTTP endpoint (`http_addr`, default 127.0.0.1:47294; off
//! when empty): `GET /metrics` (Prometheus text), `GET /api/status` (JSON:
//! STATUS and ROUTER_SHOW_WORKERS answers, recent failures, dead letters,
//! schedules, the last hour's series), `GET /` (a self-contained dashboard
//! page that refreshes itself), `GET /health` (200 with the role on the
//! router that serves, 503 on a standby: what a load balancer checks). Served from a thread of its own, from
//! snapshots the poll loop refreshes at most once a second — the router's
//! state is never touched from here.
//!
//! What needs the router itself goes through its admin socket, exactly as
//! `emq-cli` does (same authentication, same checks, same journal):
//! `GET /api/job/MSGID` (JOB_STATUS; with the admin token, results and
//! tracebacks) and `POST /api/action` (`{"action": "cancel" | "requeue" |
//! "delete_dead" | "pause" | "resume" | "purge", "target": ...}`), which
//! needs `Authorization: Bearer <admin token>` — a header, so another site's
//! form cannot post one. Off when the admin socket is CURVE-only.

use emq_protocol::{AdminCommand, Command, Message, Reply};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the HTTP thread serves from the router's snapshots.
#[derive(Default, Clone)]
pub struct Snapshot {
    pub metrics: String,
    pub status_json: String,
    /// `GET /health`: the status code and JSON body (200 on the router that
    /// serves — the leader, or a router without a shared journal; 503 on a
    /// standby or while starting).
    pub health: (u16, String),
}

/// What the poll loop shares with the HTTP threads: the snapshot, and the
/// event window while this router serves.
#[derive(Default)]
pub struct Shared {
    snap: Mutex<Snapshot>,
    events: Mutex<Option<Arc<crate::events::EventWindow>>>,
}

impl Shared {
    pub fn lock(&self) -> std::sync::LockResult<std::sync::MutexGuard<'_, Snapshot>> {
        self.snap.lock()
    }

    /// The event window readers read (None on a standby).
    pub fn events(&self) -> Option<Arc<crate::events::EventWindow>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_events(&self, w: Option<Arc<crate::events::EventWindow>>) {
        *self.events.lock().unwrap_or_else(|p| p.into_inner()) = w;
    }
}

pub type SharedSnapshot = Arc<Shared>;

const DASHBOARD: &str = include_str!("dashboard.html");

/// Largest POST body read.
const MAX_BODY: usize = 16 << 10;

/// An address to connect to from this host for one bound as `addr`.
fn connectable(addr: &str) -> String {
    addr.replace("://*:", "://127.0.0.1:").replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
}

/// The endpoint of `settings.http_addr` (None when empty): the dashboard's
/// routes and the HTTP API v1, reaching the router through `admin_addr`
/// and the frontend — not when those take only CURVE clients (the server
/// has no key).
pub fn spawn_for(settings: &crate::RouterSettings, admin_addr: &str) -> Result<Option<SharedSnapshot>, String> {
    let addr = settings.http_addr.trim();
    if addr.is_empty() {
        return Ok(None);
    }
    let curve = !settings.curve_secret_key.trim().is_empty();
    let admin_curve = curve && !settings.curve_admin_keys.trim().is_empty();
    let frontend_curve = curve && !settings.curve_frontend_keys.trim().is_empty();
    let data_dir = settings.journal_options(false).map_err(|e| e.to_string())?.dir;
    let cfg = crate::api::ApiConfig {
        admin_addr: (!admin_curve).then(|| connectable(admin_addr)),
        frontend_addr: (!frontend_curve).then(|| connectable(&settings.frontend_addr)),
        data_dir,
        max_connections: settings.http_max_connections,
        idempotency_ttl: settings.idempotency_ttl,
    };
    let snap = SharedSnapshot::default();
    let listener = std::net::TcpListener::bind(addr).map_err(|e| format!("cannot bind http_addr {addr}: {e}"))?;
    let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    crate::api::serve(listener, snap.clone(), cfg).map_err(|e| e.to_string())?;
    tracing::info!(http = %bound, "HTTP API, health, dashboard and metrics");
    Ok(Some(snap))
}

/// The dashboard's routes (everything but `/v1/` and `/openapi.json`).
pub fn dashboard_route(
    req: &crate::api::Request,
    shared: &SharedSnapshot,
    admin: Option<&str>,
) -> crate::api::Response {
    use crate::api::Response;
    let snap = || shared.lock().map(|s| s.clone()).unwrap_or_default();
    let text = |body: String, content_type: &'static str, status: u16| Response {
        status,
        content_type,
        body: body.into_bytes(),
        headers: Vec::new(),
    };
    let token = req.header("authorization").and_then(bearer_token);
    let (body, content_type, code) = match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/metrics") => (snap().metrics, "text/plain; version=0.0.4; charset=utf-8", 200),
        ("GET", "/health") => {
            let (code, body) = snap().health;
            match code {
                0 => (r#"{"role":"starting","status":"starting"}"#.to_owned(), "application/json", 503),
                c => (body, "application/json", c),
            }
        }
        ("GET", "/api/status") => (snap().status_json, "application/json", 200),
        ("GET", "/" | "/index.html") => (DASHBOARD.to_owned(), "text/html; charset=utf-8", 200),
        ("GET", p) if p.starts_with("/api/job/") => {
            let msgid = percent_decode(&p["/api/job/".len()..]);
            let cmd = Command::Admin(AdminCommand::JobStatus { job_msgid: msgid, owner_token: None });
            let ctx = zmq::Context::new();
            json_answer(proxy(&ctx, admin, token.as_deref(), cmd))
        }
        ("POST", "/api/action") => {
            let raw = String::from_utf8_lossy(&req.body[..req.body.len().min(MAX_BODY)]).into_owned();
            match token {
                None => json_answer(Err((
                    401,
                    "the admin token is needed (Authorization: Bearer <token>, from data_dir/admin.token)".into(),
                ))),
                Some(t) => match action(&raw) {
                    Ok(cmd) => {
                        let ctx = zmq::Context::new();
                        json_answer(proxy(&ctx, admin, Some(&t), cmd))
                    }
                    Err(e) => json_answer(Err((400, e))),
                },
            }
        }
        _ => ("not found\n".to_owned(), "text/plain", 404),
    };
    text(body, content_type, code)
}

/// `%XX` escapes for a path segment (an id in a `Location`).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The token of an `Authorization` value `Bearer TOKEN`; the scheme is
/// case-insensitive (RFC 9110 §11.1), so `bearer` and `BEARER` work too.
pub fn bearer_token(value: &str) -> Option<String> {
    let (scheme, token) = value.trim().split_once(char::is_whitespace)?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= 256).then(|| token.to_owned())
}

/// A dashboard action as an admin command.
pub fn action(body: &str) -> Result<Command, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let target = v["target"].as_str().filter(|t| !t.is_empty() && t.len() <= 512).ok_or("no \"target\"")?.to_owned();
    let cmd = match v["action"].as_str().unwrap_or("") {
        "cancel" => AdminCommand::Cancel { job_msgid: target },
        "requeue" => AdminCommand::Requeue { job_msgid: target },
        "delete_dead" => AdminCommand::DeleteDead { job_msgid: target },
        "pause" => AdminCommand::Pause { queue: target },
        "resume" => AdminCommand::Resume { queue: target },
        "purge" => AdminCommand::Purge { queue: target },
        other => return Err(format!("unknown action {other:?}")),
    };
    Ok(Command::Admin(cmd))
}

type Proxied = Result<String, (u16, String)>;

/// One admin command through the router's admin socket (authenticated
/// first when a token is given); its JSON answer.
fn proxy(ctx: &zmq::Context, admin: Option<&str>, token: Option<&str>, cmd: Command) -> Proxied {
    let Some(addr) = admin else {
        return Err((503, "not available: the admin socket is CURVE-only; use emq-cli with a key".into()));
    };
    let unavailable = |e: zmq::Error| (503, format!("admin socket: {e}"));
    let s = ctx.socket(zmq::DEALER).map_err(unavailable)?;
    s.set_identity(format!("http:{}", emq_protocol::new_msgid()).as_bytes()).map_err(unavailable)?;
    s.set_linger(0).map_err(unavailable)?;
    s.connect(addr).map_err(unavailable)?;
    let end = Instant::now() + Duration::from_secs(5);
    let ask = |c: Command| -> Proxied {
        let m = Message::with_msgid(format!("admin:{}", emq_protocol::new_msgid()), c);
        s.send_multipart(m.to_frames(), 0).map_err(unavailable)?;
        loop {
            let left = end.saturating_duration_since(Instant::now()).as_millis() as i64;
            if left == 0 || s.poll(zmq::POLLIN, left).map_err(unavailable)? == 0 {
                return Err((504, "the router did not answer".into()));
            }
            let frames = s.recv_multipart(0).map_err(unavailable)?;
            match Message::from_frames(&frames).map(|m| m.command) {
                Ok(Command::Reply(Reply::Single { body })) => return Ok(body),
                Ok(Command::Heartbeat(_)) => continue,
                Ok(other) => return Err((502, format!("unexpected answer {}", other.name()))),
                Err(e) => return Err((502, format!("unreadable answer: {e}"))),
            }
        }
    };
    if let Some(t) = token {
        let v: Value = serde_json::from_str(&ask(Command::Admin(AdminCommand::Authenticate { token: t.into() }))?)
            .unwrap_or(Value::Null);
        if v["authenticated"] != true {
            return Err((403, "the router refused this admin token".into()));
        }
    }
    ask(cmd)
}

fn json_answer(r: Proxied) -> (String, &'static str, u16) {
    match r {
        Ok(body) => {
            let code = match serde_json::from_str::<Value>(&body) {
                Ok(v) if v.get("error").is_some() => {
                    let e = v["error"].as_str().unwrap_or("");
                    if e.starts_with("not authorized") {
                        403
                    } else if e.starts_with("unknown job") || e.starts_with("no ") {
                        // Nothing by that id: not a conflict.
                        404
                    } else {
                        409
                    }
                }
                _ => 200,
            };
            (body, "application/json", code)
        }
        Err((code, why)) => (json!({ "error": why }).to_string(), "application/json", code),
    }
}

/// `%XX` escapes of a URL path segment.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_map_to_admin_commands() {
        assert_eq!(
            action(r#"{"action": "pause", "target": "reports"}"#),
            Ok(Command::Admin(AdminCommand::Pause { queue: "reports".into() }))
        );
        assert_eq!(
            action(r#"{"action": "delete_dead", "target": "m1"}"#),
            Ok(Command::Admin(AdminCommand::DeleteDead { job_msgid: "m1".into() }))
        );
        for bad in [
            "",
            "{}",
            r#"{"action": "shutdown", "target": "x"}"#,
            r#"{"action": "cancel"}"#,
            r#"{"action": "cancel", "target": ""}"#,
        ] {
            assert!(action(bad).is_err(), "{bad}");
        }
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
        for (value, token) in [
            ("Bearer t0k", Some("t0k")),
            ("bearer t0k", Some("t0k")),
            ("BEARER  t0k ", Some("t0k")),
            ("Basic t0k", None),
            ("Bearer", None),
        ] {
            assert_eq!(bearer_token(value).as_deref(), token, "{value}");
        }
        assert_eq!(json_answer(Ok(r#"{"msgid":"m","error":"unknown job (never seen)"}"#.into())).2, 404);
        assert_eq!(json_answer(Ok(r#"{"error":"no live job or schedule m"}"#.into())).2, 404);
        assert_eq!(json_answer(Ok(r#"{"error":"job m already ended (done)"}"#.into())).2, 409);
        assert_eq!(percent_decode("%aé%é"), "%aé%é", "no panic on multibyte text after %");
    }
}
