//! A private PostgreSQL 15 cluster for one test (Debian's server in
//! /usr/lib/postgresql/15/bin): `initdb` and `pg_ctl` on a free port in a
//! temporary directory — as the `postgres` user when the tests run as root
//! — stopped (`-m immediate`) and removed when the guard drops, also when
//! the test fails. And a TCP proxy whose forwarding a test can cut.

use super::free_port;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where Debian puts the server binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Whether this machine has a PostgreSQL server (`.ci/run` installs it).
pub fn pg_available() -> bool {
    Path::new(PG_BIN).join("pg_ctl").exists()
}

pub struct PgCluster {
    pub dir: PathBuf,
    pub port: u16,
}

fn as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs a server binary, as `postgres` when we are root (initdb refuses root).
fn pg_command(bin: &str) -> Command {
    let path = Path::new(PG_BIN).join(bin);
    if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

impl PgCluster {
    /// initdb + start; panics (after cleaning up) when it cannot.
    pub fn start() -> PgCluster {
        let dir = std::env::temp_dir().join(format!("emq-pg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        if as_root() {
            let ok = Command::new("chown").args(["postgres:postgres"]).arg(&dir).status().unwrap().success();
            assert!(ok, "chown postgres {}", dir.display());
        }
        let out = pg_command("initdb")
            .args(["-A", "trust", "-U", "emq", "--no-sync", "-D"])
            .arg(dir.join("data"))
            .output()
            .expect("initdb");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let cluster = PgCluster { dir, port: free_port() };
        cluster.start_server();
        cluster
    }

    fn start_server(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=on -c synchronous_commit=on",
            self.port,
            self.dir.display()
        );
        let out = pg_command("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(self.dir.join("data"))
            .args(["-o", &opts, "-l"])
            .arg(self.dir.join("log"))
            .arg("start")
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    /// The URL routers are given.
    pub fn url(&self) -> String {
        self.url_via(self.port)
    }

    /// The URL through another port (a proxy in front).
    pub fn url_via(&self, port: u16) -> String {
        format!("postgresql://emq@127.0.0.1:{port}/postgres")
    }

    /// `pg_ctl stop -m immediate`: a crash, as far as PostgreSQL knows.
    pub fn stop_immediate(&self) {
        let _ = pg_command("pg_ctl")
            .args(["-w", "-D"])
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }

    /// Starts it again (after [`Self::stop_immediate`]): crash recovery.
    pub fn restart(&self) {
        self.start_server();
    }

    /// One SQL statement through psql; its output, unaligned.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-U", "emq", "-d", "postgres", "-p"])
            .arg(self.port.to_string())
            .args(["-c", sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_immediate();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy on a free loopback port in front of `target`; [`Self::cut`]
/// stops it forwarding (connections stay open, nothing passes: a network
/// that drops everything) until [`Self::heal`].
pub struct CutProxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl CutProxy {
    pub fn start(target: u16) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (cut.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        if c.load(Ordering::Relaxed) {
                            // A cut network: the connection never gets anywhere.
                            let (c2, s2) = (c.clone(), s.clone());
                            std::thread::spawn(move || {
                                let _held = client;
                                while c2.load(Ordering::Relaxed) && !s2.load(Ordering::Relaxed) {
                                    std::thread::sleep(Duration::from_millis(50));
                                }
                            });
                            continue;
                        }
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                        for (from, to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                        {
                            let (c2, s2) = (c.clone(), s.clone());
                            std::thread::spawn(move || pump(from, to, &c2, &s2));
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        CutProxy { port, cut, stop }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies bytes while not cut; while cut, holds them (reads nothing more,
/// writes nothing).
fn pump(mut from: TcpStream, mut to: TcpStream, cut: &AtomicBool, stop: &AtomicBool) {
    from.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if cut.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                // Bytes read just before a cut are held until it heals.
                while cut.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => {
                let _ = to.shutdown(std::net::Shutdown::Write);
                return;
            }
        }
    }
}
