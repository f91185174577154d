//! A replica set's connection string, checked before anything connects: the scheme, the hosts,
//! the `replicaSet` option (which must name the scenario's set), and a form with the password
//! hidden for every message.

use quorumlab_experiment::secret::redact_url;

use crate::run::RunError;

/// A `mongodb://` URI that names a replica set.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplSetUri {
    /// The URI as given (with its password, if any: never print it, use `redacted`).
    pub uri: String,
    /// `host:port` of each member listed (port 27017 when left out).
    pub hosts: Vec<String>,
    /// The `replicaSet` option.
    pub replica_set: String,
}

fn bad(uri: &str, why: &str) -> RunError {
    RunError::Target(format!("--target {}: {why}", redact_url(uri)))
}

impl ReplSetUri {
    /// Reads `uri`; its `replicaSet` must be `expected` (the scenario's `[mongodb] replica_set`).
    pub fn parse(uri: &str, expected: &str) -> Result<ReplSetUri, RunError> {
        let rest = uri.strip_prefix("mongodb://").ok_or_else(|| {
            bad(
                uri,
                "not a mongodb:// URI (mongodb+srv:// needs DNS, which this lab does not use)",
            )
        })?;
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let hosts_part = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let hosts: Vec<String> = hosts_part
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| {
                if h.contains(':') {
                    h.to_string()
                } else {
                    format!("{h}:27017")
                }
            })
            .collect();
        if hosts.is_empty() {
            return Err(bad(uri, "it names no host"));
        }
        let query = tail.split_once('?').map_or("", |(_, q)| q);
        let replica_set = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("replicaSet="))
            .ok_or_else(|| {
                bad(
                    uri,
                    &format!("it has no replicaSet option (add ?replicaSet={expected})"),
                )
            })?;
        if replica_set != expected {
            return Err(bad(
                uri,
                &format!("replicaSet={replica_set}, but the scenario's set is '{expected}' ([mongodb] replica_set)"),
            ));
        }
        Ok(ReplSetUri {
            uri: uri.to_string(),
            hosts,
            replica_set: replica_set.to_string(),
        })
    }

    /// The URI with its password hidden.
    pub fn redacted(&self) -> String {
        redact_url(&self.uri)
    }

    /// A URI reaching one member directly (for `hello` and `replSetGetStatus` on each).
    pub fn direct(&self, host: &str) -> String {
        let rest = &self.uri["mongodb://".len()..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, _) = rest.split_at(authority_end);
        let user = authority
            .rsplit_once('@')
            .map_or(String::new(), |(u, _)| format!("{u}@"));
        format!("mongodb://{user}{host}/?directConnection=true")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_checked_and_passwords_never_shown() {
        let uri = ReplSetUri::parse("mongodb://lab:s3cret@h1,h2:27018,h3/?replicaSet=rs0", "rs0")
            .unwrap();
        assert_eq!(uri.hosts, ["h1:27017", "h2:27018", "h3:27017"]);
        assert_eq!(
            uri.redacted(),
            "mongodb://lab:***@h1,h2:27018,h3/?replicaSet=rs0"
        );
        assert_eq!(
            uri.direct("h2:27018"),
            "mongodb://lab:s3cret@h2:27018/?directConnection=true"
        );
        let wrong = ReplSetUri::parse("mongodb://lab:s3cret@h1/?replicaSet=other", "rs0")
            .unwrap_err()
            .to_string();
        assert!(
            wrong.contains("replicaSet=other") && wrong.contains("'rs0'"),
            "{wrong}"
        );
        assert!(!wrong.contains("s3cret"), "{wrong}");
        let none = ReplSetUri::parse("mongodb://h1,h2", "rs0")
            .unwrap_err()
            .to_string();
        assert!(none.contains("no replicaSet option"), "{none}");
        assert!(ReplSetUri::parse("postgres://h1", "rs0").is_err());
    }
}
