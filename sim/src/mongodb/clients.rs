//! The simulated application and its instruments, the same as the real driver's: a watcher
//! asking every member `hello` every 20 ms, writers at the run's write concern, a reader at the
//! scenario's read concern and, for phased (lag) scenarios, a heartbeat document, its watchers
//! and a `replSetGetStatus` sampler.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use quorumlab_experiment::history::{Op, OpKind, Outcome};
use quorumlab_experiment::mongodb::{ReadConcern, WriteConcern};
use quorumlab_experiment::node::NodeId;
use quorumlab_experiment::replication::{compose_write_id, write_op, LagMethod, PROBE_CLIENT};

use super::host::{ask, bind, member_addr, sample, MongoWorldRef, Packet};
use super::member::WriteReply;
use crate::host::now_us;

/// What every client task shares.
#[derive(Clone)]
pub struct ClientPlan {
    /// The world, for recording.
    pub world: MongoWorldRef,
    /// Members of the set.
    pub members: u64,
    /// The newest primary the watcher has seen.
    pub primary: Rc<Cell<NodeId>>,
    /// When the workload ends.
    pub until: Duration,
    /// Writers' write concern and `wtimeout` (µs).
    pub write_concern: (WriteConcern, Option<u64>),
    /// Readers' read concern.
    pub read_concern: ReadConcern,
    /// How long a client waits for one answer.
    pub timeout: Duration,
}

fn elapsed() -> Duration {
    turmoil::elapsed()
}

fn since_start(world: &MongoWorldRef) -> u64 {
    now_us().saturating_sub(world.borrow().start_us)
}

fn ok_write() -> Outcome {
    Outcome::Ok {
        read: None,
        swapped: None,
    }
}

/// `hello` to every member every 20 ms: the primary with the newest term is the one to write to
/// (as drivers order primaries by `electionId`); each change is recorded.
pub async fn watcher(plan: ClientPlan) -> turmoil::Result {
    let socket = bind(7000).await?;
    let mut buf = vec![0u8; 4096];
    let mut seq = 0;
    let mut current: Option<(u64, NodeId)> = None;
    while elapsed() < plan.until {
        let round = seq;
        for id in NodeId::all(plan.members as usize) {
            seq += 1;
            let _ = socket.try_send_to(&Packet::Hello { seq }.encode(), member_addr(id));
        }
        let mut newest: Option<(u64, NodeId)> = None;
        let _ = tokio::time::timeout(Duration::from_millis(20), async {
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(Packet::HelloReply {
                    seq: s,
                    primary,
                    term,
                }) = serde_json::from_slice::<Packet>(&buf[..len])
                else {
                    continue;
                };
                let id = NodeId::all(plan.members as usize).find(|i| member_addr(*i) == from);
                if let (true, true, Some(id)) = (s > round, primary, id) {
                    newest = newest.max(Some((term, id)));
                }
            }
        })
        .await;
        if let Some((term, id)) = newest {
            if current.is_none_or(|c| (term, id) != c && term >= c.0) {
                current = Some((term, id));
                plan.primary.set(id);
                let at = since_start(&plan.world);
                let mut world = plan.world.borrow_mut();
                world.primaries_seen.push((at, id, term));
                world.event("hello".into(), format!("{id} is primary (term {term})"));
            }
        }
    }
    Ok(())
}

/// One writer: inserts to the newest primary at the run's write concern, at its share of the
/// phase's rate; each insert's outcome goes into the history.
pub async fn writer(plan: ClientPlan, client: u64, clients: u64) -> turmoil::Result {
    let socket = bind(7100 + client as u16).await?;
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    let (w, wtimeout_us) = plan.write_concern;
    while elapsed() < plan.until {
        let rate = plan
            .world
            .borrow()
            .phase_at(since_start(&plan.world))
            .rate_per_s;
        if rate == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let period = Duration::from_secs_f64(clients as f64 / rate as f64);
        let began = elapsed();
        n += 1;
        let id = compose_write_id(0, client as u32, n);
        let target = plan.primary.get();
        let invoke_us = since_start(&plan.world);
        let insert = Packet::Insert {
            seq: id,
            id,
            heartbeat: None,
            w,
            wtimeout_us,
        };
        let outcome = match ask(&socket, &mut buf, target, insert, id, plan.timeout).await {
            Some(Packet::Written {
                reply: WriteReply::Ok,
                ..
            }) => ok_write(),
            Some(Packet::Written {
                reply: WriteReply::NotPrimary,
                ..
            })
            | Some(Packet::Refused { .. }) => Outcome::Fail,
            // A write-concern error, an interruption or silence: it may yet be kept or lost.
            _ => Outcome::Info,
        };
        let op = write_op(
            client as u32,
            id,
            (invoke_us, since_start(&plan.world)),
            outcome,
            target.to_string(),
        );
        plan.world.borrow_mut().ops.push(op);
        if let Some(rest) = period.checked_sub(elapsed() - began) {
            tokio::time::sleep(rest).await;
        }
    }
    Ok(())
}

