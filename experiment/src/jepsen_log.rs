//! Jepsen's plain `jepsen.log`, read into the lab's [`History`]: the lines the client workers
//! log, `INFO  jepsen.util - 3 :invoke :cas [1 4]` (tab-separated), for one register with read,
//! write and cas.
//!
//! The meaning of each completion follows Porcupine's reading of these logs (its etcd tests), so
//! both checkers judge the same histories:
//! - `:ok` completes the operation; a read's value is a number or `nil` (the key absent).
//! - `:fail :cas [a b]` was linearized without swapping (the register did not hold `a`).
//! - `:fail :read :timed-out` observed nothing and is dropped; another `:fail` never happened.
//! - `:info` (a timed-out write or cas) may take effect at any time after its call, or never;
//!   so does an operation still pending when the log ends.
//!
//! Lines of other loggers (`jepsen.core`, the nemesis's `:nemesis` process) are skipped. Times
//! are line positions among the client lines: only their order matters.

use std::collections::HashMap;

use crate::edn::Pos;
use crate::history::{History, Op, OpKind, Outcome, Value};
use crate::jepsen::{ImportError, Imported};

/// The logger whose lines carry the operations.
const MARK: &str = "jepsen.util - ";

/// Whether `text` looks like a `jepsen.log`: one of its first hundred lines is a client's.
pub fn looks_like_log(text: &str) -> bool {
    text.lines().take(100).any(|l| l.contains(MARK))
}

/// One parsed client line.
struct Line<'a> {
    process: u32,
    kind: &'a str,
    f: &'a str,
    value: &'a str,
}

fn bad<T>(line: usize, message: impl Into<String>) -> Result<T, ImportError> {
    Err(ImportError {
        pos: Pos { line, col: 1 },
        message: message.into(),
    })
}

/// Splits a line into process, type, f and value; `None` for lines that are not a client's.
fn parse_line(text: &str, line: usize) -> Result<Option<Line<'_>>, ImportError> {
    let Some(at) = text.find(MARK) else {
        return Ok(None);
    };
    let mut words = text[at + MARK.len()..].split_whitespace();
    let Some(process) = words.next() else {
        return Ok(None);
    };
    let Ok(process) = process.parse::<u32>() else {
        return Ok(None); // :nemesis and other non-client processes
    };
    let (Some(kind), Some(f)) = (words.next(), words.next()) else {
        return bad(line, "expected `<process> <type> <f> <value>`");
    };
    // The value is the rest: `nil`, a number, `[1 4]` or `:timed-out`.
    let rest: Vec<&str> = words.collect();
    let value = match rest.as_slice() {
        [] => return bad(line, format!("{kind} {f} has no value")),
        [one] => *one,
        _ => {
            // The first word's own offset (it is a slice of `text`), not a search that could
            // match earlier on the line, e.g. inside a bracketed timestamp.
            let start = rest[0].as_ptr() as usize - text.as_ptr() as usize;
            text[start..].trim_end()
        }
    };
    Ok(Some(Line {
        process,
        kind,
        f,
        value,
    }))
}

fn number(text: &str, line: usize) -> Result<Value, ImportError> {
    text.parse::<Value>()
        .or_else(|_| bad(line, format!("`{text}` is not a non-negative integer")))
}

/// `[a b]` of a cas.
fn pair(text: &str, line: usize) -> Result<(Value, Value), ImportError> {
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .map(str::split_whitespace);
    match inner.map(|w| w.collect::<Vec<_>>()).as_deref() {
        Some([a, b]) => Ok((number(a, line)?, number(b, line)?)),
        _ => bad(line, format!("a cas value is `[old new]`, not `{text}`")),
    }
}

fn kind_of(l: &Line, line: usize) -> Result<OpKind, ImportError> {
    Ok(match l.f {
        ":read" => OpKind::Get { key: 0 },
        ":write" => OpKind::Put {
            key: 0,
            value: number(l.value, line)?,
        },
        ":cas" => {
            let (expect, new) = pair(l.value, line)?;
            OpKind::Cas {
                key: 0,
                expect,
                new,
            }
        }
        other => return bad(line, format!("unknown :f {other} (read, write or cas)")),
    })
}

