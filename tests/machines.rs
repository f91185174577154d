//! The path an operator takes, on machines made here: `machines up` -> `ansible-playbook site.yml`
//! (twice: the second changes nothing) -> the same scenario files through the agents, from the
//! inventory -> the agent refusing what it must -> `machines down` leaving nothing.
//!
//! Root only (mounts, bridges, nftables, systemd-nspawn), and Ansible from the workspace's
//! virtualenv (`cargo xtask test` makes it and names it in `QUORUMLAB_ANSIBLE_BIN`). The base
//! image is built once and cached (`/var/cache/quorumlab/images`), so a second run of this test
//! only boots and provisions.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use quorumlab_cluster::agent::connect;
use quorumlab_cluster::inventory::Inventory;
use quorumlab_cluster::pki::DriverTls;
use quorumlab_proto::agent::agent_client::AgentClient;
use quorumlab_proto::agent::{CapabilitiesRequest, ShapeRequest, StatusRequest};
use serde_json::Value;

const QUORUMLAB: &str = env!("CARGO_BIN_EXE_quorumlab");

/// Why this machine cannot run the test, or `None`.
fn skip_reason() -> Option<String> {
    if !quorumlab_cluster::hosts::is_root() {
        return Some("not root: machines need mounts, bridges and systemd-nspawn".into());
    }
    for program in [
        "/usr/bin/systemd-nspawn",
        "/usr/sbin/debootstrap",
        "/usr/sbin/nft",
    ] {
        if !Path::new(program).exists() {
            return Some(format!(
                "{program} is missing (cargo xtask test installs it)"
            ));
        }
    }
    if !ansible_bin().join("ansible-playbook").exists() {
        return Some("no Ansible: run through cargo xtask test, which installs it".into());
    }
    None
}

fn ansible_bin() -> PathBuf {
    std::env::var_os("QUORUMLAB_ANSIBLE_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ansible-venv/bin"),
        PathBuf::from,
    )
}

/// The machines' state directory; `machines down` runs on drop, even when an assertion fails.
struct Machines(PathBuf);

impl Drop for Machines {
    fn drop(&mut self) {
        let _ = Command::new(QUORUMLAB)
            .args(["machines", "down", "--state-dir"])
            .arg(&self.0)
            .output();
    }
}

fn quorumlab(args: &[&str]) -> Output {
    let out = Command::new(QUORUMLAB).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "quorumlab {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What one playbook run changed: each host's `changed=` count from the recap, and the
/// tasks that reported `changed`, so a failed idempotence check names its culprit.
struct Changes {
    per_host: Vec<u64>,
    tasks: Vec<String>,
}

/// Runs the playbook and reads what it changed.
fn playbook(inventory: &Path, extra: &[&str]) -> Changes {
    let ansible_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible");
    let out = Command::new(ansible_bin().join("ansible-playbook"))
        .arg("-i")
        .arg(inventory)
        .args(extra)
        .arg("site.yml")
        .args(["-e", &format!("quorumlab_binary={QUORUMLAB}")])
        .current_dir(&ansible_dir)
        .env("ANSIBLE_NOCOLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ansible-playbook failed:\n{text}");
    let per_host = text
        .lines()
        .filter(|l| l.contains(" : ok="))
        .map(|l| {
            let changed = l.split("changed=").nth(1).unwrap();
            changed.split_whitespace().next().unwrap().parse().unwrap()
        })
        .collect();
    let mut task = "";
    let mut tasks = Vec::new();
    for line in text.lines() {
        if line.starts_with("TASK [") || line.starts_with("RUNNING HANDLER [") {
            task = line.trim_end_matches(['*', ' ']);
        } else if line.starts_with("changed: [") {
            tasks.push(format!("{task} {line}"));
        }
    }
    Changes { per_host, tasks }
}

#[test]
fn machines_provisioned_by_ansible_run_the_simulators_scenarios() {
    if let Some(why) = skip_reason() {
        quorumlab_testkit::skip(&why);
        return;
    }
    let _one = common::one_lab();
    let dir = std::env::temp_dir().join(format!("quorumlab-machines-{}", std::process::id()));
    let state = Machines(dir.clone());
    let state_dir = dir.to_str().unwrap();
    let up = json(&quorumlab(&[
        "machines",
        "up",
        "--nodes",
        "3",
        "--state-dir",
        state_dir,
        "--json",
    ]));
    let inventory = PathBuf::from(up["inventory"].as_str().unwrap());
    eprintln!(
        "machines: image {:.0} s, boot to SSH {:.1} s",
        up["image_s"].as_f64().unwrap(),
        up["boot_to_ssh_s"].as_f64().unwrap()
    );

    let first = playbook(&inventory, &[]).per_host;
    assert_eq!(first.len(), 3, "a recap line per machine");
    assert!(
        first.iter().all(|&c| c > 0),
        "the first run provisions: {first:?}"
    );
    let second = playbook(&inventory, &[]);
    assert_eq!(
        second.per_host,
        vec![0, 0, 0],
        "a second run changes nothing, but it changed:\n{}",
        second.tasks.join("\n")
    );
    mongodb_role_runs_in_check_mode(&inventory, &dir);

    scenarios_run_from_the_inventory(&inventory, &dir);
    sharded_scenarios_run_from_the_inventory(&inventory, &dir);
    agents_refuse_what_they_must(&inventory);

    drop(state);
    assert_nothing_left(&dir);
}

/// No mongod can be had here: the role runs in check mode, on every machine as a mongodb host.
fn mongodb_role_runs_in_check_mode(inventory: &Path, dir: &Path) {
    let extra = dir.join("mongodb-hosts.yml");
    std::fs::write(&extra, "mongodb:\n  hosts:\n    n1:\n    n2:\n    n3:\n").unwrap();
    let extra = extra.to_str().unwrap().to_string();
    playbook(inventory, &["-i", &extra, "--check", "--limit", "mongodb"]);
}

/// `quorumlab run SCENARIO --inventory` on the machines, as JSON.
struct Runner<'a> {
    inventory: &'a str,
    run_dir: String,
}

