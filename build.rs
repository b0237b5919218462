//! The `emq-jobmanager` binary embeds Python (through emq-pool): give it an
//! rpath to the libpython of the interpreter pyo3 was built against
//! (PYO3_PYTHON, else python3 on PATH), so the loader does not pick another
//! libpython with the same soname. See docs/pool.md.
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
}
