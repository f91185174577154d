//! The routers with the application clients beside them, and the balancer.
//!
//! Each router host runs its share of the workload's clients, as applications often run a
//! `mongos` on their own host: the clients share the router's cached routing table, send each
//! insert and read to the owning shard with the chunk version they believe, and on a
//! stale-config answer refresh the table from the config servers and retry (counted). Cutting a
//! router off cuts its clients off with it. The balancer runs beside the config servers (as on
//! the config primary) and is not a fault target; it first writes the collection's routing table,
//! then asks donors to move chunks, one migration at a time.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::Duration;

use quorumlab_experiment::history::{Key, Op, OpKind, Outcome};
use quorumlab_experiment::rebalance::{MigrationOutcome, ReadRecord};
use quorumlab_experiment::sharded::BalancerPolicy;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use turmoil::net::UdpSocket;

use super::config::ConfigClient;
use super::host::{config_client, shard_addr, token, Packet, ShardedWorldRef};
use super::routing::{chunk_key, version_went_back, Entry, Table, COLLECTION_VERSION_KEY};
use super::shard::Answer;
use crate::host::now_us;

/// First port of a router's client sockets (client `i` of the router binds `+ 2i` and, for the
/// config servers, `+ 2i + 1`).
const CLIENT_PORT_BASE: u16 = 10_000;
/// The balancer's port.
const BALANCER_PORT: u16 = 28_000;

/// What a router host runs.
#[derive(Clone)]
pub struct RouterPlan {
    /// The world.
    pub world: ShardedWorldRef,
    /// This router (0 is `r1`).
    pub router: usize,
    /// The clients beside it (global client numbers).
    pub clients: Vec<u32>,
    /// Time between one client's operations.
    pub period: Duration,
    /// Weights of inserts and reads.
    pub mix: [u32; 2],
    /// Workload keys.
    pub keys: u32,
    /// Keys in order, one after another (a replayed time-ordered workload), not at random.
    pub keys_in_order: bool,
    /// How long one request to a shard waits.
    pub timeout: Duration,
    /// Stale-config retries per operation.
    pub retries: u32,
    /// Workload start and end, simulated time.
    pub start: Duration,
    /// Stop issuing operations here.
    pub until: Duration,
    /// Seed.
    pub seed: u64,
}

/// A router's cached routing table, shared by the clients beside it.
#[derive(Default)]
struct Cache {
    table: Option<Table>,
    generation: u64,
}

/// Runs router host `plan.router` and its clients until the workload ends; on a restart the
/// cache starts empty and unfinished writes of its clients are recorded as unknown.
pub async fn router_host(plan: RouterPlan, incarnation: u64) -> turmoil::Result {
    {
        let mut world = plan.world.borrow_mut();
        let now = world.since_start_us();
        for &client in &plan.clients {
            if let Some((kind, invoke_us)) = world.in_flight.remove(&client) {
                world.record_op(Op {
                    id: 0,
                    client,
                    kind,
                    invoke_us,
                    complete_us: now,
                    outcome: Outcome::Info,
                    node: None,
                });
            }
        }
    }
    let now = turmoil::elapsed();
    if now < plan.start {
        tokio::time::sleep(plan.start - now).await;
    }
    // Like an application that waits for its collection to be sharded.
    while !plan.world.borrow().table_ready {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cache = Rc::new(RefCell::new(Cache::default()));
    let mut tasks = Vec::new();
    for (i, &client) in plan.clients.iter().enumerate() {
        let port = CLIENT_PORT_BASE + 2 * i as u16;
        let (plan, cache) = (plan.clone(), cache.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let mut c = RouterClient::new(plan, cache, client, port, incarnation).await?;
            c.run().await
        }));
    }
    for task in tasks {
        task.await??;
    }
    // The host stays up (reachable) after its clients are done.
    std::future::pending::<()>().await;
    Ok(())
}

/// One application client beside a router.
struct RouterClient {
    plan: RouterPlan,
    cache: Rc<RefCell<Cache>>,
    client: u32,
    port: u16,
    socket: UdpSocket,
    config: ConfigClient,
    rng: SmallRng,
    seq: u64,
    written: u64,
    incarnation: u64,
    buf: Vec<u8>,
}

