//! A client of the config servers: the etcd model's own wire (`Request`/`Reply`), spoken by
//! routers, shards and the balancer to read the routing table and commit migrations.
//!
//! Reads (linearizable, through ReadIndex) are retried freely. A compare-and-swap is sent again
//! only after a definite "not leader": after a timeout its fate is unknown, and the caller learns
//! it by reading once the request can no longer arrive ([`ConfigClient::settle_after`]), because a
//! resent swap could land after the caller had concluded that it had not.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use quorumlab_experiment::history::{Key, OpKind, Value};
use turmoil::net::UdpSocket;

use super::routing::{chunk_key, Entry, Table};
use crate::host::{node_addr, now_us};
use crate::wire::{Packet, Reply, Request};

/// How long one attempt waits for a config server's answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(150);

/// What a compare-and-swap did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swap {
    /// It swapped.
    Swapped,
    /// The key held something else.
    NotSwapped,
    /// No answer: it may or may not have swapped.
    Unknown,
}

/// One socket's conversation with the config servers.
pub struct ConfigClient {
    socket: UdpSocket,
    client: u32,
    seq: u64,
    servers: u64,
    leader: u64,
    latency_max: Duration,
    buf: Vec<u8>,
}

impl ConfigClient {
    /// Binds `port` and speaks as etcd client `client` (unique in the run) to `servers` config
    /// servers (`n1..`), whose datagrams take up to `latency_max`.
    pub async fn bind(
        port: u16,
        client: u32,
        servers: u64,
        latency_max: Duration,
    ) -> std::io::Result<ConfigClient> {
        let socket = UdpSocket::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)).await?;
        Ok(ConfigClient {
            socket,
            client,
            seq: 0,
            servers,
            leader: 1,
            latency_max,
            buf: vec![0; 4096],
        })
    }

    fn next_server(&mut self) {
        self.leader = self.leader % self.servers + 1;
    }

    /// One attempt at the server believed to lead: `None` on timeout.
    async fn attempt(&mut self, op: OpKind) -> std::io::Result<Option<Reply>> {
        self.seq += 1;
        let (client, seq) = (self.client, self.seq);
        let bytes = Packet::Request(Request { client, seq, op }).encode();
        let to: SocketAddr = node_addr(self.leader);
        let _ = self.socket.try_send_to(&bytes, to);
        let answer = tokio::time::timeout(ATTEMPT_TIMEOUT, async {
            loop {
                let (len, _) = self.socket.recv_from(&mut self.buf).await?;
                if let Ok(Packet::Reply {
                    client: c,
                    seq: s,
                    reply,
                }) = Packet::decode(&self.buf[..len])
                {
                    if c == client && s == seq {
                        return Ok::<Reply, std::io::Error>(reply);
                    }
                }
            }
        })
        .await;
        match answer {
            Ok(reply) => reply.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Performs `op` until it is answered or `deadline_us` passes; `resend` says whether it may
    /// be sent again after a timeout (reads: yes; writes: no).
    async fn perform(
        &mut self,
        op: OpKind,
        deadline_us: u64,
        resend: bool,
    ) -> std::io::Result<Option<Reply>> {
        while now_us() < deadline_us {
            match self.attempt(op).await? {
                Some(Reply::NotLeader { hint }) => {
                    if hint == 0 {
                        self.next_server();
                        // No leader known: give an election a moment.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    } else {
                        self.leader = hint;
                    }
                }
                Some(reply) => return Ok(Some(reply)),
                None if resend => self.next_server(),
                None => {
                    self.next_server();
                    return Ok(None);
                }
            }
        }
        Ok(None)
    }

    /// A linearizable read of `key`: `None` when no config server answered in time.
    pub async fn get(
        &mut self,
        key: Key,
        deadline_us: u64,
    ) -> std::io::Result<Option<Option<Value>>> {
        Ok(
            match self.perform(OpKind::Get { key }, deadline_us, true).await? {
                Some(Reply::Get(value)) => Some(value),
                _ => None,
            },
        )
    }

    /// Writes `value` to `key` (used only to set the table up before the workload starts).
    pub async fn put(&mut self, key: Key, value: Value, deadline_us: u64) -> std::io::Result<bool> {
        while now_us() < deadline_us {
            if let Some(Reply::Put) = self
                .perform(OpKind::Put { key, value }, deadline_us, false)
                .await?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Swaps `key` from `expect` to `new`, sent once per leader it tries.
    pub async fn cas(
        &mut self,
        key: Key,
        expect: Value,
        new: Value,
        deadline_us: u64,
    ) -> std::io::Result<Swap> {
        Ok(
            match self
                .perform(OpKind::Cas { key, expect, new }, deadline_us, false)
                .await?
            {
                Some(Reply::Cas(true)) => Swap::Swapped,
                Some(Reply::Cas(false)) => Swap::NotSwapped,
                _ => Swap::Unknown,
            },
        )
    }

    /// Reads `key` once nothing this client sent before can still arrive: the answer settles
    /// an unknown swap. Keeps trying until `deadline_us`.
    pub async fn settle_after(
        &mut self,
        key: Key,
        deadline_us: u64,
    ) -> std::io::Result<Option<Option<Value>>> {
        tokio::time::sleep(self.latency_max + Duration::from_millis(1)).await;
        self.get(key, deadline_us).await
    }

    /// The whole routing table of `chunks` chunks, or `None` if some read went unanswered by
    /// `deadline_us`. Every chunk's read is sent at once (one round trip, as a router's query of
    /// the chunks collection is); whatever goes unanswered is read again one by one.
    pub async fn read_table(
        &mut self,
        chunks: u32,
        deadline_us: u64,
    ) -> std::io::Result<Option<Table>> {
        let mut values: Vec<Option<Value>> = vec![None; chunks as usize];
        // A server that does not lead names the one that does: try the batch there.
        for _ in 0..self.servers {
            let leader = self.leader;
            self.read_batch(&mut values).await?;
            if self.leader == leader || values.iter().all(Option::is_some) {
                break;
            }
        }
        let mut table = Vec::with_capacity(chunks as usize);
        for (chunk, value) in values.into_iter().enumerate() {
            let value = match value {
                Some(v) => v,
                None => match self.get(chunk_key(chunk as u32), deadline_us).await? {
                    Some(Some(v)) => v,
                    _ => return Ok(None),
                },
            };
            table.push(Entry::decode(value));
        }
        Ok(Some(table))
    }

    /// One batch of reads for every chunk still missing in `values`, sent at once to the server
    /// believed to lead; fills in what is answered within one attempt's timeout.
    async fn read_batch(&mut self, values: &mut [Option<Value>]) -> std::io::Result<()> {
        let chunks = values.len() as u32;
        let first_seq = self.seq + 1;
        for chunk in 0..chunks {
            self.seq += 1;
            let request = Request {
                client: self.client,
                seq: self.seq,
                op: OpKind::Get {
                    key: chunk_key(chunk),
                },
            };
            let _ = self
                .socket
                .try_send_to(&Packet::Request(request).encode(), node_addr(self.leader));
        }
        let (client, last_seq) = (self.client, self.seq);
        let missing = values.iter().filter(|v| v.is_none()).count() as u32;
        let mut answered = 0;
        let _ = tokio::time::timeout(ATTEMPT_TIMEOUT, async {
            while answered < missing {
                let Ok((len, _)) = self.socket.recv_from(&mut self.buf).await else {
                    return;
                };
                let Ok(Packet::Reply {
                    client: c,
                    seq,
                    reply,
                }) = Packet::decode(&self.buf[..len])
                else {
                    continue;
                };
                if c != client || !(first_seq..=last_seq).contains(&seq) {
                    continue;
                }
                match reply {
                    Reply::Get(Some(v)) => {
                        let slot = &mut values[(seq - first_seq) as usize];
                        answered += u32::from(slot.is_none());
                        *slot = Some(v);
                    }
                    // Not the leader: the caller tries again where it points.
                    Reply::NotLeader { hint } => {
                        if hint == 0 {
                            self.leader = self.leader % self.servers + 1
                        } else {
                            self.leader = hint
                        }
                        return;
                    }
                    _ => {}
                }
            }
        })
        .await;
        Ok(())
    }
}
