//! Read-your-writes, judged from a recorded client trace.
//!
//! Each client writes objects (each write answers with the object's new version and a
//! consistency token) and reads them back presenting its latest token. A read that presented a
//! token taken after a client's write must return that write's version or a newer one; anything
//! older is a violation, whichever node served it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One step of a client, in the client's own order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOp {
    /// The client.
    pub client: u32,
    /// The object (e.g. a user's account).
    pub object: u64,
    /// The version the write produced or the read returned.
    pub version: u64,
    /// A write, or a read.
    pub write: bool,
    /// Whether the read presented the client's latest token.
    pub with_token: bool,
    /// Who answered (for the report).
    pub served_by: String,
}

/// A read that returned state older than a write its token covered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleRead {
    /// The client.
    pub client: u32,
    /// The object.
    pub object: u64,
    /// The version the client had written.
    pub written: u64,
    /// The version the read returned.
    pub returned: u64,
    /// Who served the read.
    pub served_by: String,
}

/// Every read with a token that returned an older version than the client had written.
pub fn check_read_your_writes(trace: &[SessionOp]) -> Vec<StaleRead> {
    let mut written: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    let mut stale = Vec::new();
    for op in trace {
        let key = (op.client, op.object);
        if op.write {
            let w = written.entry(key).or_default();
            *w = (*w).max(op.version);
        } else if op.with_token {
            if let Some(&w) = written.get(&key) {
                if op.version < w {
                    stale.push(StaleRead {
                        client: op.client,
                        object: op.object,
                        written: w,
                        returned: op.version,
                        served_by: op.served_by.clone(),
                    });
                }
            }
        }
    }
    stale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u32, version: u64, write: bool, with_token: bool) -> SessionOp {
        SessionOp {
            client,
            object: 7,
            version,
            write,
            with_token,
            served_by: "replica1".into(),
        }
    }

    #[test]
    fn only_token_reads_older_than_the_clients_own_write_are_stale() {
        let trace = vec![
            op(1, 3, true, true),
            op(1, 3, false, true),  // sees its write
            op(1, 2, false, false), // no token: no promise made
            op(2, 1, false, true),  // client 2 never wrote
            op(1, 2, false, true),  // stale
        ];
        let stale = check_read_your_writes(&trace);
        assert_eq!(stale.len(), 1);
        assert_eq!((stale[0].written, stale[0].returned), (3, 2));
    }
}
