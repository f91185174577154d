//! The node agent over real gRPC and TLS on loopback, managing a real process with real signals.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use quorumlab_cluster::agent::{connect, serve, AgentConfig, AgentTls, NodeAgent, ServiceSpec};
use quorumlab_cluster::pki::{self, DriverTls};
use quorumlab_proto::agent::agent_client::AgentClient;
use quorumlab_proto::agent::{Action, LinksRequest, SignalRequest, StatusRequest};
use tonic::Code;

const TOKEN: &str = "s3cret-token";

struct TestAgent {
    addr: SocketAddr,
    /// Where the agent serves GET /metrics.
    metrics: SocketAddr,
    dir: PathBuf,
    /// What a driver of this agent's lab holds (the token here is the test's).
    tls: DriverTls,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl TestAgent {
    async fn start(tag: &str) -> TestAgent {
        let dir =
            std::env::temp_dir().join(format!("quorumlab-agent-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), TOKEN).unwrap();
        let pki_dir = dir.join("pki");
        pki::ensure(&pki_dir, &[("n1".into(), "127.0.0.1".parse().unwrap())]).unwrap();
        let mut tls = DriverTls::load(&pki_dir).unwrap();
        tls.token = TOKEN.into();
        let (cert, key) = pki::host_files(&pki_dir, "n1");
        // A free port: bind port 0, read it, release it for the agent.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let metrics = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = AgentConfig {
            listen: addr,
            token_file: dir.join("token"),
            tls: AgentTls {
                cert,
                key,
                client_ca: pki_dir.join(pki::CA_CERT),
            },
            units: Default::default(),
            services: [
                (
                    "sleeper".to_string(),
                    ServiceSpec {
                        program: "/bin/sleep".into(),
                        args: vec!["1000".into()],
                        log: dir.join("sleeper.log"),
                        user: None,
                        pid_files: vec![],
                    },
                ),
                (
                    "supervisor".to_string(),
                    ServiceSpec {
                        program: "/bin/sh".into(),
                        args: vec!["-c".into(), SUPERVISOR.into(), dir.display().to_string()],
                        log: dir.join("supervisor.log"),
                        user: None,
                        pid_files: vec![dir.join("server.pid")],
                    },
                ),
            ]
            .into(),
            peers: [("n2".to_string(), "10.77.0.12".parse().unwrap())].into(),
            metrics_listen: Some(metrics),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let agent = NodeAgent::new(config, TOKEN.to_string());
        let server = tokio::spawn(async move {
            serve(agent, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        TestAgent {
            addr,
            metrics,
            dir,
            tls,
            stop: Some(tx),
            server: Some(server),
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.server.take().unwrap().await.unwrap();
    }
}

impl Drop for TestAgent {
    /// Runs on success and on a failed assertion alike: the agent's own drop kills its services.
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a server the way Patroni starts a postmaster: a helper in a session of its own
/// launches it and exits, so the server outlives its supervisor. The server (a shell) has one
/// worker (a sleep), as a postmaster has backends; both pids are written for the test.
const SUPERVISOR: &str = r#"dir="$0"
setsid sh -c "sh -c 'sleep 1000 & echo \$! > $dir/worker.pid; echo \$\$ > $dir/server.pid; wait' &"
exec sleep 1000"#;

fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(") ").next()?.chars().next()
}

/// Asks the agent to act on the test's one service, "sleeper".
async fn signal(
    client: &mut quorumlab_cluster::agent::AgentClient,
    action: Action,
) -> Result<u32, tonic::Status> {
    signal_raw(client, "sleeper", action as i32).await
}

/// Any service name and any action number, for the agent's answers to bad requests.
async fn signal_raw(
    client: &mut quorumlab_cluster::agent::AgentClient,
    service: &str,
    action: i32,
) -> Result<u32, tonic::Status> {
    let reply = client
        .signal(SignalRequest {
            service: service.into(),
            action,
        })
        .await?;
    Ok(reply.into_inner().pid)
}

/// Whether a call through `client` (or its connection) was refused before reaching the agent.
async fn refused(client: Result<quorumlab_cluster::agent::AgentClient, String>) -> bool {
    match client {
        Err(_) => true,
        Ok(mut c) => c
            .status(StatusRequest {
                service: "sleeper".into(),
            })
            .await
            .is_err(),
    }
}

#[tokio::test]
async fn only_tls_with_the_labs_ca_and_the_right_token_gets_through() {
    let agent = TestAgent::start("auth").await;
    // Wait for the server through a client with everything right first.
    let mut good = connect(agent.addr, &agent.tls, Duration::from_secs(5))
        .await
        .unwrap();
    good.status(StatusRequest {
        service: "sleeper".into(),
    })
    .await
    .unwrap();

    // Plaintext: the agent speaks only TLS.
    let plaintext = match AgentClient::connect(format!("http://{}", agent.addr)).await {
        Err(_) => true,
        Ok(mut c) => c
            .status(StatusRequest {
                service: "sleeper".into(),
            })
            .await
            .is_err(),
    };
    assert!(plaintext, "a plaintext call must be refused");

    // Another lab's CA and client certificate (the right token): refused both ways.
    let other_dir = agent.dir.join("other-pki");
    pki::ensure(&other_dir, &[]).unwrap();
    let mut other = DriverTls::load(&other_dir).unwrap();
    other.token = TOKEN.into();
    let short = Duration::from_millis(800);
    assert!(
        refused(connect(agent.addr, &other, short).await).await,
        "a client of another CA"
    );
    // Trusting the right CA but presenting another CA's certificate.
    let foreign_cert = DriverTls {
        ca_pem: agent.tls.ca_pem.clone(),
        ..other.clone()
    };
    assert!(
        refused(connect(agent.addr, &foreign_cert, short).await).await,
        "a client certificate the lab's CA did not sign"
    );

    // TLS right, token wrong.
    let wrong_token = DriverTls {
        token: "not-the-token".into(),
        ..agent.tls.clone()
    };
    let mut wrong = connect(agent.addr, &wrong_token, Duration::from_secs(5))
        .await
        .unwrap();
    let refused_before = counter(
        &agent,
        "agent_calls_refused_total{reason=\"unauthenticated\"}",
    )
    .await;
    let err = signal(&mut wrong, Action::Start).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // The refusal is counted, by reason, and the token shows nowhere in the metrics.
    let refused_after = counter(
        &agent,
        "agent_calls_refused_total{reason=\"unauthenticated\"}",
    )
    .await;
    assert_eq!(refused_after, refused_before + 1.0);
    assert!(!scrape(&agent).await.contains(TOKEN));
    // A bad request (an unknown service) is refused for another reason; a fault is applied.
    assert!(signal_raw(&mut good, "nope", Action::Kill as i32)
        .await
        .is_err());
    assert_eq!(
        counter(&agent, "agent_calls_refused_total{reason=\"not_found\"}").await,
        1.0
    );
    signal(&mut good, Action::Start).await.unwrap();
    assert_eq!(
        counter(&agent, "agent_faults_applied_total{kind=\"signal-start\"}").await,
        1.0
    );
    signal(&mut good, Action::Kill).await.unwrap();
    agent.stop().await;
}

/// The agent's `GET /metrics` text, read over plain HTTP as the driver reads it (an answer other
/// than 200 is an error there).
async fn scrape(agent: &TestAgent) -> String {
    let body = quorumlab_cluster::agent::metrics::scrape(agent.metrics, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(body.ends_with("# EOF\n"), "{body}");
    body
}

/// One series' value in the agent's metrics (0 when it is not there yet).
async fn counter(agent: &TestAgent, series: &str) -> f64 {
    scrape(agent)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn the_labs_keys_and_token_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("quorumlab-pki-modes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    pki::ensure(&dir, &[("n1".into(), "10.0.0.1".parse().unwrap())]).unwrap();
    let (_, host_key) = pki::host_files(&dir, "n1");
    for secret in [
        dir.join("ca.key"),
        dir.join(pki::DRIVER_KEY),
        dir.join(pki::TOKEN),
        host_key,
    ] {
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", secret.display());
    }
    // A second call keeps the CA every host already trusts.
    let ca = std::fs::read(dir.join(pki::CA_CERT)).unwrap();
    pki::ensure(&dir, &[("n1".into(), "10.0.0.1".parse().unwrap())]).unwrap();
    assert_eq!(std::fs::read(dir.join(pki::CA_CERT)).unwrap(), ca);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn unknown_services_peers_and_actions_get_clear_statuses() {
    let agent = TestAgent::start("bad").await;
    let mut client = connect(agent.addr, &agent.tls, Duration::from_secs(5))
        .await
        .unwrap();
    let err = signal_raw(&mut client, "bash", Action::Start as i32)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("unknown service 'bash'"),
        "{}",
        err.message()
    );
    let err = signal_raw(&mut client, "sleeper", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = signal_raw(&mut client, "sleeper", 99).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = signal(&mut client, Action::Kill).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "killing what is not running"
    );
    let err = client
        .links(LinksRequest {
            peers: vec!["n9".into()],
            cut: true,
            inbound_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    agent.stop().await;
}

#[tokio::test]
async fn start_pause_resume_kill_a_real_process() {
    let agent = TestAgent::start("life").await;
    let mut client = connect(agent.addr, &agent.tls, Duration::from_secs(5))
        .await
        .unwrap();
    let pid = signal(&mut client, Action::Start).await.unwrap();
    assert!(pid > 0);
    assert_eq!(
        signal(&mut client, Action::Start).await.unwrap(),
        pid,
        "start is idempotent"
    );
    // Running or sleeping, once exec is done (a fresh process can be in D for a moment).
    let mut state = process_state(pid);
    for _ in 0..100 {
        if matches!(state, Some('S' | 'R')) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        state = process_state(pid);
    }
    assert!(matches!(state, Some('S' | 'R')), "state {state:?}");

    // The agent answers a pause only once the kernel reports the process stopped.
    signal(&mut client, Action::Pause).await.unwrap();
    assert_eq!(process_state(pid), Some('T'), "SIGSTOP stops the process");
    let status = client
        .status(StatusRequest {
            service: "sleeper".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(status.running && status.paused && status.host_time_unix_ms > 0);

    signal(&mut client, Action::Resume).await.unwrap();
    assert!(matches!(process_state(pid), Some('S' | 'R')));

    signal(&mut client, Action::Kill).await.unwrap();
    assert_eq!(
        process_state(pid),
        None,
        "SIGKILL ends it and the agent reaps it"
    );
    let status = client
        .status(StatusRequest {
            service: "sleeper".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!status.running);
    agent.stop().await;
}

#[tokio::test]
async fn a_kill_takes_a_detached_server_with_its_workers() {
    let agent = TestAgent::start("detached").await;
    let mut client = connect(agent.addr, &agent.tls, Duration::from_secs(5))
        .await
        .unwrap();
    let supervisor = signal_raw(&mut client, "supervisor", Action::Start as i32)
        .await
        .unwrap();
    let pid_of = |name: &str| -> Option<u32> {
        let text = std::fs::read_to_string(agent.dir.join(name)).ok()?;
        text.trim().parse().ok()
    };
    let mut pids = None;
    for _ in 0..250 {
        pids = pid_of("server.pid").zip(pid_of("worker.pid"));
        if pids.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (server, worker) = pids.expect("the server wrote its pid within 5 s");
    assert!(process_state(worker).is_some(), "the worker runs");
    signal_raw(&mut client, "supervisor", Action::Kill as i32)
        .await
        .unwrap();
    // SIGKILL is delivered at once, the exit follows when each is next scheduled; nobody may
    // reap the orphans here (PID 1 need not), so a zombie counts as gone.
    let gone = |pid| matches!(process_state(pid), None | Some('Z'));
    for _ in 0..100 {
        if [supervisor, server, worker].into_iter().all(gone) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone(supervisor), "the supervisor is killed");
    assert!(gone(server), "the server named by its pid file is killed");
    assert!(gone(worker), "the server's worker dies with it");
    agent.stop().await;
}

#[tokio::test]
async fn stopping_the_agent_stops_what_it_started() {
    let agent = TestAgent::start("cleanup").await;
    let mut client = connect(agent.addr, &agent.tls, Duration::from_secs(5))
        .await
        .unwrap();
    let pid = signal(&mut client, Action::Start).await.unwrap();
    drop(client);
    agent.stop().await;
    assert_eq!(process_state(pid), None);
}
