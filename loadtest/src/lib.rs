//! Load tests for the reference service, on Goose.
//!
//! The model is open: each Goose user sends on its own fixed schedule (every `users / rate`
//! seconds, staggered), so the offered rate does not drop when the service slows down. A user
//! whose answer comes late sends its next request at once and then keeps the schedule; the sends
//! it missed are the coordinated omission that Goose's mitigation backfills (`Average` cadence),
//! and the percentiles here are the corrected ones. Reads report which node served them
//! (`X-Served-By`), and write sessions read their own writes back with the consistency token.

pub mod mix;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use goose::config::GooseConfiguration;
use goose::metrics::GooseRequestMetricAggregate;
use goose::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

pub use mix::{Endpoint, Mix};

/// The header a write's consistency token comes back in (and a read sends it in).
const TOKEN_HEADER: &str = "x-consistency-token";
/// The header naming the node that served a read.
const SERVED_BY_HEADER: &str = "x-served-by";
/// Seconds between one user's requests: the rate is spread over `rate / 10` users.
const USER_PERIOD_S: f64 = 0.1;
/// At most this many Goose users (each holds one keep-alive connection).
const USERS_MAX: usize = 2_000;
/// Minor units each seeded account starts with: transfers of at most 10 never overdraw.
const SEED_BALANCE_MINOR: i64 = 1_000_000_000;

/// Why a load test could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The service does not answer at its URL.
    #[error("the service at {target} does not answer: {reason}")]
    Unreachable {
        /// The URL.
        target: String,
        /// What went wrong.
        reason: String,
    },
    /// Seeding users failed.
    #[error("seeding users: {0}")]
    Seed(String),
    /// Goose refused the configuration or failed.
    #[error("load generator: {0}")]
    Goose(String),
}

/// One load test: what to send, how fast and for how long.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The service's base URL, such as `http://127.0.0.1:8080`.
    pub target: String,
    /// Which endpoints, weighted.
    pub mix: Mix,
    /// Requests per second offered.
    pub rate: u32,
    /// How long to measure, once every user has started.
    pub duration: Duration,
    /// Where Goose writes its HTML report, if anywhere.
    pub html_report: Option<PathBuf>,
    /// Seeds the users' random choices.
    pub seed: u64,
}

impl Plan {
    /// How many Goose users carry `rate`.
    pub fn users(&self) -> usize {
        ((f64::from(self.rate) * USER_PERIOD_S).ceil() as usize).clamp(1, USERS_MAX)
    }
}

/// The accounts the load test reads and moves money between: `(id, email)`.
#[derive(Debug, Clone)]
pub struct Population {
    users: Arc<Vec<(i64, String)>>,
}