impl Runner<'_> {
    fn run(&self, scenario: &str) -> Value {
        json(&quorumlab(&[
            "run",
            scenario,
            "--inventory",
            self.inventory,
            "--state-dir",
            &self.run_dir,
            "--json",
        ]))
    }

    /// `run SCENARIO --inventory`, which must be refused before anything runs: exit 2 and one
    /// line, returned.
    fn refused(&self, scenario: &str) -> String {
        let out = Command::new(QUORUMLAB)
            .args(["run", scenario, "--inventory", self.inventory])
            .args(["--state-dir", &self.run_dir])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        stderr
    }
}

/// A built-in scenario file with one piece of text replaced, written into `dir`.
fn variant(dir: &Path, name: &str, from: &str, to: &str) -> PathBuf {
    let file = format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{name} has {from}");
    let path = dir.join(format!("{name}-variant.toml"));
    std::fs::write(&path, text.replace(from, to)).unwrap();
    path
}

fn scenarios_run_from_the_inventory(inventory: &Path, dir: &Path) {
    let runner = Runner {
        inventory: inventory.to_str().unwrap(),
        run_dir: dir.join("runs").to_str().unwrap().to_string(),
    };
    let kill_run = &runner.run("etcd-leader-kill")[0];
    let kill = &kill_run["summary"];
    assert!(
        kill["election_ms"].as_u64().is_some(),
        "a new leader: {kill}"
    );
    assert_eq!(kill["verdict"]["verdict"], "linearizable", "{kill}");
    // The agents' own metrics (the Ansible template's metrics_listen) count the crash and the
    // restart once each: nothing else in the run signals a process.
    assert_eq!(
        kill_run["agent_faults"],
        serde_json::json!({"signal-kill": 1, "signal-start": 1}),
        "{kill_run:#}"
    );

    // One mode of pg-failover: asynchronous streaming.
    let async_only = variant(
        dir,
        "pg-failover",
        r#"modes = ["async", "sync"]"#,
        r#"modes = ["async"]"#,
    );
    let pg_run = &runner.run(async_only.to_str().unwrap())[0];
    assert_eq!(
        pg_run["agent_faults"],
        serde_json::json!({"signal-kill": 1}),
        "the primary's crash, counted by its agent"
    );
    let pg = &pg_run["summary"];
    assert!(pg["new_primary"].is_string(), "{pg}");
    assert_ne!(pg["new_primary"], pg["old_primary"], "{pg}");
    assert_eq!(pg["dual_primary_ms"], 0, "never two primaries: {pg}");

    one_way_partition_as_the_simulator_predicts(&runner);
    delay_is_refused_without_netem(&runner, dir);
}

