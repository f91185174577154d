//! Real chunk moves between live Postgres shards (root; etcd and Postgres 15 installed): a move
//! under write load loses and duplicates nothing, a router that missed the map change retries
//! instead of writing to the old owner, and a scenario whose donor is killed in the critical
//! section ends with one owner per chunk and no acknowledged row lost, and a router cut off (on its
//! own namespace host) during moves writes nothing while the other router loses nothing; a move by
//! hand (`cluster move-chunk`) refuses an unknown shard or chunk and a range that is not one
//! chunk's, in one line with exit 2, and moves the chunk when asked right.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quorumlab_cluster::lab::Lab;
use quorumlab_cluster::sharded::lab::{self as sharded, chunk_table};
use quorumlab_cluster::sharded::map::ChunkMap;
use quorumlab_cluster::sharded::mover::{
    delete_range, move_chunk, MoveHooks, MoveLimits, MoveOutcome,
};
use quorumlab_cluster::sharded::router::{Router, RouterOptions, WriteOutcome};
use quorumlab_cluster::sharded::run::{run_sharded_real, RealShardedRun};
use quorumlab_experiment::history::{History, Op, OpKind, Outcome};
use quorumlab_experiment::rebalance::{bad_reads, MigrationOutcome, ReadRecord};
use quorumlab_experiment::Scenario;

mod common;

use common::LabDir;

const NEEDS: &[common::Requirement] = &[common::ETCD, common::POSTGRES];
const SHARDS: usize = 3;
const CHUNKS: usize = 6;

fn up(dir: &LabDir, rt: &tokio::runtime::Runtime) -> Lab {
    let binary = Path::new(env!("CARGO_BIN_EXE_quorumlab"));
    let layout = sharded::Layout {
        shards: SHARDS,
        empty: 0,
        chunks: CHUNKS,
        routers: 0,
    };
    rt.block_on(sharded::up(&dir.0, layout, binary)).unwrap()
}

/// Write `id` to key `key`, acknowledged before anything else happened.
fn acked_put(id: u64, key: u32) -> Op {
    Op {
        id,
        client: 0,
        kind: OpKind::Put { key, value: id },
        invoke_us: 1,
        complete_us: 2,
        outcome: Outcome::Ok {
            read: None,
            swapped: None,
        },
        node: None,
    }
}

/// What the writers saw.
#[derive(Default)]
struct Written {
    acked: BTreeSet<u64>,
    unknown: BTreeSet<u64>,
    failed: Vec<String>,
    held_ms_max: u64,
}

/// `writers` tasks insert unique ids through `router` until `stop`.
async fn write_until(router: Arc<Router>, writers: u64, stop: Arc<AtomicBool>) -> Written {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (router, stop) = (router.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Written::default();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = (w << 32) | n;
                match router.insert(id, id).await {
                    WriteOutcome::Ok { held_ms, .. } => {
                        seen.acked.insert(id);
                        seen.held_ms_max = seen.held_ms_max.max(held_ms);
                    }
                    WriteOutcome::Unknown(_) => {
                        seen.unknown.insert(id);
                    }
                    WriteOutcome::Fail(why) => seen.failed.push(why),
                }
            }
            seen
        }));
    }
    let mut all = Written::default();
    for task in tasks {
        let seen = task.await.unwrap();
        all.acked.extend(seen.acked);
        all.unknown.extend(seen.unknown);
        all.failed.extend(seen.failed);
        all.held_ms_max = all.held_ms_max.max(seen.held_ms_max);
    }
    all
}

/// Every id on the owner of its chunk, as the map says at the end: id → how many owners hold it.
async fn owned_ids(lab: &Lab) -> BTreeMap<u64, usize> {
    let mut map = ChunkMap::connect(lab).await.unwrap();
    let view = map.read(CHUNKS).await.unwrap();
    let mut count = BTreeMap::new();
    for (chunk, entry) in view.table.iter().enumerate() {
        let ids = shard_ids(lab, entry.shard, chunk as u32).await;
        for id in ids {
            *count.entry(id as u64).or_insert(0) += 1;
        }
    }
    count
}

