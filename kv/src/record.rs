//! The log's records and the operations they carry, as bytes.
//!
//! A record is a 16-byte header and its payload:
//!
//! ```text
//! len: u32 LE (payload bytes) | crc: u32 LE (CRC-32C of seq and payload) | seq: u64 LE | payload
//! ```
//!
//! Reading a log is [`scan`]: records in order, stopping at the first one that is incomplete (a
//! torn write at the tail), fails its checksum, is longer than any record can be, or does not
//! carry the next sequence number (bytes of an older log generation). What comes before that
//! point is the log; nothing after it is ever applied, and nothing partial is.

use crate::StoreError;

/// Bytes before a record's payload.
pub const HEADER_BYTES: usize = 16;
/// Longest key.
pub const KEY_MAX_BYTES: usize = 1024;
/// Longest value.
pub const VALUE_MAX_BYTES: usize = 1 << 20;
/// Longest payload a record can have (a put of the longest key and value).
pub const PAYLOAD_MAX_BYTES: usize = 1 + 2 + KEY_MAX_BYTES + 4 + VALUE_MAX_BYTES;

/// What a record asks the table to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

const PUT: u8 = 1;
const DELETE: u8 = 2;

impl Op {
    /// Checks the limits a caller must keep to (one clear error each).
    pub fn check(&self) -> Result<(), StoreError> {
        let (key, value) = match self {
            Op::Put { key, value } => (key, Some(value)),
            Op::Delete { key } => (key, None),
        };
        if key.is_empty() || key.len() > KEY_MAX_BYTES {
            return Err(StoreError::Limit(format!(
                "a key has 1 to {KEY_MAX_BYTES} bytes, not {}",
                key.len()
            )));
        }
        if let Some(value) = value.filter(|v| v.len() > VALUE_MAX_BYTES) {
            return Err(StoreError::Limit(format!(
                "a value has at most {VALUE_MAX_BYTES} bytes, not {}",
                value.len()
            )));
        }
        Ok(())
    }

    /// The payload: a tag, the key with its u16 length, and for a put the value with its u32
    /// length.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Op::Put { key, value } => {
                out.push(PUT);
                push_key(&mut out, key);
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
            Op::Delete { key } => {
                out.push(DELETE);
                push_key(&mut out, key);
            }
        }
        out
    }

    /// The inverse of [`Op::encode`]; `None` for bytes no encode made. A payload whose
    /// checksum matched can still be `None` only if it was written by another program.
    pub fn decode(payload: &[u8]) -> Option<Op> {
        let (&tag, rest) = payload.split_first()?;
        let (key, rest) = take(rest, 2)?;
        let key_len = u16::from_le_bytes(key.try_into().ok()?) as usize;
        let (key, rest) = take(rest, key_len)?;
        match tag {
            DELETE if rest.is_empty() => Some(Op::Delete { key: key.to_vec() }),
            PUT => {
                let (len, rest) = take(rest, 4)?;
                let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
                (rest.len() == len).then(|| Op::Put {
                    key: key.to_vec(),
                    value: rest.to_vec(),
                })
            }
            _ => None,
        }
    }
}

fn push_key(out: &mut Vec<u8>, key: &[u8]) {
    debug_assert!(key.len() <= KEY_MAX_BYTES);
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
}

fn take(bytes: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    (bytes.len() >= n).then(|| bytes.split_at(n))
}

/// Record `seq` carrying `payload`, as it is written to the log.
pub fn frame(seq: u64, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= PAYLOAD_MAX_BYTES, "payload over the limit");
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(seq, payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn checksum(seq: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload)
}

/// Why a scan stopped before the end of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// It read every byte: the log ends cleanly.
    End,
    /// The bytes end inside a record (a torn write).
    Torn,
    /// A complete record's checksum does not match (or its length is impossible).
    Corrupt,
    /// A valid record with another sequence number than the next (an older generation's).
    OutOfSequence,
}

/// What a scan found: the records to apply, where the valid log ends, and why it ends there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// (sequence number, payload) of every valid record, in order.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Bytes of the valid prefix: where the next record goes.
    pub valid_bytes: usize,
    /// Why it stopped there.
    pub stop: Stop,
}