/// The sharded lab on the machines' provisioned shards (Ansible's `shard` role, port 5433 beside
/// Patroni's Postgres): shard-donor-crash cut to two shards and one added, for three machines. The
/// donor killed in the first move's critical section leaves one owner and loses no acknowledged
/// write; a second run on the same shards starts as fresh as the first (what the first left is
/// dropped); cutting a router off is refused in one line (the routers run in the driver).
fn sharded_scenarios_run_from_the_inventory(inventory: &Path, dir: &Path) {
    let runner = Runner {
        inventory: inventory.to_str().unwrap(),
        run_dir: dir.join("sharded-runs").to_str().unwrap().to_string(),
    };
    let three = variant(
        dir,
        "shard-donor-crash",
        "shards = 3\nnew_shards = 1",
        "shards = 2\nnew_shards = 1",
    );
    let short = dir.join("shard-donor-crash-short.toml");
    let text = std::fs::read_to_string(&three).unwrap();
    std::fs::write(
        &short,
        text.replace("duration_ms = 30000", "duration_ms = 12000")
            .replace("nodes = 9", "nodes = 8"),
    )
    .unwrap();
    for pass in 1..=2 {
        let run = &runner.run(short.to_str().unwrap())[0];
        let s = &run["summary"];
        eprintln!(
            "sharded on the machines, pass {pass}: migrations {} committed / {} aborted, {} writes acknowledged, {} lost, faults {}",
            s["migrations_committed"], s["migrations_aborted"], s["acked_writes"], s["lost_writes"], run["faults"]
        );
        let first = &run["migrations"][0];
        assert_eq!(first["outcome"], "aborted", "pass {pass}: {first}");
        assert!(
            first["critical_from_us"].is_u64(),
            "killed in the critical section: {first}"
        );
        assert!(
            s["migrations_committed"].as_u64().unwrap() >= 1,
            "pass {pass}: {s}"
        );
        assert!(
            s["acked_writes"].as_u64().unwrap() > 500,
            "pass {pass}: {s}"
        );
        assert_eq!(s["lost_writes"], 0, "pass {pass}: {s}");
        assert_eq!(s["bad_reads"], 0, "pass {pass}: {s}");
        assert_eq!(
            s["invariant_violations"],
            serde_json::json!([]),
            "pass {pass}: {s}"
        );
        let faults: Vec<&str> = run["faults"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["label"].as_str().unwrap())
            .collect();
        assert!(faults[0].starts_with("kill s"), "pass {pass}: {faults:?}");
    }
    sharded_lab_by_hand_on_the_inventory(&runner, dir);
    let refused = runner.refused("shard-stale-router");
    assert!(refused.contains("routers run in the driver"), "{refused}");
}

/// `cluster up sharded --inventory` on the same shards: a chunk moved by hand lands on the shard
/// it was sent to, and `down` forgets the lab but leaves the hosts running.
fn sharded_lab_by_hand_on_the_inventory(runner: &Runner, dir: &Path) {
    let lab_dir = dir.join("sharded-lab");
    let lab_dir = lab_dir.to_str().unwrap();
    let with_lab = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--state-dir", lab_dir]);
        quorumlab(&all)
    };
    // shard-add-shard's layout with two shards holding chunks and one empty: the three machines.
    with_lab(&[
        "cluster",
        "up",
        "sharded",
        "--shards",
        "2",
        "--inventory",
        runner.inventory,
    ]);
    let moved = json(&with_lab(&[
        "cluster",
        "move-chunk",
        "--chunk",
        "0",
        "--to",
        "s3",
        "--json",
    ]));
    assert_eq!(moved["outcome"], "committed", "{moved}");
    let status = json(&with_lab(&["cluster", "status", "--json"]));
    let shards = status["sharded"]["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 3, "{status}");
    assert_eq!(shards[2]["chunks"], serde_json::json!([0]), "{status}");
    assert!(shards.iter().all(|s| s["up"] == true), "{status}");
    assert!(
        shards[2]["endpoint"].as_str().unwrap().ends_with(":5433"),
        "{status}"
    );
    with_lab(&["cluster", "down"]);
    assert!(!Path::new(lab_dir).join("lab.json").exists());
}

/// What the simulator predicts for the one-way partition, the machines do (the drop is on the
/// receivers' input, so it is one-way for real).
fn one_way_partition_as_the_simulator_predicts(runner: &Runner) {
    let sim = json(&quorumlab(&[
        "sim",
        "sweep",
        "etcd-leader-oneway",
        "--seeds",
        "1..=200",
        "--json",
    ]));
    let predicted = &sim["report"]["election_ms"];
    let (min, max) = (
        predicted["min"].as_f64().unwrap(),
        predicted["max"].as_f64().unwrap(),
    );
    let oneway = &runner.run("etcd-leader-oneway")[0]["summary"];
    let elected = oneway["election_ms"]
        .as_f64()
        .expect("the followers elect a new leader");
    assert!(
        elected >= min * 0.5 && elected <= max * 1.5,
        "real {elected} ms against the simulator's {min}..{max} ms"
    );
    assert_eq!(oneway["verdict"]["verdict"], "linearizable", "{oneway}");
}

