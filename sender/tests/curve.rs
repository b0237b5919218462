//! CURVE between a DEALER ([`emq_sender::Sender::connect_curve`]) and a
//! ROUTER ([`emq_receiver::Receiver::bind_curve`]) on loopback: allowed keys
//! get through and are named, everybody else (plaintext, unknown key,
//! revoked key) never delivers a message.

use emq_protocol::{Command, Message};
use emq_receiver::{AllowList, CurveServer, Incoming, Key, Receiver, ZapHandler};
use emq_sender::{CurveClientKeys, Sender};
use std::time::Duration;

const DOMAIN: &str = "frontend";

fn pair() -> zmq::CurveKeyPair {
    zmq::CurveKeyPair::new().expect("curve keypair")
}

/// A context with a ZAP handler whose `frontend` list holds `allowed`, and
/// a CURVE ROUTER bound on a free loopback port.
fn server(allowed: &[(&str, &zmq::CurveKeyPair)]) -> (zmq::Context, ZapHandler, Receiver, zmq::CurveKeyPair) {
    let ctx = zmq::Context::new();
    let zap = ZapHandler::start(&ctx).expect("zap handler");
    let mut list = AllowList::new();
    for (name, p) in allowed {
        list.insert_key(name, Key(p.public_key)).unwrap();
    }
    zap.set_domain(DOMAIN, list);
    let server_keys = pair();
    let curve = CurveServer { secret: Key(server_keys.secret_key), domain: DOMAIN.into() };
    let rx = Receiver::bind_curve(&ctx, "tcp://127.0.0.1:*", 1000, &curve, &zap).expect("bind curve");
    (ctx, zap, rx, server_keys)
}

fn client_keys(server: &zmq::CurveKeyPair, me: &zmq::CurveKeyPair) -> CurveClientKeys {
    CurveClientKeys { server_public: server.public_key, public: me.public_key, secret: me.secret_key }
}

/// Waits up to `limit` for one message.
fn recv(rx: &Receiver, limit: Duration) -> Option<Incoming> {
    rx.recv_timeout(limit).unwrap()
}

/// How long a refused client is given to get a message through anyway.
const REFUSED_WAIT: Duration = Duration::from_millis(1500);

#[test]
fn allowed_key_flows_both_ways_and_is_named() {
    let alice = pair();
    let (ctx, _zap, rx, skeys) = server(&[("alice", &alice)]);
    let mut tx = Sender::connect_curve(&ctx, rx.addr(), "client-1".into(), 1000, &client_keys(&skeys, &alice)).unwrap();
    assert!(tx.is_curve() && rx.is_curve());
    tx.send(&Message::new(Command::Kbye)).unwrap();
    let got = recv(&rx, Duration::from_secs(10)).expect("message from an allowed key");
    assert_eq!(got.user.as_deref(), Some("alice"));
    assert_eq!(got.peer.as_bytes(), b"client-1");
    assert!(matches!(got.message, Ok(Message { command: Command::Kbye, .. })));
    // And back, encrypted the other way.
    rx.send(&got.peer, &Message::new(Command::Kbye)).unwrap();
    let back = tx.recv_timeout(10_000).unwrap().expect("reply").unwrap();
    assert_eq!(back.command, Command::Kbye);
    // A reopened socket (new identity) is still a CURVE client.
    tx.reopen().unwrap();
    tx.send(&Message::new(Command::Kbye)).unwrap();
    let again = recv(&rx, Duration::from_secs(10)).expect("message after reopen");
    assert_eq!(again.user.as_deref(), Some("alice"));
    assert_eq!(again.peer.as_bytes(), tx.identity().as_bytes());
}

#[test]
fn plaintext_client_is_refused() {
    let alice = pair();
    let (ctx, _zap, rx, _skeys) = server(&[("alice", &alice)]);
    let tx = Sender::connect(&ctx, rx.addr()).unwrap();
    tx.send(&Message::new(Command::Kbye)).unwrap();
    assert!(recv(&rx, REFUSED_WAIT).is_none(), "a plaintext client got through");
}

