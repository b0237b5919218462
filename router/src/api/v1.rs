//! The routes: HTTP API v1 (`/v1/...`, `/openapi.json`, docs/http.md), and
//! the dashboard's (`/`, `/metrics`, `/health`, `/api/...`).
//!
//! Who may do what: [`Caller`] from `Authorization: Bearer`: the admin
//! token (`data_dir/admin.token`) everything; client tokens
//! (`emq-cli token create`, `data_dir/http-tokens.json`, hashed) submit
//! jobs and read their own. A job sent over HTTP carries the owner token
//! [`emq_client::tokens::owner_id`] of the caller's token: the router
//! answers its record in full only to that owner (or the admin).

use super::idempotency::{self, Check, Keys};
use super::{ApiConfig, Outcome, Request, Response};
use crate::events::{EventWindow, Filter};
use crate::http::SharedSnapshot;
use emq_protocol::{AdminCommand, Command, Message, Reply};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const OPENAPI: &str = include_str!("openapi.json");

/// How long the router has to answer one request.
const ROUTER_ANSWER: Duration = Duration::from_secs(10);

/// Who is asking.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    Admin { owner: String },
    Client { name: String, owner: String },
}

impl Caller {
    fn owner(&self) -> &str {
        match self {
            Caller::Admin { owner } | Caller::Client { owner, .. } => owner,
        }
    }
}

/// A file read again when it changes.
#[derive(Default)]
struct Cached<T> {
    value: Option<T>,
    stamp: Option<(SystemTime, u64, u64, i64)>,
}

/// What tells a rewritten file: a rename (every write of ours) changes the
/// inode, whatever the clock's resolution.
fn stamp(p: &Path) -> Option<(SystemTime, u64, u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino(), m.ctime_nsec()))
}

impl<T: Clone> Cached<T> {
    /// The value, read again when the file changed (a stat per call: a
    /// token made or revoked a moment ago counts at once).
    fn get(&mut self, path: &Path, load: impl FnOnce() -> Option<T>) -> Option<T> {
        let s = stamp(path);
        if s != self.stamp || self.value.is_none() {
            self.stamp = s;
            self.value = load();
        }
        self.value.clone()
    }
}

/// The shared part of the HTTP server.
pub struct Api {
    pub cfg: ApiConfig,
    shared: SharedSnapshot,
    admin_token: Mutex<Cached<Arc<str>>>,
    client_tokens: Mutex<Cached<Arc<Vec<emq_client::tokens::ClientToken>>>>,
    keys: Keys,
    /// Links of closed connections, for the next ones: the router keeps a
    /// bounded number of admin sessions, and connection churn must not
    /// make (and evict) new ones.
    spare_links: Mutex<Vec<Links>>,
}

/// One connection's links to the router (made when first needed).
#[derive(Default)]
pub struct Links {
    client: Option<emq_client::Client>,
    /// Admin socket, authenticated with the admin token it holds.
    admin: Option<(AdminLink, Arc<str>)>,
    /// Admin socket, not authenticated (JOB_STATUS with an owner token).
    anon: Option<AdminLink>,
}

/// A DEALER on the admin socket.
pub struct AdminLink {
    socket: zmq::Socket,
    _ctx: zmq::Context,
}

type Proxied = Result<String, (u16, String)>;

impl AdminLink {
    fn connect(addr: &str) -> Result<AdminLink, (u16, String)> {
        let unavailable = |e: zmq::Error| (503, format!("admin socket: {e}"));
        let ctx = zmq::Context::new();
        let s = ctx.socket(zmq::DEALER).map_err(unavailable)?;
        s.set_identity(format!("http:{}", emq_protocol::new_msgid()).as_bytes()).map_err(unavailable)?;
        s.set_linger(0).map_err(unavailable)?;
        s.connect(addr).map_err(unavailable)?;
        Ok(AdminLink { socket: s, _ctx: ctx })
    }

    /// One command, its answer's body.
    fn ask(&self, c: Command) -> Proxied {
        let unavailable = |e: zmq::Error| (503, format!("admin socket: {e}"));
        let msgid = format!("admin:{}", emq_protocol::new_msgid());
        let m = Message::with_msgid(msgid, c);
        self.socket.send_multipart(m.to_frames(), 0).map_err(unavailable)?;
        let end = Instant::now() + ROUTER_ANSWER;
        loop {
            let left = end.saturating_duration_since(Instant::now()).as_millis() as i64;
            if left == 0 || self.socket.poll(zmq::POLLIN, left).map_err(unavailable)? == 0 {
                return Err((503, "the router did not answer in time".into()));
            }
            let frames = self.socket.recv_multipart(0).map_err(unavailable)?;
            match Message::from_frames(&frames).map(|m| m.command) {
                Ok(Command::Reply(Reply::Single { body })) => return Ok(body),
                Ok(Command::Heartbeat(_)) => continue,
                Ok(other) => return Err((503, format!("unexpected answer {}", other.name()))),
                Err(e) => return Err((503, format!("unreadable answer: {e}"))),
            }
        }
    }
}

/// The final job states.
fn is_final(state: &str) -> bool {
    matches!(state, "done" | "failed" | "refused" | "lost" | "dead" | "cancelled")
}

impl Api {
    pub fn new(shared: SharedSnapshot, cfg: ApiConfig) -> Api {
        let keys = Keys::open(&cfg.data_dir, cfg.idempotency_ttl);
        Api {
            cfg,
            shared,
            admin_token: Mutex::new(Cached::default()),
            client_tokens: Mutex::new(Cached::default()),
            keys,
            spare_links: Mutex::new(Vec::new()),
        }
    }

