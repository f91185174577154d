//! The durability lab's store from the command line: real SIGKILLs of a writing process lose no
//! acknowledged write under any fsync policy, the crash sweep on the simulated disk passes the
//! store and catches every broken build, and bad input (a corrupt snapshot among it) is one line,
//! exit 2, nothing written. Power cuts (as root, on an ext4 loop disk) lose what --fsync never
//! acknowledged and nothing else.

use std::path::Path;
use std::process::{Command, Output};

fn quorumlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorumlab"))
        .args(args)
        .output()
        .expect("run quorumlab")
}

fn files(dir: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn killed_writers_lose_no_acknowledged_write() {
    for (fsync, writers) in [("always", "1"), ("batch", "8"), ("never", "1")] {
        let out = quorumlab(&[
            "kv",
            "crash-test",
            "--kills",
            "60",
            "--fsync",
            fsync,
            "--writers",
            writers,
            "--json",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{fsync}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(r["kills"], 60, "{r}");
        assert_eq!(r["lost"], 0, "{r}");
        assert!(
            r["acknowledged"].as_u64().unwrap() > 60,
            "{fsync}: the child wrote: {r}"
        );
    }
}

#[test]
fn bad_input_is_one_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    assert!(
        quorumlab(&["kv", "put", "--dir", store.to_str().unwrap(), "a", "1"])
            .status
            .success()
    );
    let before = files(&store);
    let not_a_store = dir.path().join("mine");
    std::fs::create_dir(&not_a_store).unwrap();
    std::fs::write(not_a_store.join("notes.txt"), "keep").unwrap();
    let long_key = "k".repeat(1025);
    let cases: [(Vec<&str>, &str); 4] = [
        (
            vec![
                "kv",
                "put",
                "--dir",
                store.to_str().unwrap(),
                &long_key,
                "v",
            ],
            "a key has 1 to 1024 bytes",
        ),
        (
            vec![
                "kv",
                "put",
                "--dir",
                store.to_str().unwrap(),
                "--fsync",
                "sometimes",
                "a",
                "2",
            ],
            "no fsync policy",
        ),
        (
            vec!["kv", "get", "--dir", not_a_store.to_str().unwrap(), "a"],
            "is not a store",
        ),
        (
            vec![
                "kv",
                "put",
                "--dir",
                not_a_store.to_str().unwrap(),
                "a",
                "1",
            ],
            "is not a store",
        ),
    ];
    for (args, needle) in cases {
        let out = quorumlab(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    assert_eq!(files(&store), before, "the store is as it was");
    assert_eq!(files(&not_a_store), vec![("notes.txt".to_string(), 4)]);
    let out = quorumlab(&["kv", "get", "--dir", store.to_str().unwrap(), "a"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    let dir_arg = store.to_str().unwrap();
    assert!(quorumlab(&["kv", "put", "--dir", dir_arg, "gone", "x"])
        .status
        .success());
    assert!(quorumlab(&["kv", "delete", "--dir", dir_arg, "gone"])
        .status
        .success());
    let out = quorumlab(&["kv", "get", "--dir", dir_arg, "gone"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "(gone has no value)"
    );
    // A checkpoint, then a flipped bit in the snapshot: refused, nothing changed.
    let out = quorumlab(&["kv", "checkpoint", "--dir", store.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snapshot = store.join("snapshot");
    let mut bytes = std::fs::read(&snapshot).unwrap();
    bytes[20] ^= 4;
    std::fs::write(&snapshot, &bytes).unwrap();
    let before = files(&store);
    let out = quorumlab(&["kv", "put", "--dir", store.to_str().unwrap(), "b", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("snapshot is corrupt"), "{stderr}");
    assert_eq!(files(&store), before);
    assert_eq!(std::fs::read(&snapshot).unwrap(), bytes);
}

#[test]
fn the_crash_sweep_passes_the_store_and_catches_every_broken_build() {
    let out = quorumlab(&["kv", "sim", "--seeds", "1..=10000", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["violations"], 0, "{r}");
    assert!(
        r["torn_tails_cut"].as_u64().unwrap() > 0,
        "crashes tore the log: {r}"
    );
    for broken in ["skip-fsync", "skip-dir-fsync", "no-crc", "ack-before-fsync"] {
        let out = quorumlab(&["kv", "sim", "--seeds", "1..=2000", "--broken", broken]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{broken}: {stderr}");
        assert!(
            stderr.contains("lost or garbled an acknowledged write"),
            "{broken}: {stderr}"
        );
    }
    let out = quorumlab(&["kv", "sim", "--broken", "skip-nothing"]);
    assert_eq!(out.status.code(), Some(2));
    // The unsafe baseline: what --fsync never acknowledged, a power cut takes away.
    let out = quorumlab(&["kv", "sim", "--seeds", "1..=500", "--fsync", "never"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn step_shows_one_crash_from_the_page_cache_to_the_check() {
    let out = quorumlab(&["kv", "sim", "--step", "7"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for needed in [
        "disk: fsync wal.log: its bytes are durable",
        "and the POWER GOES",
        "bytes were in the page cache and not yet on the disk",
        "reboot: the disk holds what was synced",
        "recovered and checked: all",
    ] {
        assert!(text.contains(needed), "no '{needed}' in:\n{text}");
    }
    let broken = (1..50)
        .map(|seed| {
            quorumlab(&[
                "kv",
                "sim",
                "--step",
                &seed.to_string(),
                "--broken",
                "skip-fsync",
            ])
        })
        .find(|out| !out.status.success())
        .expect("a seed of the broken build fails");
    assert_eq!(broken.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&broken.stdout).contains("BROKEN"));
}

/// A power cut (the store's ext4 disk kept as its loop device held it, the page cache lost)
/// loses what --fsync never acknowledged, and nothing under always or batch.
#[test]
fn power_cuts_lose_only_what_fsync_never_acknowledged() {
    if !quorumlab_cluster::hosts::is_root() || !Path::new("/usr/sbin/mkfs.ext4").exists() {
        quorumlab_testkit::skip("kv power-cut needs root (loop devices, mount) and mkfs.ext4");
        return;
    }
    for (fsync, writers) in [("always", "1"), ("batch", "8"), ("never", "1")] {
        let out = quorumlab(&[
            "kv",
            "power-cut",
            "--cuts",
            "6",
            "--fsync",
            fsync,
            "--writers",
            writers,
            "--json",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let r: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|_| {
            panic!("{fsync}: {stdout}{}", String::from_utf8_lossy(&out.stderr))
        });
        assert_eq!(r["power_cuts"], 6, "{r}");
        assert!(r["acknowledged"].as_u64().unwrap() > 6, "{fsync}: {r}");
        if fsync == "never" {
            assert_eq!(out.status.code(), Some(1), "{r}");
            assert!(r["lost"].as_u64().unwrap() > 0, "never loses: {r}");
        } else {
            assert!(out.status.success(), "{fsync}: {r}");
            assert_eq!(r["lost"], 0, "{fsync}: {r}");
        }
    }
    let busy = tempfile::tempdir().unwrap();
    std::fs::write(busy.path().join("keep"), "x").unwrap();
    let out = quorumlab(&["kv", "power-cut", "--dir", busy.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        files(busy.path()),
        vec![("keep".to_string(), 1)],
        "nothing written"
    );
}