/// The ids in `chunk`'s table on `shard`, ascending.
async fn shard_ids(lab: &Lab, shard: usize, chunk: u32) -> Vec<i64> {
    let mut conn = sharded::connect(lab, shard, Duration::from_secs(5))
        .await
        .unwrap();
    sqlx::query_scalar(&format!(
        "SELECT id FROM {} ORDER BY id",
        chunk_table(chunk)
    ))
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

#[test]
fn moves_under_write_load_lose_and_duplicate_nothing() {
    if common::skipped(NEEDS) {
        return;
    }
    let _one = common::one_lab();
    let dir = LabDir::new("sharded-moves");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let lab = up(&dir, &rt);
    rt.block_on(async {
        let router = Arc::new(Router::start(&lab, RouterOptions::default()).await.unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let writers = tokio::spawn(write_until(router.clone(), 6, stop.clone()));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut map = ChunkMap::connect(&lab).await.unwrap();
        // Every chunk of s1 and s2 to the next shard, one after another, under load.
        let mut reports = Vec::new();
        for (id, (chunk, to)) in [(0u32, 1usize), (1, 2), (3, 1), (4, 2)]
            .into_iter()
            .enumerate()
        {
            let report = move_chunk(
                &lab,
                &mut map,
                chunk,
                to,
                id as u64 + 1,
                MoveLimits::default(),
                &mut MoveHooks::default(),
            )
            .await
            .unwrap();
            eprintln!("move: {report:?}");
            assert_eq!(report.outcome, MoveOutcome::Committed, "{report:?}");
            assert!(report.rows > 0, "the chunk had rows to move: {report:?}");
            reports.push(report);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
        let written = writers.await.unwrap();
        for r in &reports {
            delete_range(&lab, r.from, r.chunk).await.unwrap();
        }
        let owned = owned_ids(&lab).await;
        let lost: Vec<_> = written
            .acked
            .iter()
            .filter(|id| !owned.contains_key(id))
            .collect();
        let doubled: Vec<_> = owned.iter().filter(|(_, &n)| n > 1).collect();
        let strangers: Vec<_> = owned
            .keys()
            .filter(|id| !written.acked.contains(id) && !written.unknown.contains(id))
            .collect();
        eprintln!(
            "acked {}, unknown {}, failed {}, longest hold {} ms, stale retries {}",
            written.acked.len(),
            written.unknown.len(),
            written.failed.len(),
            written.held_ms_max,
            router.stats.stale_retries.load(Ordering::Relaxed)
        );
        assert!(written.acked.len() > 1000, "the load ran");
        assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
        assert!(doubled.is_empty(), "on two owners: {doubled:?}");
        assert!(strangers.is_empty(), "never written: {strangers:?}");
        assert!(written.failed.is_empty(), "{:?}", written.failed);
        assert!(
            router.stats.held.load(Ordering::Relaxed) > 0,
            "writes waited for a critical section"
        );
    });
}

#[test]
fn a_router_that_missed_the_change_retries_on_the_new_owner() {
    if common::skipped(NEEDS) {
        return;
    }
    let _one = common::one_lab();
    let dir = LabDir::new("sharded-stale");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let lab = up(&dir, &rt);
    rt.block_on(async {
        let blind = RouterOptions {
            watch: false,
            ..RouterOptions::default()
        };
        let stale = Router::start(&lab, blind).await.unwrap();
        let reader = Router::start(&lab, blind).await.unwrap();
        let key = (0..).find(|&k| stale.chunk_of(k) == 0).unwrap();
        assert!(matches!(
            stale.insert(1, key).await,
            WriteOutcome::Ok { shard: 0, .. }
        ));
        let mut map = ChunkMap::connect(&lab).await.unwrap();
        let report = move_chunk(
            &lab,
            &mut map,
            0,
            2,
            1,
            MoveLimits::default(),
            &mut MoveHooks::default(),
        )
        .await
        .unwrap();
        assert_eq!(report.outcome, MoveOutcome::Committed);
        assert_eq!(
            stale.cached().table[0].shard,
            0,
            "it has not heard of the move"
        );
        // A read sent to the old owner is refused as stale, and read again from the new one.
        assert_eq!(reader.read(key, false).await, Some(vec![1]));
        assert_eq!(reader.stats.stale_retries.load(Ordering::Relaxed), 1);
        let outcome = stale.insert(2, key).await;
        assert!(
            matches!(outcome, WriteOutcome::Ok { shard: 2, .. }),
            "{outcome:?}"
        );
        assert_eq!(stale.stats.stale_retries.load(Ordering::Relaxed), 1);
        // The old owner refused and holds neither row as its own; the new owner has both.
        let mut donor = sharded::connect(&lab, 0, Duration::from_secs(5))
            .await
            .unwrap();
        let owned: i64 = sqlx::query_scalar("SELECT count(*) FROM ql_owned WHERE chunk = 0")
            .fetch_one(&mut donor)
            .await
            .unwrap();
        assert_eq!(owned, 0);
        assert_eq!(
            shard_ids(&lab, 0, 0).await,
            vec![1],
            "the orphan copy, until range deletion"
        );
        assert_eq!(shard_ids(&lab, 2, 0).await, vec![1, 2]);
        // A broadcast asks every shard: the donor's orphan copy is not returned. The broken
        // build returns it beside the owner's, and the read check says so.
        let mut both = stale.read(key, true).await.unwrap();
        both.sort_unstable();
        assert_eq!(both, vec![1, 2]);
        let broken = RouterOptions {
            orphan_reads: true,
            ..RouterOptions::default()
        };
        let broken = Router::start(&lab, broken).await.unwrap();
        let orphaned = broken.read(key, true).await.unwrap();
        let history = History {
            ops: [1, 2].map(|id| acked_put(id, key as u32)).to_vec(),
        };
        let record = |ids: Vec<u64>| ReadRecord {
            client: 9,
            key: key as u32,
            broadcast: true,
            invoke_us: 10,
            complete_us: 11,
            ids: Some(ids),
        };
        assert!(bad_reads(&history, &[record(both)]).is_empty());
        let bad = bad_reads(&history, &[record(orphaned.clone())]);
        assert_eq!(bad.len(), 1, "{orphaned:?}");
        assert!(bad[0].contains("returned a document twice"), "{bad:?}");
        assert_eq!(delete_range(&lab, 0, 0).await.unwrap(), 1);
    });
}

/// Built-in scenario `name`, cut to 12 s, run once on a fresh lab.
fn run_for_12_s(name: &str) -> RealShardedRun {
    let _one = common::one_lab();
    let dir = LabDir::new(name);
    let mut scenario = Scenario::load(name).unwrap();
    scenario.duration_ms = 12_000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_quorumlab"));
    rt.block_on(run_sharded_real(&scenario, 1, &dir.0, binary))
        .unwrap()
}

#[test]
fn a_donor_killed_in_the_critical_section_leaves_one_owner_and_loses_nothing() {
    if common::skipped(NEEDS) {
        return;
    }
    let run = run_for_12_s("shard-donor-crash");
    let s = &run.summary;
    eprintln!("migrations: {:?}", run.migrations);
    let first = &run.migrations[0];
    assert_eq!(first.outcome, MigrationOutcome::Aborted, "{first:?}");
    assert!(
        first.critical_from_us.is_some(),
        "the kill came in the critical section"
    );
    assert!(
        s.migrations_committed >= 1,
        "the balancer carried on after the recovery: {s:?}"
    );
    assert!(s.acked_writes > 1000, "{s:?}");
    assert_eq!(s.lost_writes, 0, "{s:?}");
    assert!(
        s.invariant_violations.is_empty(),
        "{:?}",
        s.invariant_violations
    );
}

#[test]
fn a_router_cut_off_during_moves_fails_its_writes_and_the_other_loses_nothing() {
    if common::skipped(NEEDS) {
        return;
    }
    let run = run_for_12_s("shard-stale-router");
    let s = &run.summary;
    eprintln!("summary: {s:?}");
    // r1 is cut off from the clone of the second migration on, for 5 s; its clients are the
    // even ones (client c writes through router c % 2).
    eprintln!("faults: {:?}", run.faults);
    let at_ms = |prefix: &str| {
        run.faults
            .iter()
            .find(|f| f.label.starts_with(prefix))
            .unwrap_or_else(|| panic!("no '{prefix}' in {:?}", run.faults))
            .at_ms
    };
    let (cut_ms, heal_ms) = (at_ms("cut r1"), at_ms("heal r1"));
    assert!(
        (4900..5500).contains(&(heal_ms - cut_ms)),
        "{cut_ms} {heal_ms}"
    );
    // Writes that began after the cut and would have had their answer before the heal.
    let cut_us = cut_ms * 1000..heal_ms * 1000 - 1_500_000;
    let in_cut = |op: &&quorumlab_experiment::history::Op| cut_us.contains(&op.invoke_us);
    let acked = |op: &&&quorumlab_experiment::history::Op| {
        matches!(
            op.outcome,
            quorumlab_experiment::history::Outcome::Ok { .. }
        )
    };
    let (r1, r2): (Vec<_>, Vec<_>) = run
        .history
        .ops
        .iter()
        .filter(in_cut)
        .partition(|op| op.client % 2 == 0);
    assert!(!r1.is_empty() && !r2.is_empty());
    assert_eq!(
        r1.iter().filter(acked).count(),
        0,
        "nothing written through the cut-off router: {:?}",
        r1.iter().filter(acked).take(3).collect::<Vec<_>>()
    );
    assert!(
        r2.iter().filter(acked).count() * 10 >= r2.len() * 9,
        "the other router kept writing: {} of {}",
        r2.iter().filter(acked).count(),
        r2.len()
    );
    assert!(s.migrations_committed >= 3, "{s:?}");
    assert_eq!(s.lost_writes, 0, "{s:?}");
    assert!(s.reads > 500, "the clients read too: {s:?}");
    assert_eq!(s.bad_reads, 0, "{:?}", s.bad_read_examples);
    assert!(
        s.invariant_violations.is_empty(),
        "{:?}",
        s.invariant_violations
    );
}

/// Runs `quorumlab cluster move-chunk ARGS` on the lab in `dir`: (exit code, stdout, stderr).
fn move_chunk_cli(dir: &LabDir, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quorumlab"))
        .args(["cluster", "move-chunk", "--state-dir"])
        .arg(&dir.0)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn moving_a_chunk_by_hand_refuses_an_unknown_shard_and_overlapping_ranges() {
    if common::skipped(NEEDS) {
        return;
    }
    let _one = common::one_lab();
    let dir = LabDir::new("sharded-move-chunk");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let lab = up(&dir, &rt);
    let map_now = || {
        rt.block_on(async {
            let mut map = ChunkMap::connect(&lab).await.unwrap();
            map.read(CHUNKS).await.unwrap()
        })
    };
    let before = map_now();
    // Chunk c starts on s{c % 3 + 1}; six even chunks of width 0x2aaaaaaaaaaaaaab.
    let refused = [
        (
            vec!["--chunk", "1", "--to", "s9"],
            "unknown shard s9: the lab's shards are s1..s3",
        ),
        (
            vec!["--chunk", "6", "--to", "s3"],
            "unknown chunk 6: the lab's chunks are 0..5",
        ),
        (
            vec!["--range", "0..0x3000000000000000", "--to", "s3"],
            "overlaps chunks 0 (0x0000000000000000..0x2aaaaaaaaaaaaaab) to 1",
        ),
        (
            vec![
                "--range",
                "0x2aaaaaaaaaaaaaab..0x3000000000000000",
                "--to",
                "s3",
            ],
            "is only part of chunk 1",
        ),
        (
            vec!["--chunk", "1", "--to", "s2"],
            "chunk 1 is already on s2",
        ),
    ];
    for (args, expected) in refused {
        let (code, stdout, stderr) = move_chunk_cli(&dir, &args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
    }
    assert_eq!(map_now(), before, "a refused move changes nothing");
    rt.block_on(async {
        let mut conn = sharded::connect(&lab, 1, Duration::from_secs(5))
            .await
            .unwrap();
        let sql = format!("INSERT INTO {} (id, key) VALUES (7, 7)", chunk_table(1));
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    });
    let range = "0x2aaaaaaaaaaaaaab..0x5555555555555556";
    let (code, stdout, stderr) = move_chunk_cli(&dir, &["--range", range, "--to", "s3"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("chunk 1 (0x2aaaaaaaaaaaaaab..0x5555555555555556) s2 -> s3: Committed"),
        "{stdout}"
    );
    let after = map_now();
    assert_eq!(after.table[1].shard, 2, "s3 owns chunk 1");
    assert!(after.table[1].version > before.table[1].version);
    rt.block_on(async {
        assert_eq!(shard_ids(&lab, 2, 1).await, vec![7], "the row moved");
        let mut donor = sharded::connect(&lab, 1, Duration::from_secs(5))
            .await
            .unwrap();
        let left: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(chunk_table(1))
            .fetch_one(&mut donor)
            .await
            .unwrap();
        assert_eq!(left, None, "the donor's copy was deleted");
    });
}