    /// Links for a new connection (a closed one's when there is one).
    pub fn take_links(&self) -> Links {
        self.spare_links.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default()
    }

    /// A closed connection's links, kept for the next (at most as many as
    /// connections may be open).
    pub fn give_back(&self, links: Links) {
        let mut spare = self.spare_links.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < self.cfg.max_connections {
            spare.push(links);
        }
    }

    fn data_dir(&self) -> &PathBuf {
        &self.cfg.data_dir
    }

    fn admin_token(&self) -> Option<Arc<str>> {
        let path = self.data_dir().join("admin.token");
        let mut c = self.admin_token.lock().unwrap_or_else(|p| p.into_inner());
        c.get(&path, || {
            std::fs::read_to_string(&path).ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).map(Arc::from)
        })
    }

    /// Who `Authorization: Bearer` names; 401 when nobody.
    fn caller(&self, req: &Request) -> Result<Caller, Response> {
        let Some(token) = req.header("authorization").and_then(crate::http::bearer_token) else {
            return Err(Response::error(401, "a token is needed: Authorization: Bearer TOKEN")
                .with_header("WWW-Authenticate", "Bearer".into()));
        };
        self.caller_of(&token)
    }

    /// Who `token` is, now (a revoked or rotated token: 401).
    fn caller_of(&self, token: &str) -> Result<Caller, Response> {
        let token = token.to_owned();
        let owner = emq_client::tokens::owner_id(&token);
        if let Some(admin) = self.admin_token() {
            if constant_time_eq(
                idempotency::sha256_hex(admin.as_bytes()).as_bytes(),
                idempotency::sha256_hex(token.as_bytes()).as_bytes(),
            ) {
                return Ok(Caller::Admin { owner });
            }
        }
        let path = self.data_dir().join(emq_client::tokens::TOKENS_FILE);
        let tokens = {
            let mut c = self.client_tokens.lock().unwrap_or_else(|p| p.into_inner());
            c.get(&path, || match emq_client::tokens::load(self.data_dir()) {
                Ok(t) => Some(Arc::new(t)),
                Err(e) => {
                    tracing::error!(error = %e, "http: cannot read the client tokens");
                    Some(Arc::new(Vec::new()))
                }
            })
        };
        if let Some(t) = tokens.as_ref().and_then(|t| emq_client::tokens::find(t, &token)) {
            return Ok(Caller::Client { name: t.name.clone(), owner });
        }
        Err(Response::error(401, "unknown token")
            .with_header("WWW-Authenticate", "Bearer error=\"invalid_token\"".into()))
    }

    fn admin_only(&self, req: &Request) -> Result<Caller, Response> {
        match self.caller(req)? {
            c @ Caller::Admin { .. } => Ok(c),
            Caller::Client { name, .. } => {
                Err(Response::error(403, format!("client token {name:?} may not do this: it needs the admin token")))
            }
        }
    }

    /// The router's answer to an admin command, as the admin.
    fn ask_admin(&self, links: &mut Links, cmd: Command) -> Proxied {
        let Some(addr) = &self.cfg.admin_addr else {
            return Err((503, "not available: the admin socket is CURVE-only".into()));
        };
        let Some(token) = self.admin_token() else {
            return Err((503, "no admin token in data_dir".into()));
        };
        for attempt in 0..2 {
            if links.admin.as_ref().is_none_or(|(_, t)| *t != token) {
                let link = AdminLink::connect(addr)?;
                let auth = link.ask(Command::Admin(AdminCommand::Authenticate { token: token.to_string() }))?;
                let v: Value = serde_json::from_str(&auth).unwrap_or(Value::Null);
                if v["authenticated"] != true {
                    return Err((503, "the router refused its own admin token (being rotated?)".into()));
                }
                links.admin = Some((link, token.clone()));
            }
            let r = links.admin.as_ref().expect("set").0.ask(cmd.clone());
            match r {
                // The router forgot this session (it keeps a bounded number):
                // a new one, once.
                Ok(body) if attempt == 0 && body.contains("\"not authorized") => links.admin = None,
                Ok(body) => return Ok(body),
                Err(e) => {
                    // A lost or confused link: a new one next time.
                    links.admin = None;
                    return Err(e);
                }
            }
        }
        Err((503, "the router keeps refusing the admin session".into()))
    }

    fn ask_anon(&self, links: &mut Links, cmd: Command) -> Proxied {
        let Some(addr) = &self.cfg.admin_addr else {
            return Err((503, "not available: the admin socket is CURVE-only".into()));
        };
        if links.anon.is_none() {
            links.anon = Some(AdminLink::connect(addr)?);
        }
        let r = links.anon.as_ref().expect("set").ask(cmd);
        if r.is_err() {
            links.anon = None;
        }
        r
    }

    fn client<'a>(&self, links: &'a mut Links) -> Result<&'a mut emq_client::Client, Response> {
        if links.client.is_none() {
            let Some(addr) = &self.cfg.frontend_addr else {
                return Err(Response::error(503, "not available: the frontend is CURVE-only"));
            };
            let c = emq_client::Client::connect(addr).map_err(|e| Response::error(503, format!("frontend: {e}")))?;
            links.client = Some(c);
        }
        Ok(links.client.as_mut().expect("set"))
    }

    /// The job's record as `caller` may see it: `Ok(None)` when unknown or
    /// not theirs.
    fn job_record(&self, links: &mut Links, caller: &Caller, id: &str) -> Result<Option<Value>, Response> {
        let body = match caller {
            Caller::Admin { .. } => self
                .ask_admin(links, Command::Admin(AdminCommand::JobStatus { job_msgid: id.into(), owner_token: None })),
            Caller::Client { owner, .. } => self.ask_anon(
                links,
                Command::Admin(AdminCommand::JobStatus { job_msgid: id.into(), owner_token: Some(owner.clone()) }),
            ),
        }
        .map_err(|(c, why)| Response::error(c, why))?;
        let v: Value =
            serde_json::from_str(&body).map_err(|e| Response::error(503, format!("unreadable answer: {e}")))?;
        if v.get("error").is_some() || v.get("result_hidden").is_some() || v.get("state").is_none() {
            return Ok(None);
        }
        let mut v = v;
        // The API's name for a job handed to a job manager (docs/http.md).
        if v["state"] == "dispatched" {
            v["state"] = "running".into();
        }
        Ok(Some(v))
    }

    /// Routes one request.
    pub fn route(&self, req: &Request, links: &mut Links) -> Outcome {
        if req.url_len > 8192 {
            return Outcome::Answer(Response::error(414, "URL longer than 8 KiB"));
        }
        let path = req.path.as_str();
        let seg: Vec<String> = path.trim_start_matches('/').split('/').map(crate::http::percent_decode).collect();
        let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
        let m = req.method.as_str();
        let r = match (m, seg.as_slice()) {
            ("GET", ["openapi.json"]) => Ok(Response {
                status: 200,
                content_type: "application/json",
                body: OPENAPI.as_bytes().to_vec(),
                headers: Vec::new(),
            }),
            ("GET", ["v1", "events"]) => return self.events(req),
            ("POST", ["v1", "jobs"]) => self.submit(req, links, false),
            ("POST", ["v1", "workflows"]) => self.submit(req, links, true),
            ("GET", ["v1", "jobs", id]) | ("GET", ["v1", "workflows", id]) => self.get_job(req, links, id),
            ("GET", ["v1", "jobs", id, "result"]) => self.get_result(req, links, id),
            ("POST", ["v1", "jobs", id, "cancel"]) => self.cancel(req, links, id),
            ("GET", ["v1", "queues"]) => self.queues(req, links),
            ("GET", ["v1", "schedules"]) => self.schedules(req, links),
            ("POST", ["v1", "schedules"]) => self.schedule(req, links),
            ("DELETE", ["v1", "schedules", id]) => self.unschedule(req, links, id),
            (_, ["v1", ..]) | (_, ["openapi.json"]) => {
                Err(Response::error(if known_path(&seg) { 405 } else { 404 }, format!("no route {m} {path}")))
            }
            _ => Ok(crate::http::dashboard_route(req, &self.shared, self.cfg.admin_addr.as_deref())),
        };
        Outcome::Answer(r.unwrap_or_else(|e| e))
    }

    fn submit(&self, req: &Request, links: &mut Links, workflow: bool) -> Result<Response, Response> {
        let caller = self.caller(req)?;
        let body: Value =
            serde_json::from_slice(&req.body).map_err(|e| Response::error(400, format!("body is not JSON: {e}")))?;
        let owner = caller.owner().to_owned();
        let command = if workflow {
            let canvas = emq_client::workflow::Canvas::from_json(&body)
                .map_err(|e| Response::error(400, format!("not a workflow: {e}")))?;
            let graph = canvas.to_graph(&owner).map_err(|e| Response::error(400, format!("not a workflow: {e}")))?;
            Command::Workflow(emq_protocol::Workflow { graph })
        } else {
            let (queue, job, options) = job_request(&body).map_err(|e| Response::error(400, e))?;
            let mut headers = options.headers();
            if !headers.is_empty() {
                headers.push(',');
            }
            headers.push_str("owner:");
            headers.push_str(&owner);
            Command::Request(emq_protocol::Request { queue, headers, payload: job.to_wire() })
        };
        let key = req.header("idempotency-key").map(str::to_owned);
        let body_hash = idempotency::sha256_hex(&req.body);
        let msgid = match &key {
            None => emq_protocol::new_msgid(),
            Some(k) => {
                if k.is_empty() || k.len() > 255 || !k.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                    return Err(Response::error(400, "Idempotency-Key must be 1 to 255 printable ASCII characters"));
                }
                match self.keys.check(&owner, k, &body_hash) {
                    Check::Proceed => idempotency::derived_msgid(&owner, k, &body_hash),
                    Check::Replay(r) => {
                        return Ok(accepted(&r.id, workflow, r.deduplicated)
                            .with_header("Idempotency-Replayed", "true".into()))
                    }
                    Check::Mismatch => {
                        return Err(Response::error(
                            422,
                            "this Idempotency-Key was used with another body (a key names one request)",
                        ))
                    }
                    Check::InProgress => {
                        return Err(Response::error(409, "a request with this Idempotency-Key is still being answered"))
                    }
                }
            }
        };
        let forget = |keys: &Keys| {
            if let Some(k) = &key {
                keys.abandon(&owner, k);
            }
        };
        let client = match self.client(links) {
            Ok(c) => c,
            Err(e) => {
                forget(&self.keys);
                return Err(e);
            }
        };
        let receipt = client.send_as(&msgid, command, Instant::now() + ROUTER_ANSWER);
        let (id, dedup) = match receipt {
            Ok(emq_client::Receipt::Accepted) => (msgid.clone(), false),
            Ok(emq_client::Receipt::Deduplicated(other)) => (other, true),
            Ok(emq_client::Receipt::Refused(e)) => {
                forget(&self.keys);
                return Err(Response::error(422, format!("refused by the router: {}", e.message)));
            }
            Err(e) => {
                forget(&self.keys);
                // A client that timed out may hold a half-sent message:
                // a fresh one next time.
                links.client = None;
                return Err(Response::error(503, format!("no receipt from the router: {e}")));
            }
        };
        if let Some(k) = &key {
            self.keys.done(&owner, k, &body_hash, &id, dedup);
        }
        Ok(accepted(&id, workflow, dedup))
    }

    fn get_job(&self, req: &Request, links: &mut Links, id: &str) -> Result<Response, Response> {
        let caller = self.caller(req)?;
        match self.job_record(links, &caller, id)? {
            None => Err(Response::error(404, format!("no job {id}"))),
            Some(mut v) => {
                if let Some(o) = v.as_object_mut() {
                    o.insert("id".into(), id.into());
                }
                Ok(Response::json(200, &v))
            }
        }
    }

    fn get_result(&self, req: &Request, links: &mut Links, id: &str) -> Result<Response, Response> {
        let caller = self.caller(req)?;
        let wait = match req.param("wait") {
            None => 0.0,
            Some(w) => match w.parse::<f64>() {
                Ok(w) if (0.0..=60.0).contains(&w) => w,
                _ => return Err(Response::error(400, "wait must be a number of seconds from 0 to 60")),
            },
        };
        let deadline = Instant::now() + Duration::from_secs_f64(wait);
        let window = self.window();
        loop {
            let seen = window.as_ref().map(|w| w.last_offset()).unwrap_or(0);
            let Some(v) = self.job_record(links, &caller, id)? else {
                return Err(Response::error(404, format!("no job {id}")));
            };
            let state = v["state"].as_str().unwrap_or("").to_owned();
            if is_final(&state) {
                return Ok(Response::json(200, &result_of(id, &state, &v)));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Response::json(202, &json!({"id": id, "state": state})));
            }
            // Wait for this job's next event (or a second, whichever first).
            let left = (deadline - now).min(Duration::from_secs(1));
            match &window {
                Some(w) => {
                    let filter = Filter { job: Some(id.to_owned()), ..Default::default() };
                    let _ = w.read(seen, 1, &filter, left);
                }
                None => std::thread::sleep(left.min(Duration::from_millis(100))),
            }
        }
    }

    fn cancel(&self, req: &Request, links: &mut Links, id: &str) -> Result<Response, Response> {
        let caller = self.caller(req)?;
        if let Caller::Client { .. } = caller {
            // Only their own: a job they cannot read does not exist for them.
            if self.job_record(links, &caller, id)?.is_none() {
                return Err(Response::error(404, format!("no job {id}")));
            }
        }
        let body = self
            .ask_admin(links, Command::Admin(AdminCommand::Cancel { job_msgid: id.into() }))
            .map_err(|(c, w)| Response::error(c, w))?;
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if let Some(e) = v.get("error").and_then(Value::as_str) {
            let code = if e.starts_with("unknown job") || e.starts_with("no ") { 404 } else { 409 };
            return Err(Response::error(code, e));
        }
        let mut out = json!({"id": id, "cancelled": true});
        if let Some(was) = v.get("was") {
            out["was"] = was.clone();
        }
        Ok(Response::json(200, &out))
    }

    fn queues(&self, req: &Request, links: &mut Links) -> Result<Response, Response> {
        self.admin_only(req)?;
        let body =
            self.ask_admin(links, Command::Admin(AdminCommand::Status)).map_err(|(c, w)| Response::error(c, w))?;
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let mut names: Vec<String> = Vec::new();
        for key in ["waiting_messages_by_queue", "inflight_messages_by_queue", "processed_messages_by_queue"] {
            if let Some(m) = v[key].as_object() {
                names.extend(m.keys().cloned());
            }
        }
        names.sort();
        names.dedup();
        let num = |key: &str, q: &str| v[key][q].as_u64().unwrap_or(0);
        let paused: Vec<&str> =
            v["paused_queues"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let queues: Vec<Value> = names
            .iter()
            .map(|q| {
                json!({
                    "name": q,
                    "waiting": num("waiting_messages_by_queue", q),
                    "running": num("inflight_messages_by_queue", q),
                    "processed": num("processed_messages_by_queue", q),
                    "failed": num("failed_messages_by_queue", q),
                    "paused": paused.contains(&q.as_str()),
                })
            })
            .collect();
        Ok(Response::json(200, &json!({ "queues": queues })))
    }

    fn schedules(&self, req: &Request, links: &mut Links) -> Result<Response, Response> {
        self.admin_only(req)?;
        let body =
            self.ask_admin(links, Command::Admin(AdminCommand::Schedules)).map_err(|(c, w)| Response::error(c, w))?;
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let list = match &v["schedules"] {
            Value::Array(a) => Value::Array(a.clone()),
            Value::Object(o) => Value::Array(
                o.iter()
                    .map(|(id, s)| {
                        let mut s = s.clone();
                        if let Some(m) = s.as_object_mut() {
                            m.entry("id").or_insert_with(|| id.clone().into());
                        }
                        s
                    })
                    .collect(),
            ),
            _ => Value::Array(Vec::new()),
        };
        Ok(Response::json(200, &json!({ "schedules": list })))
    }

    fn schedule(&self, req: &Request, links: &mut Links) -> Result<Response, Response> {
        self.admin_only(req)?;
        let body: Value =
            serde_json::from_slice(&req.body).map_err(|e| Response::error(400, format!("body is not JSON: {e}")))?;
        let (queue, job, spec) = schedule_request(&body).map_err(|e| Response::error(400, e))?;
        let client = self.client(links)?;
        match client.schedule(&queue, &job, &spec, Instant::now() + ROUTER_ANSWER) {
            Ok(id) => Ok(Response::json(201, &json!({ "id": id }))),
            Err(emq_client::ClientError::Refused(why)) => {
                Err(Response::error(422, format!("refused by the router: {why}")))
            }
            Err(e) => {
                links.client = None;
                Err(Response::error(503, format!("no receipt from the router: {e}")))
            }
        }
    }

    fn unschedule(&self, req: &Request, links: &mut Links, id: &str) -> Result<Response, Response> {
        self.admin_only(req)?;
        let body = self
            .ask_admin(links, Command::Admin(AdminCommand::RemoveSchedule { schedule_id: id.into() }))
            .map_err(|(c, w)| Response::error(c, w))?;
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if let Some(e) = v.get("error").and_then(Value::as_str) {
            return Err(Response::error(404, e));
        }
        Ok(Response::json(200, &json!({"id": id, "removed": true})))
    }

    fn window(&self) -> Option<Arc<EventWindow>> {
        self.shared.events()
    }

    fn events(&self, req: &Request) -> Outcome {
        let caller = match self.caller(req) {
            Ok(c) => c,
            Err(r) => return Outcome::Answer(r),
        };
        let Some(window) = self.window() else {
            return Outcome::Answer(Response::error(
                503,
                "no event stream here: this router is not serving (a standby?)",
            ));
        };
        let num = |name: &str, max: u64| -> Result<Option<u64>, Response> {
            match req.param(name) {
                None | Some("") => Ok(None),
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if n <= max => Ok(Some(n)),
                    _ => Err(Response::error(400, format!("{name} must be an integer from 0 to {max}"))),
                },
            }
        };
        let parsed = (|| -> Result<_, Response> {
            let after = num("after", i64::MAX as u64)?;
            let limit = num("limit", 10_000)?.unwrap_or(1000);
            if limit == 0 {
                return Err(Response::error(400, "limit must be from 1 to 10000"));
            }
            let wait = num("wait", 60)?.unwrap_or(0);
            let last_id = match req.header("last-event-id") {
                None | Some("") => None,
                Some(v) => Some(v.parse::<u64>().map_err(|_| Response::error(400, "Last-Event-ID must be an offset"))?),
            };
            Ok((after, limit, wait, last_id))
        })();
        let (after, limit, wait, last_id) = match parsed {
            Ok(p) => p,
            Err(r) => return Outcome::Answer(r),
        };
        let types = req
            .param("type")
            .filter(|t| !t.is_empty())
            .map(|t| t.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect::<Vec<_>>());
        if let Some(t) = &types {
            if let Some(bad) = t.iter().find(|t| !crate::events::EVENT_TYPES.contains(&t.as_str())) {
                return Outcome::Answer(Response::error(400, format!("unknown event type {bad:?}")));
            }
        }
        let filter = Filter {
            types,
            queue: req.param("queue").filter(|q| !q.is_empty()).map(str::to_owned),
            job: req.param("job").filter(|q| !q.is_empty()).map(str::to_owned),
            owner: match &caller {
                Caller::Admin { .. } => None,
                Caller::Client { owner, .. } => Some(owner.clone()),
            },
        };
        let start = last_id.or(after).unwrap_or_else(|| window.last_offset());
        let sse = req.header("accept").is_some_and(|a| a.contains("text/event-stream"));
        if sse {
            let token = req.header("authorization").and_then(crate::http::bearer_token).unwrap_or_default();
            return Outcome::Stream(EventStream { window, filter, after: start, token });
        }
        let page = window.read(start, limit as usize, &filter, Duration::from_secs(wait));
        // The events' JSON as stored, spliced (not parsed again).
        let mut body = String::from("{\"events\":[");
        for (n, i) in page.items.iter().enumerate() {
            if n > 0 {
                body.push(',');
            }
            body.push_str(&i.json());
        }
        body.push_str(&format!("],\"next\":{}}}", page.next));
        Outcome::Answer(Response::raw_json(200, body))
    }
}

