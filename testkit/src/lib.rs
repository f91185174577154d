//! Skipping a test honestly.
//!
//! A test that cannot run here (not root, Postgres not installed, no MongoDB replica set) calls
//! [`skip`] or [`skip_without_mongodb`] and returns. Each skip is said on stderr and appended to
//! the file named by `QUORUMLAB_SKIP_LOG`, so `cargo xtask test` can end with a count of what was
//! skipped and why (cargo hides a passing test's stderr). With `QUORUMLAB_REQUIRE_REAL=1`, as CI
//! sets it, [`skip`] fails the test instead: there, a missing real part is a broken machine, not a
//! reason to pass. Only the MongoDB skip is declared acceptable, because no MongoDB server can be
//! installed on the project's machines.

use std::io::Write;

/// The environment variable that turns skips into failures.
pub const REQUIRE_REAL: &str = "QUORUMLAB_REQUIRE_REAL";
/// The environment variable naming the file skips are appended to.
pub const SKIP_LOG: &str = "QUORUMLAB_SKIP_LOG";
/// Why the MongoDB tests skip (also the reason recorded in the log).
pub const NO_MONGODB: &str =
    "QUORUMLAB_MONGODB_URI is not set (no MongoDB server can be installed on this machine)";

/// Whether real parts are required (`QUORUMLAB_REQUIRE_REAL=1`).
pub fn real_required() -> bool {
    std::env::var(REQUIRE_REAL).is_ok_and(|v| v == "1")
}

/// Skips the calling test because `why`; panics instead when real parts are required.
pub fn skip(why: &str) {
    assert!(
        !real_required(),
        "{REQUIRE_REAL}=1 and this test would skip: {why}"
    );
    record(why);
}

/// Skips the calling test because no MongoDB replica set is named: the one declared skip.
pub fn skip_without_mongodb() {
    record(NO_MONGODB);
}

fn record(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("(unnamed test)")
        .to_string();
    eprintln!("skipped: {why}");
    let Ok(path) = std::env::var(SKIP_LOG) else {
        return;
    };
    // One short line per skip, appended whole; concurrent tests may interleave lines, not bytes.
    let line = format!("{test}\t{}\n", why.replace(['\t', '\n'], " "));
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = file.write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, because it sets process-wide environment variables.
    #[test]
    fn a_skip_is_logged_and_refused_when_real_parts_are_required() {
        let log = std::env::temp_dir().join(format!("testkit-{}.tsv", std::process::id()));
        let _ = std::fs::remove_file(&log);
        std::env::set_var(SKIP_LOG, &log);
        std::env::remove_var(REQUIRE_REAL);
        skip("no etcd here");
        skip_without_mongodb();
        std::env::set_var(REQUIRE_REAL, "1");
        let refused = std::panic::catch_unwind(|| skip("no Postgres here"));
        skip_without_mongodb();
        std::env::remove_var(REQUIRE_REAL);
        let text = std::fs::read_to_string(&log).unwrap();
        let _ = std::fs::remove_file(&log);
        assert!(refused.is_err(), "a required skip must fail the test");
        let reasons: Vec<&str> = text
            .lines()
            .map(|l| l.split('\t').nth(1).unwrap())
            .collect();
        assert_eq!(reasons, ["no etcd here", NO_MONGODB, NO_MONGODB]);
        assert!(text.starts_with("tests::a_skip_is_logged"), "{text}");
    }
}
