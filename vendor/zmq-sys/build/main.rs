//! emq patch of zmq-sys 0.12.0's build script: builds the bundled libzmq
//! 4.3.4 WITH libsodium, so `ZMQ_CURVE` (encryption and authentication) is
//! available. The upstream script passes `with_libsodium(None)`.
//!
//! libsodium comes from the `libsodium-sys-stable` crate, which compiles the
//! libsodium source tarball shipped inside the crate (no download, no system
//! package) and, through `links = "sodium"`, hands us its include and lib
//! directories as `DEP_SODIUM_INCLUDE` / `DEP_SODIUM_LIB`.

use std::env;
use std::path::PathBuf;

fn dep(name: &str) -> PathBuf {
    println!("cargo:rerun-if-env-changed={name}");
    match env::var_os(name) {
        Some(v) => PathBuf::from(v),
        None => panic!(
            "{} is not set: libsodium-sys-stable did not report its build \
             (it must be a normal dependency of zmq-sys)",
            name
        ),
    }
}

pub fn configure() {
    println!("cargo:rerun-if-changed=build/main.rs");
    println!("cargo:rerun-if-env-changed=PROFILE");

    // As a path dependency this package's build-script warnings are shown
    // on every clean build: libzmq's own compiler warnings (hundreds of
    // lines, nothing actionable) would drown the user's output. `-w` is
    // appended to the target-specific flags, which the `cc` crate adds
    // after (not instead of) the user's CFLAGS/CXXFLAGS.
    //
    // On Linux, libzmq's own build (CMake, autotools) finds eventfd and
    // defines ZMQ_HAVE_EVENTFD: a socket's mailbox (how its application
    // thread and its I/O thread wake each other, several times per
    // message) is then an eventfd. zeromq-src does not look, so without
    // this the mailbox is a Unix socket pair, which costs a socket buffer
    // per wake-up.
    if let Ok(target) = env::var("TARGET") {
        let linux = target.contains("linux");
        for var in ["CFLAGS", "CXXFLAGS"] {
            let key = format!("{var}_{}", target.replace('-', "_"));
            let mut flags = env::var(&key).unwrap_or_default();
            flags.push_str(" -w");
            if linux {
                flags.push_str(" -DZMQ_HAVE_EVENTFD=1 -DZMQ_HAVE_EVENTFD_CLOEXEC=1");
            }
            env::set_var(&key, flags.trim_start());
        }
    }

    let include = dep("DEP_SODIUM_INCLUDE");
    let lib = dep("DEP_SODIUM_LIB");
    // Note the argument order of `LibLocation::new`: lib dir first.
    zeromq_src::Build::new()
        .with_libsodium(Some(zeromq_src::LibLocation::new(lib, include)))
        .build();
}

fn main() {
    configure()
}