fn known_path(seg: &[&str]) -> bool {
    matches!(
        seg,
        ["openapi.json"]
            | ["v1", "events"]
            | ["v1", "jobs"]
            | ["v1", "workflows"]
            | ["v1", "jobs", _]
            | ["v1", "workflows", _]
            | ["v1", "jobs", _, "result"]
            | ["v1", "jobs", _, "cancel"]
            | ["v1", "queues"]
            | ["v1", "schedules"]
            | ["v1", "schedules", _]
    )
}

fn accepted(id: &str, workflow: bool, dedup: bool) -> Response {
    let location = format!("/v1/{}/{}", if workflow { "workflows" } else { "jobs" }, crate::http::percent_encode(id));
    let mut v = json!({"id": id, "location": &location});
    if dedup {
        v["deduplicated"] = true.into();
    }
    Response::json(202, &v).with_header("Location", location)
}

/// `{"id", "state", "result"}` or `{"id", "state", "error"}` of a final record
/// (a command job that failed: both, its `result` the exit code and output).
fn result_of(id: &str, state: &str, v: &Value) -> Value {
    let r = &v["result"];
    if state == "done" {
        let value = match r {
            Value::Object(o) if o.contains_key("value") => o["value"].clone(),
            other => other.clone(),
        };
        return json!({"id": id, "state": state, "result": value});
    }
    let mut out = match r.get("error") {
        Some(Value::Object(e)) => {
            let kind = e.get("type").or_else(|| e.get("kind")).cloned().unwrap_or(Value::Null);
            let error = json!({"kind": kind, "message": e.get("message").cloned().unwrap_or(Value::Null),
                               "traceback": e.get("traceback").cloned().unwrap_or(Value::Null)});
            json!({"id": id, "state": state, "error": error})
        }
        _ => {
            let last = v["attempt_errors"].as_array().and_then(|a| a.last()).cloned().unwrap_or(Value::Null);
            let error = json!({"kind": last.get("type").cloned().unwrap_or_else(|| state.into()),
                   "message": last.get("message").cloned().unwrap_or_else(|| format!("the job ended {state}").into()),
                   "traceback": last.get("traceback").cloned().unwrap_or(Value::Null)});
            json!({"id": id, "state": state, "error": error})
        }
    };
    if out["error"]["kind"] == "command failed" {
        if let Some(value @ Value::Object(_)) = r.get("value") {
            out["result"] = value.clone();
        }
    }
    out
}