impl Population {
    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Checks the service answers, then creates `count` users, each with a large balance, through
/// the API (`concurrency` at a time); `created` hears each one.
pub async fn seed_users(
    target: &str,
    count: usize,
    concurrency: usize,
    created: impl Fn() + Send + Sync,
) -> Result<Population, LoadError> {
    let client = reqwest::Client::new();
    let unreachable = |reason: String| LoadError::Unreachable {
        target: target.to_string(),
        reason,
    };
    let probe = client
        .get(format!("{target}/users/0"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| unreachable(e.without_url().to_string()))?;
    if probe.status() != reqwest::StatusCode::NOT_FOUND {
        return Err(unreachable(format!(
            "GET /users/0 answered {}, not the service's 404",
            probe.status()
        )));
    }
    let run = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let users: Vec<(i64, String)> = stream::iter(0..count)
        .map(|i| {
            let (client, run, created) = (&client, &run, &created);
            async move {
                let email = format!("load-{run}-{i}@example.test");
                let body = json!({ "name": format!("Load {i}"), "email": email });
                let user = send_json(client.post(format!("{target}/users")), &body).await?;
                let id = user["id"]
                    .as_i64()
                    .ok_or_else(|| LoadError::Seed(format!("POST /users answered {user}")))?;
                let deposit = client.post(format!("{target}/users/{id}/deposit"));
                send_json(deposit, &json!({ "amount_minor": SEED_BALANCE_MINOR })).await?;
                created();
                Ok::<_, LoadError>((id, email))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    Ok(Population {
        users: Arc::new(users),
    })
}

async fn send_json(request: reqwest::RequestBuilder, body: &Value) -> Result<Value, LoadError> {
    let response = request
        .json(body)
        .send()
        .await
        .map_err(|e| LoadError::Seed(e.without_url().to_string()))?;
    let status = response.status();
    let answer: Value = response
        .json()
        .await
        .map_err(|e| LoadError::Seed(format!("{status}: {}", e.without_url())))?;
    if !status.is_success() {
        return Err(LoadError::Seed(format!("{status}: {answer}")));
    }
    Ok(answer)
}

/// One endpoint's figures. Percentiles are coordinated-omission corrected, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointStats {
    /// The endpoint, as [`Endpoint::label`].
    pub endpoint: String,
    /// Requests actually sent.
    pub requests: usize,
    /// Requests that failed (no answer, or a status other than 2xx).
    pub failures: usize,
    /// Requests per second.
    pub per_s: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Latencies Goose added for sends the schedule missed while an answer was late.
    pub backfilled: usize,
}

/// What one load test measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// The mix.
    pub mix: Mix,
    /// Requests per second offered.
    pub offered_per_s: u32,
    /// Requests per second sent and answered, all endpoints.
    pub achieved_per_s: f64,
    /// Seconds measured.
    pub duration_s: f64,
    /// Goose users (connections).
    pub users: usize,
    /// Failed requests, all endpoints.
    pub failures: usize,
    /// The slowest read endpoint's corrected p99 (0 without reads).
    pub read_p99_ms: f64,
    /// Per endpoint, busiest first.
    pub endpoints: Vec<EndpointStats>,
    /// Reads per node that served them (`X-Served-By`).
    pub served_by: BTreeMap<String, u64>,
    /// Reads per node as the service itself counted them during the run (its `/metrics`
    /// `reads_total`, after minus before; reads from other clients count too); `None` when the
    /// service has no metrics to read.
    #[serde(default)]
    pub service_reads_by_node: Option<BTreeMap<String, u64>>,
}

/// What every user of one load test shares.
struct Shared {
    users: Arc<Vec<(i64, String)>>,
    served_by: Mutex<BTreeMap<String, u64>>,
    mix: Mix,
    period: Duration,
    start: Instant,
    user_count: usize,
    seed: u64,
}

/// One Goose user's schedule and memory.
#[derive(Clone)]
struct Session {
    rng: SmallRng,
    next: Instant,
    /// The token of this session's last write, and whose account it changed.
    last_write: Option<(i64, String)>,
}

/// Runs `plan` against the service, moving money among `population`.
pub async fn run(plan: &Plan, population: &Population) -> Result<LoadReport, LoadError> {
    let users = plan.users();
    let shared = Arc::new(Shared {
        users: population.users.clone(),
        served_by: Mutex::new(BTreeMap::new()),
        mix: plan.mix,
        period: Duration::from_secs_f64(users as f64 / f64::from(plan.rate.max(1))),
        start: Instant::now(),
        user_count: users,
        seed: plan.seed,
    });
    let start = {
        let shared = shared.clone();
        Transaction::new(Arc::new(move |user| {
            let shared = shared.clone();
            Box::pin(async move {
                begin_session(user, &shared);
                Ok(())
            })
        }))
        .set_name("start")
        .set_on_start()
    };
    let send = {
        let shared = shared.clone();
        Transaction::new(Arc::new(move |user| {
            let shared = shared.clone();
            Box::pin(async move { send_next(user, &shared).await })
        }))
        .set_name("request")
    };
    let before = service_reads(&plan.target).await;
    let metrics = GooseAttack::initialize_with_config(goose_config(plan, users))
        .map_err(|e| LoadError::Goose(e.to_string()))?
        .register_scenario(
            scenario!("service")
                .register_transaction(start)
                .register_transaction(send),
        )
        .execute()
        .await
        .map_err(|e| LoadError::Goose(e.to_string()))?;
    let served_by = shared.served_by.lock().expect("served-by lock").clone();
    let mut report = report(plan, users, &metrics, served_by);
    report.service_reads_by_node = match (before, service_reads(&plan.target).await) {
        (Some(before), Some(after)) => Some(
            after
                .into_iter()
                .map(|(node, n)| {
                    let was = before.get(&node).copied().unwrap_or(0);
                    (node, n.saturating_sub(was))
                })
                .filter(|&(_, n)| n > 0)
                .collect(),
        ),
        _ => None,
    };
    Ok(report)
}

/// The service's own `reads_total` per node, from its `/metrics`; `None` if it has none.
pub async fn service_reads(target: &str) -> Option<BTreeMap<String, u64>> {
    let text = reqwest::get(format!("{target}/metrics"))
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("reads_total{node=\"")?;
                let (node, value) = rest.split_once("\"} ")?;
                Some((node.to_string(), value.trim().parse::<f64>().ok()? as u64))
            })
            .collect(),
    )
}

/// Goose's settings for one plan: an open model with average-cadence CO mitigation, quiet.
fn goose_config(plan: &Plan, users: usize) -> GooseConfiguration {
    let mut config = GooseConfiguration::default();
    config.host = Some(plan.target.clone());
    config.users = Some(users);
    // Every user starts within about a quarter of a second; Goose resets its figures then.
    config.increase_rate = Some((users * 4).to_string());
    config.run_time = Some(plan.duration.as_secs().max(1).to_string());
    config.co_mitigation = Some(GooseCoordinatedOmissionMitigation::Average);
    config.quiet = 1;
    config.no_print_metrics = true;
    config.no_error_summary = true;
    config.no_telnet = true;
    config.no_transaction_metrics = true;
    config.no_scenario_metrics = true;
    config.report_file = plan
        .html_report
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    config
}