/// A delay needs netem, which these hosts' kernel lacks: refused in one line, nothing run.
fn delay_is_refused_without_netem(runner: &Runner, dir: &Path) {
    let delayed = variant(
        dir,
        "etcd-leader-kill",
        "kind = \"crash\"\nnode = \"leader\"",
        "kind = \"delay\"\nms_max = 50",
    );
    let refused = runner.refused(delayed.to_str().unwrap());
    assert!(refused.contains("needs tc netem"), "{refused}");
}

fn agents_refuse_what_they_must(inventory: &Path) {
    let inventory = Inventory::load(inventory).unwrap();
    let tls = DriverTls::load(&inventory.pki_dir).unwrap();
    let n1 = &inventory.hosts[0];
    let addr = std::net::SocketAddr::new(n1.addr, n1.agent_port);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut good = connect(addr, &tls, Duration::from_secs(5)).await.unwrap();
        let caps = good
            .capabilities(CapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(caps.nftables && caps.tbf, "{caps:?}");
        eprintln!("machine kernel: netem {}", caps.netem);
        shaping_is_tbf_here_and_netem_is_refused(&mut good, caps.netem).await;
        let status = good
            .status(StatusRequest {
                service: "etcd".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(status.running, "{status:?}");

        let plaintext = match AgentClient::connect(format!("http://{addr}")).await {
            Err(_) => true,
            Ok(mut c) => c
                .status(StatusRequest {
                    service: "etcd".into(),
                })
                .await
                .is_err(),
        };
        assert!(plaintext, "plaintext must be refused");

        let wrong = DriverTls {
            token: "wrong".into(),
            ..tls.clone()
        };
        let mut client = connect(addr, &wrong, Duration::from_secs(5)).await.unwrap();
        let err = client
            .status(StatusRequest {
                service: "etcd".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);

        // The refusal is counted by reason on the agent's metrics port, with no token in sight.
        let port = n1
            .metrics_port
            .expect("inventory hosts have a metrics port");
        let metrics = quorumlab_cluster::agent::metrics::scrape(
            std::net::SocketAddr::new(n1.addr, port),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let refused: u64 = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix("agent_calls_refused_total{reason=\"unauthenticated\"} ")?
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        assert!(refused >= 1, "{metrics}");
        assert!(!metrics.contains(&tls.token), "the token in the metrics");
    });
}

/// A bandwidth limit is a real tbf qdisc on the machine's link; delay needs netem, which this
/// kernel lacks, and is refused in one line; a clear removes the qdisc.
async fn shaping_is_tbf_here_and_netem_is_refused(
    agent: &mut quorumlab_cluster::agent::AgentClient,
    netem: bool,
) {
    let limit = ShapeRequest {
        rate_kbit_per_s: Some(256),
        ..Default::default()
    };
    let qdisc = agent.shape(limit).await.unwrap().into_inner().qdisc;
    assert!(
        qdisc.contains("tbf") && qdisc.contains("256Kbit"),
        "{qdisc}"
    );
    let delay = ShapeRequest {
        delay_ms_max: Some(50),
        ..Default::default()
    };
    match agent.shape(delay).await {
        Ok(reply) => assert!(netem && reply.into_inner().qdisc.contains("netem")),
        Err(status) => {
            assert!(!netem, "{status:?}");
            assert!(
                status.message().contains("no netem"),
                "{}",
                status.message()
            );
        }
    }
    let clear = ShapeRequest {
        clear: true,
        ..Default::default()
    };
    let qdisc = agent.shape(clear).await.unwrap().into_inner().qdisc;
    assert!(
        !qdisc.contains("tbf") && !qdisc.contains("netem"),
        "{qdisc}"
    );
}

/// Nothing of the machines is left: no nspawn process, mount, bridge or NAT table, and IPv4
/// forwarding as it was (it is only on while machines are up).
fn assert_nothing_left(dir: &Path) {
    let text = |program: &str, args: &[&str]| {
        String::from_utf8_lossy(&Command::new(program).args(args).output().unwrap().stdout)
            .into_owned()
    };
    assert!(!dir.exists(), "state directory removed");
    assert!(!text("pgrep", &["-x", "systemd-nspawn"]).contains(char::is_numeric));
    assert!(
        !text("ip", &["-br", "link"]).contains("qlm"),
        "no bridge or veth"
    );
    assert!(
        !text("nft", &["list", "tables"]).contains("qlm"),
        "no NAT table"
    );
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(dir.to_str().unwrap()),
        "no overlay mounted"
    );
}