#[test]
fn unknown_key_is_refused() {
    let alice = pair();
    let mallory = pair();
    let (ctx, _zap, rx, skeys) = server(&[("alice", &alice)]);
    let tx = Sender::connect_curve(&ctx, rx.addr(), "m".into(), 1000, &client_keys(&skeys, &mallory)).unwrap();
    tx.send(&Message::new(Command::Kbye)).unwrap();
    assert!(recv(&rx, REFUSED_WAIT).is_none(), "an unknown key got through");
    // A client that has the wrong server key cannot complete the handshake
    // either, even with an allowed key pair.
    let wrong_server = pair();
    let tx2 = Sender::connect_curve(&ctx, rx.addr(), "a".into(), 1000, &client_keys(&wrong_server, &alice)).unwrap();
    tx2.send(&Message::new(Command::Kbye)).unwrap();
    assert!(recv(&rx, REFUSED_WAIT).is_none(), "a client with the wrong server key got through");
}

#[test]
fn revoked_key_is_refused_after_reload() {
    let alice = pair();
    let bob = pair();
    let (ctx, zap, rx, skeys) = server(&[("alice", &alice), ("bob", &bob)]);
    let tx = Sender::connect_curve(&ctx, rx.addr(), "a1".into(), 1000, &client_keys(&skeys, &alice)).unwrap();
    tx.send(&Message::new(Command::Kbye)).unwrap();
    assert_eq!(recv(&rx, Duration::from_secs(10)).expect("before revocation").user.as_deref(), Some("alice"));
    // Reload without alice.
    zap.set_domain(DOMAIN, AllowList::from_pairs([("bob", Key(bob.public_key).to_z85().as_str())]).unwrap());
    assert_eq!(zap.names(DOMAIN).unwrap(), ["bob"]);
    let tx2 = Sender::connect_curve(&ctx, rx.addr(), "a2".into(), 1000, &client_keys(&skeys, &alice)).unwrap();
    tx2.send(&Message::new(Command::Kbye)).unwrap();
    assert!(recv(&rx, REFUSED_WAIT).is_none(), "a revoked key got through");
    // Bob still gets in.
    let tb = Sender::connect_curve(&ctx, rx.addr(), "b1".into(), 1000, &client_keys(&skeys, &bob)).unwrap();
    tb.send(&Message::new(Command::Kbye)).unwrap();
    assert_eq!(recv(&rx, Duration::from_secs(10)).expect("bob").user.as_deref(), Some("bob"));
    drop((tx, tx2, tb));
}

#[test]
fn plaintext_socket_unchanged_beside_a_zap_handler() {
    // A ZAP handler in the same context must not affect plaintext sockets
    // (no ZAP domain: libzmq does not ask it).
    let ctx = zmq::Context::new();
    let _zap = ZapHandler::start(&ctx).unwrap();
    let rx = Receiver::bind(&ctx, "tcp://127.0.0.1:*", 1000).unwrap();
    let tx = Sender::connect(&ctx, rx.addr()).unwrap();
    tx.send(&Message::new(Command::Kbye)).unwrap();
    let got = recv(&rx, Duration::from_secs(10)).expect("plaintext message");
    assert_eq!(got.user, None);
    assert!(!rx.is_curve());
    // One handler per context.
    assert!(ZapHandler::start(&ctx).is_err());
}

#[test]
fn key_files_load_on_the_client_side() {
    let dir = std::env::temp_dir().join(format!("emq-sender-curve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = emq_receiver::curve::write_key_pair(&dir, "router").unwrap();
    let me = emq_receiver::curve::write_key_pair(&dir, "alice").unwrap();
    let keys = CurveClientKeys::from_key_dir(&server.public_path, &dir, "alice").unwrap();
    assert_eq!(keys.server_public, server.public.0);
    assert_eq!(keys.public, me.public.0);
    assert!(CurveClientKeys::from_key_dir(&server.public_path, &dir, "nobody").is_err());
    assert!(CurveClientKeys::from_z85("x", "y", "z").is_err());
    assert_eq!(format!("{keys:?}"), "CurveClientKeys(..)");
    let _ = std::fs::remove_dir_all(&dir);
}