/// The run's figures per endpoint, the read p99, and who served the reads.
fn report(
    plan: &Plan,
    users: usize,
    metrics: &goose::metrics::GooseMetrics,
    served_by: BTreeMap<String, u64>,
) -> LoadReport {
    let duration_s = (metrics.duration as f64).max(1.0);
    let mut endpoints: Vec<EndpointStats> = metrics
        .requests
        .values()
        .map(|aggregate| endpoint_stats(aggregate, duration_s))
        .collect();
    endpoints.sort_by(|a, b| {
        b.requests
            .cmp(&a.requests)
            .then(a.endpoint.cmp(&b.endpoint))
    });
    let reads: Vec<&str> = plan
        .mix
        .weights()
        .iter()
        .filter(|(e, _)| !e.is_write())
        .map(|(e, _)| e.label())
        .collect();
    let read_p99_ms = endpoints
        .iter()
        .filter(|e| reads.contains(&e.endpoint.as_str()))
        .map(|e| e.p99_ms)
        .fold(0.0, f64::max);
    let requests: usize = endpoints.iter().map(|e| e.requests).sum();
    let failures: usize = endpoints.iter().map(|e| e.failures).sum();
    LoadReport {
        mix: plan.mix,
        offered_per_s: plan.rate,
        achieved_per_s: (requests - failures) as f64 / duration_s,
        duration_s,
        users,
        failures,
        read_p99_ms,
        endpoints,
        served_by,
        service_reads_by_node: None,
    }
}

fn endpoint_stats(aggregate: &GooseRequestMetricAggregate, duration_s: f64) -> EndpointStats {
    let timings = aggregate
        .coordinated_omission_data
        .as_ref()
        .unwrap_or(&aggregate.raw_data);
    let ms = |us: u64| us as f64 / 1000.0;
    let requests = aggregate.success_count + aggregate.fail_count;
    EndpointStats {
        endpoint: aggregate.path.clone(),
        requests,
        failures: aggregate.fail_count,
        per_s: requests as f64 / duration_s,
        p50_ms: ms(timings.percentile_us(0.50)),
        p95_ms: ms(timings.percentile_us(0.95)),
        p99_ms: ms(timings.percentile_us(0.99)),
        max_ms: ms(timings.maximum_time_us),
        backfilled: timings.counter.saturating_sub(aggregate.raw_data.counter),
    }
}

/// Gives a new Goose user its random stream and its first send time, staggered across the
/// period so the users together send evenly.
fn begin_session(user: &mut GooseUser, shared: &Shared) {
    let index = user.weighted_users_index;
    let offset = shared
        .period
        .mul_f64((index % shared.user_count) as f64 / shared.user_count as f64);
    user.set_session_data(Session {
        rng: SmallRng::seed_from_u64(shared.seed ^ (index as u64).wrapping_mul(0x9E37_79B9)),
        next: shared.start.max(Instant::now()) + offset,
        last_write: None,
    });
}

/// Waits for this user's next send time, then sends one request drawn from the mix.
async fn send_next(user: &mut GooseUser, shared: &Shared) -> TransactionResult {
    let send = plan_send(user, shared);
    tokio::time::sleep_until(send.at.into()).await;
    let (id, _) = &shared.users[send.account];
    let (method, path, body) = request_for(&send, shared);
    let mut builder = user.get_request_builder(&method, &path)?;
    if let Some(body) = &body {
        builder = builder.json(body);
    }
    if let (Endpoint::ReadOwnWrite, Some((_, token))) = (send.endpoint, &send.last_write) {
        builder = builder.header(TOKEN_HEADER, token);
    }
    let request = GooseRequest::builder()
        .method(method)
        .name(send.endpoint.label())
        .set_request_builder(builder)
        .build();
    let goose = user.request(request).await?;
    let Ok(response) = goose.response else {
        return Ok(());
    };
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    if send.endpoint.is_write() {
        if let Some(token) = header(TOKEN_HEADER) {
            // Every write here changes `id`'s row (a transfer, its sender's).
            user.get_session_data_mut::<Session>()
                .expect("session")
                .last_write = Some((*id, token));
        }
    } else if let Some(node) = header(SERVED_BY_HEADER) {
        *shared
            .served_by
            .lock()
            .expect("served-by lock")
            .entry(node)
            .or_default() += 1;
    }
    // Read the body so the keep-alive connection goes back to the pool.
    let _ = response.bytes().await;
    Ok(())
}