/// Fields of `POST /v1/jobs` (docs/http.md): unknown ones are refused.
const JOB_FIELDS: [&str; 18] = [
    "callable",
    "args",
    "kwargs",
    "command",
    "env",
    "cwd",
    "stdin",
    "queue",
    "timeout",
    "retries",
    "guarantee",
    "delay",
    "eta",
    "unique",
    "limit",
    "depends_on",
    "requires",
    "on",
];

fn valid_queue(q: &str) -> bool {
    !q.is_empty() && q.len() <= 128 && q.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
}

/// What a job request runs: a Python callable, or a program (a command
/// job, run by a job manager whose `allowed_commands` allows it).
#[derive(Debug, Clone, PartialEq)]
pub enum JobPayload {
    Run(emq_client::Job),
    Command(emq_protocol::CommandPayload),
}

impl JobPayload {
    /// The REQUEST's payload frame.
    pub fn to_wire(&self) -> String {
        match self {
            JobPayload::Run(j) => j.to_wire(),
            JobPayload::Command(c) => c.to_wire(),
        }
    }
}

/// `callable` with its `args` and `kwargs`.
fn callable_job(o: &Map<String, Value>) -> Result<emq_client::Job, String> {
    let callable = o.get("callable").and_then(Value::as_str).ok_or("\"callable\" (a string) is needed")?;
    if callable.len() > 512 {
        return Err("\"callable\" is longer than 512 characters".into());
    }
    let mut job = emq_client::job_for(callable).map_err(|e| format!("\"callable\": {e}"))?;
    job.args = match o.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err("\"args\" must be an array".into()),
    };
    job.kwargs = match o.get("kwargs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err("\"kwargs\" must be an object".into()),
    };
    Ok(job)
}

