//! The repo's settings.toml documents every key with its built-in default:
//! loading it must give exactly the defaults, for every binary.

use emq_jobmanager::JobManagerSettings;
use emq_router::RouterSettings;
use std::path::Path;

fn root_file() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("settings.toml")
}

#[test]
fn settings_toml_equals_the_built_in_defaults() {
    let r: RouterSettings = emq_settings::load_from(Some(&root_file()), Path::new("/nonexistent")).unwrap();
    assert_eq!(r, RouterSettings::default());
    let mut j: JobManagerSettings = emq_settings::load_from(Some(&root_file()), Path::new("/nonexistent")).unwrap();
    let mut d = JobManagerSettings::default();
    assert_eq!(j.allowed_paths, d.allowed_paths);
    assert!(d.to_config().is_err(), "no allowed_paths: closed by default");
    j.allowed_paths = vec!["*".into()];
    d.allowed_paths = vec!["*".into()];
    assert_eq!(j.to_config().unwrap(), d.to_config().unwrap());
    assert_eq!(j.worker_config(), d.worker_config());
    assert_eq!(j.queues.parse().unwrap(), d.queues.parse().unwrap());
}

#[test]
fn every_settings_key_is_documented() {
    let text = std::fs::read_to_string(root_file()).unwrap();
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/settings.md")).unwrap();
    let keys: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(" = "))
        .map(|l| l.split(" = ").next().unwrap().trim())
        .collect();
    assert!(keys.len() > 20, "{keys:?}");
    let mut known: Vec<&str> = emq_settings::KNOWN_KEYS.to_vec();
    let mut listed = keys.clone();
    known.sort();
    listed.sort();
    assert_eq!(known, listed, "emq_settings::KNOWN_KEYS lists exactly the keys of settings.toml");
    for k in keys {
        assert!(doc.contains(&format!("`{k}`")), "docs/settings.md does not describe {k}");
    }
}
