//! What travels over the simulated network, and the commands stored in the Raft log.
//!
//! Raft messages are encoded with raft-rs's own protobuf codec; client requests, replies and log
//! commands use a small fixed little-endian layout. Every packet carries a sequence number so the
//! report can draw a message from its send to its delivery.

use protobuf::Message as _;
use quorumlab_experiment::history::{OpKind, Value};
use raft::eraftpb::Message;

/// A datagram between two hosts.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    /// A Raft message between nodes.
    Raft {
        /// Sender-unique id, for the message-sequence diagram.
        packet_id: u64,
        /// The message.
        msg: Box<Message>,
    },
    /// A client asks a node to perform an operation.
    Request(Request),
    /// A node answers a client.
    Reply {
        /// Which request this answers.
        client: u32,
        /// The request's sequence number at that client.
        seq: u64,
        /// The answer.
        reply: Reply,
    },
}

/// A client's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The client.
    pub client: u32,
    /// Sequence number of this attempt at the client.
    pub seq: u64,
    /// What to do.
    pub op: OpKind,
}

/// A node's answer to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// This node does not lead; the operation was not proposed. `hint` is the leader it knows of
    /// (0 when none).
    NotLeader {
        /// Raft id of the known leader, or 0.
        hint: u64,
    },
    /// A put was committed and applied.
    Put,
    /// A get's value.
    Get(Option<Value>),
    /// A compare-and-swap was committed; whether it swapped.
    Cas(bool),
}

/// Malformed bytes on the wire.
#[derive(Debug, thiserror::Error)]
#[error("malformed packet: {0}")]
pub struct DecodeError(&'static str);

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.0.split_first().ok_or(DecodeError("truncated"))?;
        self.0 = rest;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let (b, rest) = self
            .0
            .split_first_chunk::<4>()
            .ok_or(DecodeError("truncated"))?;
        self.0 = rest;
        Ok(u32::from_le_bytes(*b))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let (b, rest) = self
            .0
            .split_first_chunk::<8>()
            .ok_or(DecodeError("truncated"))?;
        self.0 = rest;
        Ok(u64::from_le_bytes(*b))
    }
}

fn put_op(out: &mut Vec<u8>, op: &OpKind) {
    match *op {
        OpKind::Put { key, value } => {
            out.push(0);
            out.extend_from_slice(&key.to_le_bytes());
            out.extend_from_slice(&value.to_le_bytes());
        }
        OpKind::Get { key } => {
            out.push(1);
            out.extend_from_slice(&key.to_le_bytes());
        }
        OpKind::Cas { key, expect, new } => {
            out.push(2);
            out.extend_from_slice(&key.to_le_bytes());
            out.extend_from_slice(&expect.to_le_bytes());
            out.extend_from_slice(&new.to_le_bytes());
        }
    }
}

fn take_op(c: &mut Cursor) -> Result<OpKind, DecodeError> {
    Ok(match c.u8()? {
        0 => OpKind::Put {
            key: c.u32()?,
            value: c.u64()?,
        },
        1 => OpKind::Get { key: c.u32()? },
        2 => OpKind::Cas {
            key: c.u32()?,
            expect: c.u64()?,
            new: c.u64()?,
        },
        _ => return Err(DecodeError("unknown operation")),
    })
}

impl Packet {
    /// Serialises the packet.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            Packet::Raft { packet_id, msg } => {
                out.push(0);
                out.extend_from_slice(&packet_id.to_le_bytes());
                msg.write_to_vec(&mut out)
                    .expect("raft messages always encode");
            }
            Packet::Request(r) => {
                out.push(1);
                out.extend_from_slice(&r.client.to_le_bytes());
                out.extend_from_slice(&r.seq.to_le_bytes());
                put_op(&mut out, &r.op);
            }
            Packet::Reply { client, seq, reply } => {
                out.push(2);
                out.extend_from_slice(&client.to_le_bytes());
                out.extend_from_slice(&seq.to_le_bytes());
                match *reply {
                    Reply::NotLeader { hint } => {
                        out.push(0);
                        out.extend_from_slice(&hint.to_le_bytes());
                    }
                    Reply::Put => out.push(1),
                    Reply::Get(None) => out.push(2),
                    Reply::Get(Some(v)) => {
                        out.push(3);
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                    Reply::Cas(swapped) => out.extend_from_slice(&[4, swapped as u8]),
                }
            }
        }
        out
    }

    /// Parses a packet.
    pub fn decode(bytes: &[u8]) -> Result<Packet, DecodeError> {
        let mut c = Cursor(bytes);
        match c.u8()? {
            0 => {
                let packet_id = c.u64()?;
                let msg =
                    Message::parse_from_bytes(c.0).map_err(|_| DecodeError("raft message"))?;
                Ok(Packet::Raft {
                    packet_id,
                    msg: Box::new(msg),
                })
            }
            1 => Ok(Packet::Request(Request {
                client: c.u32()?,
                seq: c.u64()?,
                op: take_op(&mut c)?,
            })),
            2 => {
                let (client, seq) = (c.u32()?, c.u64()?);
                let reply = match c.u8()? {
                    0 => Reply::NotLeader { hint: c.u64()? },
                    1 => Reply::Put,
                    2 => Reply::Get(None),
                    3 => Reply::Get(Some(c.u64()?)),
                    4 => Reply::Cas(c.u8()? != 0),
                    _ => return Err(DecodeError("unknown reply")),
                };
                Ok(Packet::Reply { client, seq, reply })
            }
            _ => Err(DecodeError("unknown packet type")),
        }
    }
}

/// A write as stored in a Raft log entry: who asked, and what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    /// Requesting client.
    pub client: u32,
    /// Request sequence number at that client.
    pub seq: u64,
    /// The write (never a get: reads go through ReadIndex, not the log).
    pub op: OpKind,
}

impl Command {
    /// Serialises the command into entry data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        out.extend_from_slice(&self.client.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        put_op(&mut out, &self.op);
        out
    }

    /// Parses entry data.
    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        let mut c = Cursor(bytes);
        Ok(Command {
            client: c.u32()?,
            seq: c.u64()?,
            op: take_op(&mut c)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip() {
        let msg = Message {
            term: 7,
            from: 2,
            ..Default::default()
        };
        let packets = [
            Packet::Raft {
                packet_id: 9,
                msg: Box::new(msg),
            },
            Packet::Request(Request {
                client: 3,
                seq: 4,
                op: OpKind::Cas {
                    key: 1,
                    expect: 2,
                    new: 3,
                },
            }),
            Packet::Reply {
                client: 3,
                seq: 4,
                reply: Reply::Get(Some(5)),
            },
            Packet::Reply {
                client: 3,
                seq: 4,
                reply: Reply::NotLeader { hint: 2 },
            },
        ];
        for p in packets {
            assert_eq!(Packet::decode(&p.encode()).unwrap(), p);
        }
        assert!(Packet::decode(&[1, 2]).is_err());
    }
}