/// How one request to a shard ended.
enum Sent {
    Answered(Answer),
    TimedOut,
}

impl RouterClient {
    async fn new(
        plan: RouterPlan,
        cache: Rc<RefCell<Cache>>,
        client: u32,
        port: u16,
        incarnation: u64,
    ) -> std::io::Result<RouterClient> {
        let socket = UdpSocket::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)).await?;
        let config = config_client(&plan.world, port + 1).await?;
        let seed = plan.seed ^ (u64::from(client) << 32) ^ incarnation;
        Ok(RouterClient {
            rng: SmallRng::seed_from_u64(crate::run::mix(seed, 0x5a, 0)),
            plan,
            cache,
            client,
            port,
            socket,
            config,
            seq: 0,
            written: 0,
            incarnation,
            buf: vec![0; 1 << 16],
        })
    }

    async fn run(&mut self) -> std::io::Result<()> {
        let mut ticker = tokio::time::interval(self.plan.period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticker.tick().await;
            if turmoil::elapsed() >= self.plan.until {
                return Ok(());
            }
            let [put, get] = self.plan.mix;
            let key = self.next_key();
            if self.rng.gen_range(0..put + get) < put {
                self.insert(key).await?;
            } else {
                let broadcast = self.rng.gen_bool(0.5);
                self.find(key, broadcast).await?;
            }
        }
    }

    fn next_key(&mut self) -> Key {
        if self.plan.keys_in_order {
            let per_client = self.plan.clients.len() as u64 * 64;
            let n = self.written * per_client + u64::from(self.client);
            return (n % u64::from(self.plan.keys)) as Key;
        }
        self.rng.gen_range(0..self.plan.keys)
    }

    fn since_start_us(&self) -> u64 {
        self.plan.world.borrow().since_start_us()
    }

    /// One insert, recorded in the history.
    async fn insert(&mut self, key: Key) -> std::io::Result<()> {
        self.written += 1;
        let id = (u64::from(self.client) << 40) | (self.incarnation << 32) | self.written;
        let kind = OpKind::Put { key, value: id };
        let invoke_us = self.since_start_us();
        self.plan
            .world
            .borrow_mut()
            .in_flight
            .insert(self.client, (kind, invoke_us));
        let (outcome, node) = self.route_write(key, id).await?;
        let mut world = self.plan.world.borrow_mut();
        world.in_flight.remove(&self.client);
        let complete_us = world.since_start_us();
        world.record_op(Op {
            id: 0,
            client: self.client,
            kind,
            invoke_us,
            complete_us,
            outcome,
            node,
        });
        Ok(())
    }

    /// Routes an insert, refreshing and retrying on stale config.
    async fn route_write(
        &mut self,
        key: Key,
        id: u64,
    ) -> std::io::Result<(Outcome, Option<String>)> {
        let ok = Outcome::Ok {
            read: None,
            swapped: None,
        };
        for _ in 0..=self.plan.retries {
            let Some((chunk, entry)) = self.route(key).await? else {
                return Ok((Outcome::Fail, None));
            };
            let node = Some(format!("s{}", entry.shard + 1));
            let tok = self.next_token();
            let doc = (key, id);
            let packet = Packet::Write {
                token: tok,
                chunk,
                doc,
                version: entry.version,
            };
            match self.ask(entry.shard, &packet, tok).await? {
                Sent::Answered(Answer::Written) => return Ok((ok, node)),
                Sent::Answered(_) => self.stale().await?,
                Sent::TimedOut => return Ok((Outcome::Info, node)),
            }
        }
        // Every answer was "stale config": the insert was never applied.
        Ok((Outcome::Fail, None))
    }

    /// One read of `key`: from its owner, or from every shard (merged as the router gets them).
    async fn find(&mut self, key: Key, broadcast: bool) -> std::io::Result<()> {
        let invoke_us = self.since_start_us();
        let ids = self.route_read(key, broadcast).await?;
        let complete_us = self.since_start_us();
        let read = ReadRecord {
            client: self.client,
            key,
            broadcast,
            invoke_us,
            complete_us,
            ids,
        };
        self.plan.world.borrow_mut().reads.push(read);
        Ok(())
    }

    async fn route_read(&mut self, key: Key, broadcast: bool) -> std::io::Result<Option<Vec<u64>>> {
        let shards = self.plan.world.borrow().layout.shards;
        'attempt: for _ in 0..=self.plan.retries {
            let Some((chunk, entry)) = self.route(key).await? else {
                return Ok(None);
            };
            let targets: Vec<usize> = if broadcast {
                (0..shards).collect()
            } else {
                vec![entry.shard]
            };
            let mut ids = Vec::new();
            for shard in targets {
                let tok = self.next_token();
                let packet = Packet::Read {
                    token: tok,
                    chunk,
                    key,
                    version: entry.version,
                };
                match self.ask(shard, &packet, tok).await? {
                    Sent::Answered(Answer::Docs(found)) => ids.extend(found),
                    Sent::Answered(_) => {
                        self.stale().await?;
                        continue 'attempt;
                    }
                    Sent::TimedOut => return Ok(None),
                }
            }
            return Ok(Some(ids));
        }
        Ok(None)
    }

    fn next_token(&mut self) -> u64 {
        self.seq += 1;
        token(self.plan.router, self.port, self.seq)
    }

    /// The chunk of `key` and its entry by the cached table (refreshed first if there is none);
    /// `None` when the config servers cannot be read.
    async fn route(&mut self, key: Key) -> std::io::Result<Option<(u32, Entry)>> {
        if self.cache.borrow().table.is_none() && !self.refresh().await? {
            return Ok(None);
        }
        let world = self.plan.world.borrow();
        let chunk = world.bounds.chunk_of(world.points[key as usize]);
        let cache = self.cache.borrow();
        let table = cache.table.as_ref().expect("refreshed");
        Ok(Some((chunk, table[chunk as usize])))
    }

    /// A stale-config answer: counted, then the table refreshed (unless a neighbour already has).
    async fn stale(&mut self) -> std::io::Result<()> {
        {
            let mut world = self.plan.world.borrow_mut();
            let at_us = world.since_start_us();
            world.stale_retries.push((at_us, self.plan.router));
        }
        self.refresh().await.map(|_| ())
    }

    /// Reads the routing table from the config servers into the cache.
    async fn refresh(&mut self) -> std::io::Result<bool> {
        let before = self.cache.borrow().generation;
        let chunks = self.plan.world.borrow().bounds.len() as u32;
        let deadline = now_us() + self.plan.timeout.as_micros() as u64;
        let Some(table) = self.config.read_table(chunks, deadline).await? else {
            return Ok(false);
        };
        let mut cache = self.cache.borrow_mut();
        if cache.generation != before && cache.table.is_some() {
            // A neighbour refreshed meanwhile; keep the newer of the two by version.
        }
        if let Some(old) = &cache.table {
            if let Some((chunk, was, now)) = version_went_back(old, &table) {
                if cache.generation == before {
                    let what = format!(
                        "router r{} saw chunk {} go from version {was} to {now}",
                        self.plan.router + 1,
                        chunk + 1
                    );
                    self.plan
                        .world
                        .borrow_mut()
                        .violations
                        .push(format!("chunk version went back: {what}"));
                }
                // An older read than a neighbour's newer one: keep the newer.
                return Ok(true);
            }
        }
        cache.table = Some(table);
        cache.generation += 1;
        Ok(true)
    }

    /// Sends `packet` to shard `shard` and waits for the answer to `tok`.
    async fn ask(&mut self, shard: usize, packet: &Packet, tok: u64) -> std::io::Result<Sent> {
        let layout = self.plan.world.borrow().layout;
        let _ = self
            .socket
            .try_send_to(&packet.encode(), shard_addr(&layout, shard));
        let socket = &self.socket;
        let buf = &mut self.buf;
        let answer = tokio::time::timeout(self.plan.timeout, async {
            loop {
                let (len, _) = socket.recv_from(buf).await?;
                if let Some(Packet::Answer { token, answer }) = Packet::decode(&buf[..len]) {
                    if token == tok {
                        return Ok::<Answer, std::io::Error>(answer);
                    }
                }
            }
        })
        .await;
        Ok(match answer {
            Ok(answer) => Sent::Answered(answer?),
            Err(_) => Sent::TimedOut,
        })
    }
}

