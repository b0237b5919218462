//! CURVE with the real tools: keys written by `emq keygen`, a CURVE
//! receiver admitting clients from a directory of `*.pub` files, and
//! EventMQ's own Python client (pyzmq) speaking CURVE to it.

mod common;

use emq_protocol::Command;
use emq_receiver::{AllowList, CurveServer, Key, Receiver, ZapHandler};
use std::path::Path;
use std::process::Command as Process;
use std::time::Duration;

/// Runs `emq keygen --out-dir DIR --name NAME`; returns the printed public key.
fn keygen(dir: &Path, name: &str) -> String {
    let out = Process::new(env!("CARGO_BIN_EXE_emq"))
        .args(["keygen", "--out-dir"])
        .arg(dir)
        .args(["--name", name])
        .output()
        .expect("run emq keygen");
    assert!(out.status.success(), "emq keygen: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn keygen_writes_a_pair_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("emq-keygen-{}", uuid::Uuid::new_v4()));
    let public = keygen(&dir, "alice");
    assert_eq!(public.len(), 40);
    assert_eq!(std::fs::read_to_string(dir.join("alice.pub")).unwrap().trim(), public);
    let secret = std::fs::read_to_string(dir.join("alice.key")).unwrap();
    assert_eq!(secret.trim().len(), 40);
    assert_eq!(std::fs::metadata(dir.join("alice.key")).unwrap().permissions().mode() & 0o777, 0o600);
    let again = Process::new(env!("CARGO_BIN_EXE_emq"))
        .args(["keygen", "--out-dir"])
        .arg(&dir)
        .args(["--name", "alice"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(dir.join("alice.key")).unwrap(), secret, "secret key untouched");
    let _ = std::fs::remove_dir_all(&dir);
}

/// EventMQ's `Sender` with CURVE options set on its socket before
/// `connect`, sending one REQUEST through `send_request`; prints the msgid.
const PY_CLIENT: &str = r#"
import sys, zmq
from eventmq.sender import Sender
from eventmq.client.messages import send_request
addr, server_pub, client_pub, client_key = sys.argv[1:5]
read = lambda p: open(p, 'rb').read().strip()
assert zmq.has('curve')
ctx = zmq.Context.instance()
s = Sender()
s.zsocket.curve_serverkey = read(server_pub)
s.zsocket.curve_publickey = read(client_pub)
s.zsocket.curve_secretkey = read(client_key)
s.connect(addr)
msgid = send_request(s, ['run', {'path': 'x', 'callable': 'y', 'args': [], 'kwargs': {}}], queue='default')
print(msgid)
sys.stdout.flush()
s.zsocket.close(linger=int(sys.argv[5]))
ctx.term()
"#;

#[test]
fn eventmq_python_client_speaks_curve() {
    let Some(venv) = common::eventmq_venv() else {
        eprintln!("skipped: EMQ_SKIP_INTEROP=1");
        return;
    };
    let root = std::env::temp_dir().join(format!("emq-curve-py-{}", uuid::Uuid::new_v4()));
    let (server_dir, clients_dir, others_dir) = (root.join("server"), root.join("clients"), root.join("others"));
    keygen(&server_dir, "router");
    keygen(&clients_dir, "pyclient");
    keygen(&others_dir, "stranger");

    let ctx = zmq::Context::new();
    let zap = ZapHandler::start(&ctx).unwrap();
    zap.set_domain("frontend", AllowList::from_dir(&clients_dir).unwrap());
    let curve =
        CurveServer { secret: Key::from_file(&server_dir.join("router.key")).unwrap(), domain: "frontend".into() };
    let rx = Receiver::bind_curve(&ctx, "tcp://127.0.0.1:*", 1000, &curve, &zap).unwrap();

    let run = |dir: &Path, name: &str, linger_ms: &str| {
        let out = Process::new(venv.join("bin/python"))
            .args(["-c", PY_CLIENT, rx.addr()])
            .arg(server_dir.join("router.pub"))
            .arg(dir.join(format!("{name}.pub")))
            .arg(dir.join(format!("{name}.key")))
            .arg(linger_ms)
            .output()
            .expect("run python");
        assert!(out.status.success(), "python client: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let recv = |limit: Duration| rx.recv_timeout(limit).unwrap();

    // Allowed: the REQUEST arrives, named after the key file.
    let msgid = run(&clients_dir, "pyclient", "10000");
    let got = recv(Duration::from_secs(10)).expect("REQUEST from the CURVE Python client");
    assert_eq!(got.user.as_deref(), Some("pyclient"));
    let message = got.message.expect("a valid eMQP message");
    assert_eq!(message.msgid, msgid);
    assert!(matches!(message.command, Command::Request(ref r) if r.queue == "default"), "{message:?}");

    // A key the router does not list: nothing arrives.
    run(&others_dir, "stranger", "1000");
    assert!(recv(Duration::from_millis(1500)).is_none(), "an unlisted Python client got through");
    let _ = std::fs::remove_dir_all(&root);
}

/// The whole path under CURVE: a router whose frontend and backend admit
/// only listed keys, a job manager and a client with their keys. The job
/// runs and its record names the client's key; a plaintext client and an
/// unlisted key get nothing.
#[test]
fn router_job_manager_and_client_over_curve() {
    use common::*;
    let keys = std::env::temp_dir().join(format!("emq-curve-e2e-{}", uuid::Uuid::new_v4()));
    keygen(&keys, "router");
    keygen(&keys, "alice");
    keygen(&keys, "jm1");
    keygen(&keys, "mallory");
    let (front, back) = (keys.join("front"), keys.join("back"));
    for (dir, name) in [(&front, "alice"), (&back, "jm1")] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::copy(keys.join(format!("{name}.pub")), dir.join(format!("{name}.pub"))).unwrap();
    }
    let k = |p: &Path| p.to_str().unwrap().to_owned();
    let (secret, fr, bk) = (k(&keys.join("router.key")), k(&front), k(&back));
    let (_router, a) = start_router(&[
        ("EMQ_CURVE_SECRET_KEY", secret.as_str()),
        ("EMQ_CURVE_FRONTEND_KEYS", fr.as_str()),
        ("EMQ_CURVE_BACKEND_KEYS", bk.as_str()),
    ]);
    let (server_pub, jm_key) = (k(&keys.join("router.pub")), k(&keys.join("jm1.key")));
    let _jm = start_jobmanager(
        &a.backend,
        "default",
        1,
        &[("EMQ_CURVE_SERVER_KEY", server_pub.as_str()), ("EMQ_CURVE_KEY", jm_key.as_str())],
    );
    wait_slots(&a.admin, 1);
    let send = |key: Option<&str>| {
        let mut cmd = Process::new(env!("CARGO_BIN_EXE_emq-send"));
        cmd.args(["--addr", &a.frontend, "--deadline", "5"]);
        if let Some(name) = key {
            cmd.args(["--curve-server-key", &server_pub, "--curve-key"]).arg(keys.join(format!("{name}.key")));
        }
        let out = cmd.args(["--wait", "benchjobs.add", "2", "3"]).current_dir(std::env::temp_dir()).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let (code, out) = send(Some("alice"));
    assert_eq!((code, out.as_str()), (Some(0), r#"{"value":5}"#));
    assert_eq!(send(None).0, Some(3), "a plaintext client gets nothing");
    assert_eq!(send(Some("mallory")).0, Some(3), "an unlisted key gets nothing");
    let w = admin(&a.admin, "ROUTER_SHOW_WORKERS");
    let jm = w["connected_workers"].as_object().unwrap().values().next().unwrap().clone();
    assert_eq!(jm["user"], "jm1", "{jm}");
    let status = admin(&a.admin, "STATUS");
    assert_eq!(status["accepted"], 1, "only alice's job was accepted");
}