/// What a completion line says happened to `op`.
fn outcome_of(l: &Line, op: &Op, line: usize) -> Result<Outcome, ImportError> {
    let ok = |read, swapped| Outcome::Ok { read, swapped };
    Ok(match (l.kind, &op.kind) {
        (":ok", OpKind::Get { .. }) if l.value == "nil" => ok(Some(None), None),
        (":ok", OpKind::Get { .. }) => ok(Some(Some(number(l.value, line)?)), None),
        (":ok", OpKind::Cas { .. }) => ok(None, Some(true)),
        (":ok", OpKind::Put { .. }) => ok(None, None),
        (":fail", OpKind::Cas { .. }) => ok(None, Some(false)),
        (":fail", OpKind::Get { .. }) => Outcome::Info,
        (":fail", OpKind::Put { .. }) => Outcome::Fail,
        (":info", _) => Outcome::Info,
        (other, _) => return bad(line, format!("unknown :type {other} (ok, fail or info)")),
    })
}

/// Reads a `jepsen.log`'s client lines into a single-register history.
pub fn read_log(text: &str) -> Result<Imported, ImportError> {
    let mut ops: Vec<Op> = Vec::new();
    let mut pending: HashMap<u32, usize> = HashMap::new();
    let mut position = 0u64;
    for (i, text) in text.lines().enumerate() {
        let line = i + 1;
        let Some(l) = parse_line(text, line)? else {
            continue;
        };
        position += 1;
        if l.kind == ":invoke" {
            if pending.contains_key(&l.process) {
                return bad(line, format!("process {} invoked twice", l.process));
            }
            pending.insert(l.process, ops.len());
            ops.push(Op {
                id: ops.len() as u64,
                client: l.process,
                kind: kind_of(&l, line)?,
                invoke_us: position,
                complete_us: u64::MAX,
                outcome: Outcome::Info,
                node: None,
            });
            continue;
        }
        let Some(index) = pending.remove(&l.process) else {
            return bad(line, format!("process {} completes nothing", l.process));
        };
        let op = &mut ops[index];
        op.outcome = outcome_of(&l, op, line)?;
        op.complete_us = position;
    }
    // Still pending at the end: may have happened.
    for op in &mut ops {
        if op.complete_us == u64::MAX {
            op.complete_us = position + 1;
        }
    }
    let cas = ops.iter().any(|o| matches!(o.kind, OpKind::Cas { .. }));
    Ok(Imported {
        history: History { ops },
        model: if cas { "cas-register" } else { "register" },
        key_names: Default::default(),
        independent: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
INFO  jepsen.core - Running test
INFO  jepsen.util - 0\t:invoke\t:write\t3
INFO  jepsen.util - 1\t:invoke\t:cas\t[3 4]
INFO  jepsen.util - :nemesis\t:info\t:start\tnil
INFO  jepsen.util - 0\t:ok\t:write\t3
INFO  jepsen.util - 1\t:fail\t:cas\t[3 4]
INFO  jepsen.util - 2 :invoke :read nil
INFO  jepsen.util - 2 :fail :read :timed-out
INFO  jepsen.util - 3\t:invoke\t:read\tnil
INFO  jepsen.util - 3\t:ok\t:read\tnil
INFO  jepsen.util - 4\t:invoke\t:write\t9
INFO  jepsen.util - 4\t:info\t:write\t:timed-out
INFO  jepsen.util - 5\t:invoke\t:write\t7
";

    #[test]
    fn reads_each_outcome_as_porcupine_does() {
        assert!(looks_like_log(LOG));
        let h = read_log(LOG).unwrap().history;
        let outcomes: Vec<(u32, Outcome, u64, u64)> = h
            .ops
            .iter()
            .map(|o| (o.client, o.outcome, o.invoke_us, o.complete_us))
            .collect();
        let ok = |read, swapped| Outcome::Ok { read, swapped };
        assert_eq!(
            outcomes,
            [
                (0, ok(None, None), 1, 3),
                (1, ok(None, Some(false)), 2, 4),
                (2, Outcome::Info, 5, 6),
                (3, ok(Some(None), None), 7, 8),
                (4, Outcome::Info, 9, 10),
                (5, Outcome::Info, 11, 12),
            ]
        );
    }

    #[test]
    fn bad_lines_are_named_by_line() {
        let e = read_log("INFO  jepsen.util - 0 :ok :read 3\n").unwrap_err();
        assert_eq!(
            (e.pos.line, e.message.as_str()),
            (1, "process 0 completes nothing")
        );
        let e = read_log("x\nINFO  jepsen.util - 0 :invoke :cas [1]\n").unwrap_err();
        assert_eq!(e.pos.line, 2);
        assert!(e.message.contains("[old new]"), "{e}");
    }
}