/// Reads records from `bytes`, the first expected to carry sequence number `first_seq`.
pub fn scan(bytes: &[u8], first_seq: u64) -> Scan {
    scan_with(bytes, first_seq, true)
}

/// [`scan`], or with `check_crc` false the broken build's scan that takes any complete record.
pub fn scan_with(bytes: &[u8], first_seq: u64, check_crc: bool) -> Scan {
    let mut records = Vec::new();
    let mut at = 0;
    let stop = loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            break Stop::End;
        }
        if rest.len() < HEADER_BYTES {
            break Stop::Torn;
        }
        let word = |i: usize| u32::from_le_bytes(rest[i..i + 4].try_into().expect("4 bytes"));
        let (len, crc) = (word(0) as usize, word(4));
        let seq = u64::from_le_bytes(rest[8..16].try_into().expect("8 bytes"));
        if len > PAYLOAD_MAX_BYTES {
            break Stop::Corrupt;
        }
        if rest.len() < HEADER_BYTES + len {
            break Stop::Torn;
        }
        let payload = &rest[HEADER_BYTES..HEADER_BYTES + len];
        if check_crc && checksum(seq, payload) != crc {
            break Stop::Corrupt;
        }
        if seq != first_seq + records.len() as u64 {
            break Stop::OutOfSequence;
        }
        records.push((seq, payload.to_vec()));
        at += HEADER_BYTES + len;
    };
    Scan {
        records,
        valid_bytes: at,
        stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    fn log(ops: &[Op], first_seq: u64) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            bytes.extend(frame(first_seq + i as u64, &op.encode()));
            ends.push(bytes.len());
        }
        (bytes, ends)
    }

    #[test]
    fn ops_round_trip() {
        for op in [
            put("k", ""),
            put("key", "value"),
            Op::Delete { key: "k".into() },
        ] {
            assert_eq!(Op::decode(&op.encode()), Some(op));
        }
        assert_eq!(Op::decode(&[9, 1, 0, b'k']), None);
        assert_eq!(Op::decode(&[]), None);
    }

    #[test]
    fn a_log_cut_anywhere_yields_exactly_the_records_before_the_cut() {
        let ops = [
            put("a", "1"),
            Op::Delete { key: "a".into() },
            put("bb", "22"),
        ];
        let (bytes, ends) = log(&ops, 7);
        for cut in 0..=bytes.len() {
            let scan = scan(&bytes[..cut], 7);
            let whole = ends.iter().filter(|&&end| end <= cut).count();
            assert_eq!(scan.records.len(), whole, "cut at {cut}");
            assert_eq!(
                scan.valid_bytes,
                if whole == 0 { 0 } else { ends[whole - 1] }
            );
            let clean = cut == 0 || ends.contains(&cut);
            assert_eq!(
                scan.stop,
                if clean { Stop::End } else { Stop::Torn },
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn any_flipped_bit_stops_the_scan_at_that_record() {
        let ops = [put("a", "1"), put("b", "2"), put("c", "3")];
        let (bytes, ends) = log(&ops, 1);
        for byte in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[byte] ^= 1 << bit;
                let scan = scan(&bad, 1);
                let hit = ends.iter().position(|&end| byte < end).expect("inside");
                assert_eq!(scan.records.len(), hit, "byte {byte} bit {bit}");
                assert_ne!(scan.stop, Stop::End, "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn records_of_another_generation_are_not_applied() {
        let (mut bytes, _) = log(&[put("a", "1")], 1);
        bytes.extend(frame(5, &put("b", "2").encode()));
        let scan = scan(&bytes, 1);
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.stop, Stop::OutOfSequence);
    }

    #[test]
    fn limits_are_checked_before_anything_is_written() {
        assert!(put("", "v").check().is_err());
        assert!(put(&"k".repeat(KEY_MAX_BYTES + 1), "v").check().is_err());
        let big = Op::Put {
            key: b"k".to_vec(),
            value: vec![0; VALUE_MAX_BYTES + 1],
        };
        assert!(big.check().is_err());
        assert!(put(&"k".repeat(KEY_MAX_BYTES), "").check().is_ok());
    }
}
