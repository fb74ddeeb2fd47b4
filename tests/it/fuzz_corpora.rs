//! The fuzz corpora as regression tests: every file of `tests/fuzz/corpus/<target>/` (the
//! minimised corpora and the inputs of crashes found, `regression-*`) goes through the
//! same `gateway::fuzzing` entry the fuzz target calls, on stable and without libFuzzer.
//! An entry that panics fails the test, naming the file; so does a missing or empty
//! corpus, and a fuzz target without a test here.

use std::path::{Path, PathBuf};

/// A fuzz entry: takes any bytes, panics on a broken invariant.
type Entry = fn(&[u8]);

/// Every fuzz target and its entry.
const TARGETS: [(&str, Entry); 7] = [
    ("request_head", gateway::fuzzing::request_head),
    ("function_reply", gateway::fuzzing::function_reply),
    ("sigv4", gateway::fuzzing::sigv4),
    ("dialect_replies", gateway::fuzzing::dialect_replies),
    ("sendback_bodies", gateway::fuzzing::sendback_bodies),
    ("config", gateway::fuzzing::config),
    ("client_address", gateway::fuzzing::client_address),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Feeds each file of the target's corpus to `entry`; fails naming every file that panics.
fn replay(target: &str) {
    let Some((_, entry)) = TARGETS.iter().find(|(name, _)| *name == target) else {
        panic!("no entry for {target}");
    };
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "corpus {} is empty: the replay would test nothing",
        dir.display()
    );
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("corpus file");
        if std::panic::catch_unwind(|| entry(&data)).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} corpus files panic:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn every_fuzz_target_is_replayed() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .expect("tests/fuzz/fuzz_targets")
        .map(|entry| entry.expect("fuzz target").path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .filter_map(|path| Some(path.file_stem()?.to_str()?.to_owned()))
        .collect();
    on_disk.sort();
    let mut replayed: Vec<String> = TARGETS.iter().map(|(name, _)| (*name).to_owned()).collect();
    replayed.sort();
    assert_eq!(
        on_disk, replayed,
        "fuzz targets and replayed corpora differ"
    );
}

#[test]
fn request_head_corpus() {
    replay("request_head");
}

#[test]
fn function_reply_corpus() {
    replay("function_reply");
}

#[test]
fn sigv4_corpus() {
    replay("sigv4");
}

#[test]
fn dialect_replies_corpus() {
    replay("dialect_replies");
}

#[test]
fn sendback_bodies_corpus() {
    replay("sendback_bodies");
}

#[test]
fn config_corpus() {
    replay("config");
}

#[test]
fn client_address_corpus() {
    replay("client_address");
}
