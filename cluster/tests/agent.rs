//! The node agent over real gRPC on loopback, managing a real process with real signals.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use quorumlab_cluster::agent::{connect, serve, AgentConfig, NodeAgent, ServiceSpec};
use quorumlab_proto::agent::agent_client::AgentClient;
use quorumlab_proto::agent::{Action, LinksRequest, SignalRequest, StatusRequest};
use tonic::Code;

const TOKEN: &str = "s3cret-token";

struct TestAgent {
    addr: SocketAddr,
    dir: PathBuf,
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
        // A free port: bind port 0, read it, release it for the agent.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = AgentConfig {
            listen: addr,
            token_file: dir.join("token"),
            services: [(
                "sleeper".to_string(),
                ServiceSpec {
                    program: "/bin/sleep".into(),
                    args: vec!["1000".into()],
                    log: dir.join("sleeper.log"),
                    user: None,
                    pid_files: vec![],
                },
            )]
            .into(),
            peers: [("n2".to_string(), "10.77.0.12".parse().unwrap())].into(),
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
            dir,
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

#[tokio::test]
async fn calls_without_the_right_token_are_unauthenticated() {
    let agent = TestAgent::start("auth").await;
    // Wait for the server through an authenticated client first.
    let mut good = connect(agent.addr, TOKEN, Duration::from_secs(5))
        .await
        .unwrap();
    good.status(StatusRequest {
        service: "sleeper".into(),
    })
    .await
    .unwrap();

    let mut anonymous = AgentClient::connect(format!("http://{}", agent.addr))
        .await
        .unwrap();
    let err = anonymous
        .status(StatusRequest {
            service: "sleeper".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let mut wrong = connect(agent.addr, "not-the-token", Duration::from_secs(5))
        .await
        .unwrap();
    let err = signal(&mut wrong, Action::Start).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    agent.stop().await;
}

#[tokio::test]
async fn unknown_services_peers_and_actions_get_clear_statuses() {
    let agent = TestAgent::start("bad").await;
    let mut client = connect(agent.addr, TOKEN, Duration::from_secs(5))
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
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    agent.stop().await;
}

#[tokio::test]
async fn start_pause_resume_kill_a_real_process() {
    let agent = TestAgent::start("life").await;
    let mut client = connect(agent.addr, TOKEN, Duration::from_secs(5))
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
async fn stopping_the_agent_stops_what_it_started() {
    let agent = TestAgent::start("cleanup").await;
    let mut client = connect(agent.addr, TOKEN, Duration::from_secs(5))
        .await
        .unwrap();
    let pid = signal(&mut client, Action::Start).await.unwrap();
    drop(client);
    agent.stop().await;
    assert_eq!(process_state(pid), None);
}