/// One scheduled request, drawn from the user's session.
struct ScheduledSend {
    endpoint: Endpoint,
    /// When it is due.
    at: Instant,
    account: usize,
    other: usize,
    amount: i64,
    /// The user's last write: the account it changed and its consistency token.
    last_write: Option<(i64, String)>,
}

/// Draws the next request and moves the user's schedule on by one period.
fn plan_send(user: &mut GooseUser, shared: &Shared) -> ScheduledSend {
    let session = user
        .get_session_data_mut::<Session>()
        .expect("the start transaction made the session");
    let now = Instant::now();
    let at = session.next;
    // Late by more than a period: those sends are missed (Goose backfills their latency);
    // the schedule restarts from now rather than bursting to catch up.
    session.next = if at + shared.period < now {
        now + shared.period
    } else {
        at + shared.period
    };
    let endpoint = shared.mix.pick(&mut session.rng);
    let n = shared.users.len();
    let account = session.rng.gen_range(0..n);
    let other = (account + session.rng.gen_range(1..n.max(2))) % n;
    let amount: i64 = session.rng.gen_range(1..=10);
    ScheduledSend {
        endpoint,
        at,
        account,
        other,
        amount,
        last_write: session.last_write.clone(),
    }
}

/// The HTTP method, path and body of a scheduled request.
fn request_for(
    send: &ScheduledSend,
    shared: &Shared,
) -> (GooseMethod, String, Option<serde_json::Value>) {
    let (id, email) = &shared.users[send.account];
    let amount = send.amount;
    match send.endpoint {
        Endpoint::GetUser => (GooseMethod::Get, format!("/users/{id}"), None),
        Endpoint::Movements => (
            GooseMethod::Get,
            format!("/users/{id}/movements?limit=20"),
            None,
        ),
        Endpoint::ByEmail => (GooseMethod::Get, format!("/users?email={email}"), None),
        Endpoint::Deposit => (
            GooseMethod::Post,
            format!("/users/{id}/deposit"),
            Some(json!({ "amount_minor": amount })),
        ),
        Endpoint::Transfer => (
            GooseMethod::Post,
            "/transfers".to_string(),
            Some(json!({
                "from_user": id,
                "to_user": shared.users[send.other].0,
                "amount_minor": amount,
            })),
        ),
        Endpoint::UpdateProfile => (
            GooseMethod::Patch,
            format!("/users/{id}"),
            Some(json!({ "metadata": { "load": amount } })),
        ),
        Endpoint::ReadOwnWrite => match &send.last_write {
            Some((written, _)) => (GooseMethod::Get, format!("/users/{written}"), None),
            None => (GooseMethod::Get, format!("/users/{id}"), None),
        },
    }
}

/// One rate tried by [`find_max_rate`].
#[derive(Debug, Clone, Serialize)]
pub struct RateStep {
    /// The figures at this rate.
    pub report: LoadReport,
    /// Whether it met the bar: no failures, at least 95% of the offered rate, read p99 under
    /// the limit.
    pub passed: bool,
}

/// Whether `report` meets the bar at `p99_limit_ms`.
pub fn meets(report: &LoadReport, p99_limit_ms: f64) -> bool {
    report.failures == 0
        && report.achieved_per_s >= 0.95 * f64::from(report.offered_per_s)
        && report.read_p99_ms < p99_limit_ms
}

/// The highest rate meeting the bar: doubles from `start` until a rate fails (or `ceiling`),
/// then halves the gap between the last pass and the first failure until it is within 10%.
/// `on_step` hears each step as it ends; `html_for(rate)` names a report per step.
pub async fn find_max_rate(
    plan: &Plan,
    population: &Population,
    p99_limit_ms: f64,
    ceiling: u32,
    mut on_step: impl FnMut(&RateStep),
    html_for: impl Fn(u32) -> Option<PathBuf>,
) -> Result<Vec<RateStep>, LoadError> {
    let mut steps: Vec<RateStep> = Vec::new();
    let (mut passed, mut failed) = (0, None);
    let mut rate = plan.rate.max(1);
    loop {
        let step_plan = Plan {
            rate,
            html_report: html_for(rate),
            ..plan.clone()
        };
        let report = run(&step_plan, population).await?;
        let step = RateStep {
            passed: meets(&report, p99_limit_ms),
            report,
        };
        on_step(&step);
        if step.passed {
            passed = rate;
        } else {
            failed = Some(rate);
        }
        steps.push(step);
        rate = match failed {
            // Doubling until the first failure or the ceiling.
            None if rate < ceiling => rate.saturating_mul(2).min(ceiling),
            None => break,
            // Then halving the gap, to within 10% of the last pass.
            Some(fail) if passed > 0 && fail - passed > passed / 10 => passed + (fail - passed) / 2,
            Some(_) => break,
        };
    }
    Ok(steps)
}