/// Every 50 ms, the newest document on the primary at the scenario's read concern.
pub async fn reader(plan: ClientPlan) -> turmoil::Result {
    let socket = bind(7250).await?;
    let mut buf = vec![0u8; 4096];
    let mut seq = 0;
    while elapsed() < plan.until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        seq += 1;
        let target = plan.primary.get();
        let invoke_us = since_start(&plan.world);
        let read = Packet::Read {
            seq,
            concern: plan.read_concern,
        };
        let answer = ask(&socket, &mut buf, target, read, seq, plan.timeout).await;
        if let Some(Packet::ReadResult { result: Ok(id), .. }) = answer {
            let op = Op {
                id: 0,
                client: PROBE_CLIENT - 1,
                kind: OpKind::Get { key: 0 },
                invoke_us,
                complete_us: since_start(&plan.world),
                outcome: Outcome::Ok {
                    read: Some(id),
                    swapped: None,
                },
                node: Some(target.to_string()),
            };
            plan.world.borrow_mut().ops.push(op);
        }
    }
    Ok(())
}

/// Writes a heartbeat document (`w:1`) to the primary every 100 ms while the phase has writes.
pub async fn heartbeat(plan: ClientPlan) -> turmoil::Result {
    let socket = bind(7300).await?;
    let mut buf = vec![0u8; 4096];
    let mut seq = 0;
    while elapsed() < plan.until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if plan
            .world
            .borrow()
            .phase_at(since_start(&plan.world))
            .rate_per_s
            == 0
        {
            continue;
        }
        seq += 1;
        let insert = Packet::Insert {
            seq,
            id: compose_write_id(1, 0, seq),
            heartbeat: Some(seq),
            w: WriteConcern::W1,
            wtimeout_us: None,
        };
        let primary = plan.primary.get();
        let _ = ask(
            &socket,
            &mut buf,
            primary,
            insert,
            seq,
            Duration::from_secs(1),
        )
        .await;
    }
    Ok(())
}

/// Polls one member every 10 ms; each newly visible heartbeat's lag is now minus its write time.
pub async fn heartbeat_watcher(plan: ClientPlan, member: NodeId) -> turmoil::Result {
    let socket = bind(7400 + member.0 as u16).await?;
    let mut buf = vec![0u8; 4096];
    let (mut seq, mut last_seen) = (0, 0);
    while elapsed() < plan.until {
        tokio::time::sleep(Duration::from_millis(10)).await;
        seq += 1;
        let read = Packet::ReadHeartbeat { seq };
        let answer = ask(
            &socket,
            &mut buf,
            member,
            read,
            seq,
            Duration::from_millis(100),
        )
        .await;
        if let Some(Packet::HeartbeatDoc {
            latest: Some((hb, written_us)),
            ..
        }) = answer
        {
            if hb > last_seen && member != plan.primary.get() {
                last_seen = hb;
                let lag_ms = now_us().saturating_sub(written_us) as f64 / 1000.0;
                sample(&plan.world, member, LagMethod::Heartbeat, Some(lag_ms));
            }
        }
    }
    Ok(())
}

/// Every 100 ms, `replSetGetStatus` on every member: on the primary, each secondary's
/// `optimeDate` behind the primary's; on each secondary, its own `optimeDate`'s age.
pub async fn status_sampler(plan: ClientPlan) -> turmoil::Result {
    let socket = bind(7500).await?;
    let mut buf = vec![0u8; 1 << 16];
    let mut seq = 0;
    while elapsed() < plan.until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for id in NodeId::all(plan.members as usize) {
            seq += 1;
            let status = Packet::Status { seq };
            let answer = ask(
                &socket,
                &mut buf,
                id,
                status,
                seq,
                Duration::from_millis(100),
            )
            .await;
            let Some(Packet::StatusReply {
                primary,
                optime_dates_ms,
                ..
            }) = answer
            else {
                continue;
            };
            record_status(&plan, id, primary, &optime_dates_ms);
        }
    }
    Ok(())
}

fn record_status(
    plan: &ClientPlan,
    answering: NodeId,
    primary: bool,
    optime_dates_ms: &[(NodeId, u64)],
) {
    let date_of = |id: NodeId| optime_dates_ms.iter().find(|(m, _)| *m == id).map(|d| d.1);
    if primary {
        let own = date_of(answering).unwrap_or(0);
        for &(member, date) in optime_dates_ms.iter().filter(|(m, _)| *m != answering) {
            let behind = own.saturating_sub(date) as f64;
            sample(&plan.world, member, LagMethod::OptimeLag, Some(behind));
        }
    } else if let Some(date) = date_of(answering) {
        let age = (now_us() / 1000).saturating_sub(date) as f64;
        sample(&plan.world, answering, LagMethod::OptimeAge, Some(age));
    }
}