/// What the balancer does.
#[derive(Clone)]
pub struct BalancerPlan {
    /// The world.
    pub world: ShardedWorldRef,
    /// The collection's routing table as it is set up.
    pub initial: Table,
    /// How it picks migrations.
    pub policy: BalancerPolicy,
    /// `even`: smallest chunk-count difference that moves a chunk.
    pub imbalance_chunks: usize,
    /// A growth replay's moves, in order: (chunk, recipient). Replaces the policy.
    pub moves: Option<Vec<(u32, usize)>>,
    /// Time between rounds.
    pub interval: Duration,
    /// How long to wait for a donor's answer.
    pub answer_timeout: Duration,
    /// When the workload starts (the balancer starts with it).
    pub start: Duration,
    /// When to stop starting migrations.
    pub until: Duration,
    /// Seed (`shuffle`).
    pub seed: u64,
}

/// Sets the routing table up, then balances until the workload ends.
pub async fn balancer(plan: BalancerPlan) -> turmoil::Result {
    let mut config = config_client(&plan.world, BALANCER_PORT + 1).await?;
    let socket = UdpSocket::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), BALANCER_PORT)).await?;
    let forever = u64::MAX;
    let top = plan.initial.iter().map(|e| e.version).max().unwrap_or(1);
    config.put(COLLECTION_VERSION_KEY, top, forever).await?;
    for (c, entry) in plan.initial.iter().enumerate() {
        config
            .put(chunk_key(c as u32), entry.encode(), forever)
            .await?;
    }
    {
        let mut world = plan.world.borrow_mut();
        world.table_ready = true;
        let what = format!(
            "routing table written: {} chunks at version {top}",
            plan.initial.len()
        );
        world.event("balancer".into(), what);
    }
    let now = turmoil::elapsed();
    if now < plan.start {
        tokio::time::sleep(plan.start - now).await;
    }
    let mut rng = SmallRng::seed_from_u64(crate::run::mix(plan.seed, 0xba1a, 0));
    let mut replay = plan.moves.clone().map(|m| m.into_iter());
    let mut buf = vec![0u8; 4096];
    while turmoil::elapsed() < plan.until {
        tokio::time::sleep(plan.interval).await;
        let deadline = now_us() + 2_000_000;
        let Some(table) = config
            .read_table(plan.initial.len() as u32, deadline)
            .await?
        else {
            continue;
        };
        let shards = plan.world.borrow().layout.shards;
        let pick = match replay.as_mut() {
            Some(moves) => moves.find(|&(chunk, to)| table[chunk as usize].shard != to),
            None => plan
                .policy
                .next_move(&table, shards, plan.imbalance_chunks, &mut |lo, hi| {
                    rng.gen_range(lo..hi)
                }),
        };
        let Some((chunk, to)) = pick else {
            if replay.is_some() {
                break;
            }
            continue;
        };
        let entry = table[chunk as usize];
        let number = {
            let mut w = plan.world.borrow_mut();
            w.next_migration += 1;
            w.next_migration - 1
        };
        let layout = plan.world.borrow().layout;
        let packet = Packet::Move {
            number,
            chunk,
            version: entry.version,
            to,
        };
        let _ = socket.try_send_to(&packet.encode(), shard_addr(&layout, entry.shard));
        let _ = tokio::time::timeout(plan.answer_timeout, async {
            loop {
                let Ok((len, _)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                if let Some(Packet::MoveResult { number: n, outcome }) = Packet::decode(&buf[..len])
                {
                    if n == number && outcome != MigrationOutcome::Running {
                        return;
                    }
                }
            }
        })
        .await;
    }
    Ok(())
}
