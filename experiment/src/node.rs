//! Naming the nodes of a cluster: `n1`, `n2`, ... in every runner, every trace and every report.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node of a cluster, numbered from 1 as its host is named (`n1` is `NodeId(1)`). Per-node
/// vectors are indexed by [`NodeId::index`]; nothing else turns one into a position.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl NodeId {
    /// The node at position `index` of a per-node vector (`0` is `n1`).
    pub fn from_index(index: usize) -> NodeId {
        NodeId(index as u64 + 1)
    }

    /// Its position in a per-node vector (`n1` is 0).
    pub fn index(self) -> usize {
        assert!(self.0 >= 1, "nodes are numbered from 1");
        self.0 as usize - 1
    }

    /// Every node of a cluster of `count`, in order.
    pub fn all(count: usize) -> impl DoubleEndedIterator<Item = NodeId> {
        (1..=count as u64).map(NodeId)
    }
}

impl std::str::FromStr for NodeId {
    type Err = String;

    /// Reads a host name: `n3` is `NodeId(3)`.
    fn from_str(s: &str) -> Result<NodeId, String> {
        s.strip_prefix('n')
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|&n| n >= 1)
            .map(NodeId)
            .ok_or_else(|| format!("'{s}' is not a node name (n1, n2, ...)"))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}