/// `command` (argv) with its `env`, `cwd` and `stdin`, checked as the job
/// manager will ([`emq_protocol::CommandPayload::validate`]).
fn command_job(o: &Map<String, Value>) -> Result<emq_protocol::CommandPayload, String> {
    let argv = match o.get("command") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_owned))
            .collect::<Option<Vec<String>>>()
            .ok_or("\"command\" must be an array of strings (the program and its arguments)")?,
        _ => return Err("\"command\" must be an array of strings (the program and its arguments)".into()),
    };
    let mut c = emq_protocol::CommandPayload::new(argv);
    c.env = match o.get("env") {
        None => Default::default(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
            .collect::<Option<_>>()
            .ok_or("\"env\" must be an object of strings")?,
        Some(_) => return Err("\"env\" must be an object of strings".into()),
    };
    c.cwd = match o.get("cwd") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("\"cwd\" must be a string (an absolute directory)".into()),
    };
    c.stdin = match o.get("stdin") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("\"stdin\" must be a string".into()),
    };
    // Its messages start with the field: argv (here "command"), env, cwd.
    c.validate().map_err(|e| match ["argv", "env", "cwd"].into_iter().find(|f| e.starts_with(f)) {
        Some("argv") => format!("\"command\"{}", &e[4..]),
        Some(f) => format!("\"{f}\"{}", &e[f.len()..]),
        None => format!("\"command\": {e}"),
    })?;
    Ok(c)
}

/// A job request's queue, payload and options.
pub fn job_request(v: &Value) -> Result<(String, JobPayload, emq_client::Options), String> {
    let o = v.as_object().ok_or("the body must be a JSON object")?;
    if let Some(k) = o.keys().find(|k| !JOB_FIELDS.contains(&k.as_str())) {
        return Err(format!("unknown field {k:?} (fields: {})", JOB_FIELDS.join(", ")));
    }
    let job = match (o.contains_key("callable"), o.contains_key("command")) {
        (true, true) => return Err("give \"callable\" or \"command\", not both".into()),
        (false, false) => {
            return Err("\"callable\" (a Python function) or \"command\" (a program and its arguments) is needed".into())
        }
        (true, false) => {
            if let Some(k) = ["env", "cwd", "stdin"].into_iter().find(|k| o.contains_key(*k)) {
                return Err(format!("\"{k}\" goes only with \"command\", not with \"callable\""));
            }
            JobPayload::Run(callable_job(o)?)
        }
        (false, true) => {
            if let Some(k) = ["args", "kwargs"].into_iter().find(|k| o.contains_key(*k)) {
                return Err(format!(
                    "\"{k}\" goes only with \"callable\": a command's arguments are in \"command\" itself"
                ));
            }
            JobPayload::Command(command_job(o)?)
        }
    };
    let queue = match o.get("queue") {
        None | Some(Value::Null) => "default".to_owned(),
        Some(Value::String(q)) if valid_queue(q) => q.clone(),
        Some(_) => return Err("\"queue\" must be a queue name (1-128 of A-Z a-z 0-9 _ - . :)".into()),
    };
    let int = |k: &str, lo: u64, hi: u64| -> Result<Option<u64>, String> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
                _ => Err(format!("\"{k}\" must be an integer from {lo} to {hi}")),
            },
        }
    };
    let text = |k: &str| -> Result<Option<String>, String> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 && !s.contains([',', '\n', '\r']) => {
                Ok(Some(s.clone()))
            }
            Some(_) => Err(format!("\"{k}\" must be a string of 1 to 256 characters without commas")),
        }
    };
    let mut opts = emq_client::Options { reply_requested: false, ..Default::default() };
    opts.timeout = int("timeout", 1, 31_536_000)?;
    opts.retry_count = int("retries", 0, 1000)?.map(|n| n as u32);
    opts.guarantee = match o.get("guarantee") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("\"guarantee\" must be true or false".into()),
    };
    opts.delay = match o.get("delay") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(d) if (0.0..=31_536_000.0).contains(&d) => Some(Duration::from_secs_f64(d)),
            _ => return Err("\"delay\" must be a number of seconds from 0 to 31536000".into()),
        },
    };
    opts.at = match o.get("eta") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(t) if (0.0..=1e11).contains(&t) => Some(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(t)),
            _ => return Err("\"eta\" must be unix seconds".into()),
        },
    };
    if opts.delay.is_some() && opts.at.is_some() {
        return Err("give \"delay\" or \"eta\", not both".into());
    }
    opts.unique = text("unique")?;
    opts.limit = text("limit")?;
    if let Some(l) = &opts.limit {
        emq_client::check_limit(l).map_err(|e| format!("\"limit\": {e}"))?;
    }
    opts.depends_on = match o.get("depends_on") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.len() <= 1000 => a
            .iter()
            .map(|d| match d.as_str() {
                Some(s) if !s.is_empty() && s.len() <= 256 && !s.contains([';', ',', '\n', '\r']) => Ok(s.to_owned()),
                _ => Err("\"depends_on\" must be job ids (strings)".to_owned()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("\"depends_on\" must be an array of at most 1000 job ids".into()),
    };
    opts.requires = match o.get("requires") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.len() <= emq_protocol::MAX_LABELS => a
            .iter()
            .map(|l| match l.as_str() {
                Some(s) if emq_protocol::valid_label(s) => Ok(s.to_owned()),
                _ => Err("\"requires\" must be labels: 1 to 64 of A-Z a-z 0-9 _ - . :".to_owned()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("\"requires\" must be an array of at most 32 labels".into()),
    };
    opts.on = match o.get("on") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if emq_protocol::valid_label(s) => Some(s.clone()),
        Some(_) => return Err("\"on\" must be a job manager name: 1 to 64 of A-Z a-z 0-9 _ - . :".into()),
    };
    Ok((queue, job, opts))
}

const SCHEDULE_FIELDS: [&str; 9] = ["callable", "args", "kwargs", "queue", "every", "cron", "tz", "runs", "timeout"];

/// A schedule request's queue, payload and timing.
pub fn schedule_request(v: &Value) -> Result<(String, emq_client::Job, emq_client::ScheduleSpec), String> {
    let o = v.as_object().ok_or("the body must be a JSON object")?;
    if let Some(k) = o.keys().find(|k| !SCHEDULE_FIELDS.contains(&k.as_str())) {
        return Err(format!("unknown field {k:?} (fields: {})", SCHEDULE_FIELDS.join(", ")));
    }
    let mut jobv = Map::new();
    for k in ["callable", "args", "kwargs", "queue"] {
        if let Some(x) = o.get(k) {
            jobv.insert(k.into(), x.clone());
        }
    }
    let job = callable_job(&jobv)?;
    let (queue, _, _) = job_request(&Value::Object(jobv))?;
    let mut spec = match (o.get("every"), o.get("cron")) {
        (Some(e), None) => match e.as_u64() {
            Some(s) if (1..=31_536_000).contains(&s) => emq_client::ScheduleSpec::every(s),
            _ => return Err("\"every\" must be an integer number of seconds from 1 to 31536000".into()),
        },
        (None, Some(c)) => match c.as_str() {
            Some(c) if !c.is_empty() && c.len() <= 256 => {
                crate::schedule::cron::CronSchedule::parse(c, None).map_err(|e| format!("\"cron\": {e}"))?;
                emq_client::ScheduleSpec::cron(c)
            }
            _ => return Err("\"cron\" must be a cron expression".into()),
        },
        _ => return Err("give one of \"every\" (seconds) or \"cron\"".into()),
    };
    if let Some(tz) = o.get("tz") {
        let tz =
            tz.as_str().filter(|t| t.parse::<chrono_tz::Tz>().is_ok()).ok_or("\"tz\" must be an IANA time zone")?;
        spec.tz = Some(tz.to_owned());
    }
    if let Some(r) = o.get("runs") {
        spec.run_count =
            Some(r.as_u64().filter(|n| (1..=1_000_000_000).contains(n)).ok_or("\"runs\" must be an integer ≥ 1")?);
    }
    if let Some(t) = o.get("timeout") {
        spec.timeout =
            Some(t.as_u64().filter(|n| (1..=31_536_000).contains(n)).ok_or("\"timeout\" must be seconds ≥ 1")?);
    }
    Ok((queue, job, spec))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Server-sent events of the window, until the reader goes.
pub struct EventStream {
    window: Arc<EventWindow>,
    filter: Filter,
    after: u64,
    /// Checked again as the stream goes: a revoked or rotated token ends it.
    token: String,
}

impl EventStream {
    /// Streams until the reader goes, its token stops working, or this
    /// router stops serving (a lost lease: readers go to the new leader).
    pub fn run(mut self, stream: &mut std::net::TcpStream, api: &Api) {
        use std::io::Write;
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
                    X-Accel-Buffering: no\r\nConnection: close\r\n\r\n: emq event stream\n\n";
        if stream.write_all(head.as_bytes()).is_err() {
            return;
        }
        let mut idle = Instant::now();
        let mut out = String::new();
        loop {
            let serving = api.window().is_some_and(|w| Arc::ptr_eq(&w, &self.window));
            if !serving || api.caller_of(&self.token).is_err() {
                return;
            }
            let page = self.window.read(self.after, 1000, &self.filter, Duration::from_secs(5));
            out.clear();
            for item in &page.items {
                out.push_str(&format!("id: {}\nevent: {}\ndata: {}\n\n", item.offset(), item.kind(), item.json()));
            }
            self.after = page.next.max(self.after);
            if out.is_empty() && idle.elapsed() >= Duration::from_secs(15) {
                out.push_str(": keepalive\n\n");
            }
            if !out.is_empty() {
                idle = Instant::now();
                if stream.write_all(out.as_bytes()).and_then(|_| stream.flush()).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{job_request, JobPayload};
    use serde_json::json;

    fn refused(body: serde_json::Value, names: &str) {
        let e = job_request(&body).unwrap_err();
        assert!(e.contains(names), "{body}: {e:?} should name {names}");
    }

    #[test]
    fn a_job_is_a_callable_or_a_command() {
        let (q, job, opts) = job_request(&json!({"callable": "m.f", "args": [1], "queue": "q", "retries": 2})).unwrap();
        assert_eq!(q, "q");
        assert!(matches!(job, JobPayload::Run(_)));
        assert_eq!(opts.retry_count, Some(2));
        let (q, job, opts) = job_request(&json!({"command": ["/bin/echo", "hi", ""], "env": {"K": "V"},
            "cwd": "/tmp", "stdin": "text", "timeout": 5}))
        .unwrap();
        assert_eq!(q, "default");
        assert_eq!(opts.timeout, Some(5));
        let JobPayload::Command(c) = &job else { panic!("{job:?}") };
        assert_eq!(c.argv, ["/bin/echo", "hi", ""]);
        assert_eq!(c.env.get("K").map(String::as_str), Some("V"));
        assert_eq!((c.cwd.as_deref(), c.stdin.as_deref()), (Some("/tmp"), Some("text")));
        assert!(emq_protocol::payload_is_command(&job.to_wire()));
        assert_eq!(emq_protocol::CommandPayload::parse(&job.to_wire()).unwrap(), *c);

        refused(json!({"callable": "m.f", "command": ["/bin/echo"]}), "not both");
        refused(json!({"args": [1]}), "\"command\"");
        refused(json!({}), "\"callable\"");
        for k in ["env", "cwd", "stdin"] {
            refused(json!({"callable": "m.f", k: "x"}), &format!("\"{k}\""));
        }
        refused(json!({"command": ["/bin/echo"], "args": [1]}), "\"args\"");
        refused(json!({"command": ["/bin/echo"], "kwargs": {}}), "\"kwargs\"");
        refused(json!({"command": []}), "\"command\"");
        refused(json!({"command": [""]}), "\"command\"");
        refused(json!({"command": "/bin/echo hi"}), "\"command\"");
        refused(json!({"command": ["/bin/echo", 1]}), "\"command\"");
        refused(json!({"command": ["/bin/echo", "a\u{0}b"]}), "\"command\"[1]");
        refused(json!({"command": ["/bin/echo"], "env": {"A=B": "1"}}), "\"env\"");
        refused(json!({"command": ["/bin/echo"], "env": {"A": 1}}), "\"env\"");
        refused(json!({"command": ["/bin/echo"], "env": null}), "\"env\"");
        refused(json!({"command": ["/bin/echo"], "cwd": "tmp"}), "\"cwd\"");
        refused(json!({"command": ["/bin/echo"], "stdin": 3}), "\"stdin\"");
        refused(json!({"command": ["/bin/echo"], "retries": -1}), "\"retries\"");
        refused(json!({"command": ["/bin/echo"], "shell": true}), "\"shell\"");
    }

    #[test]
    fn a_failed_command_keeps_its_output_in_the_result() {
        let out = json!({"exit_code": 1, "stdout": "", "stderr": "no\n", "stdout_cut": 0, "stderr_cut": 0});
        let rec = json!({"state": "failed", "result": {"value": out,
            "error": {"type": "command failed", "message": "exit code 1: no", "traceback": "no\n"}}});
        let r = super::result_of("j", "failed", &rec);
        assert_eq!(r["error"]["kind"], "command failed");
        assert_eq!(r["error"]["message"], "exit code 1: no");
        assert_eq!(r["result"], out);
        // Others' failures: the error alone (their value is the message).
        let rec = json!({"state": "failed", "result": {"value": "boom",
            "error": {"type": "exception", "message": "boom", "traceback": "tb"}}});
        let r = super::result_of("j", "failed", &rec);
        assert_eq!(
            r,
            json!({"id": "j", "state": "failed", "error": {"kind": "exception", "message": "boom", "traceback": "tb"}})
        );
    }

    #[test]
    fn schedules_still_take_only_callables() {
        let (_, job, _) = super::schedule_request(&json!({"callable": "m.f", "every": 60})).unwrap();
        assert_eq!(job.callable, "f");
        assert!(super::schedule_request(&json!({"every": 60})).unwrap_err().contains("\"callable\""));
        assert!(super::schedule_request(&json!({"command": ["/bin/echo"], "every": 60})).is_err());
    }
}
