//! Jepsen histories, read into the lab's [`History`] so the same checker judges them.
//!
//! A Jepsen history is a sequence of operation maps, e.g.
//! `{:process 0, :type :invoke, :f :write, :value 3}` then `{:process 0, :type :ok, :f :write,
//! :value 3}`. The register model has `:read` and `:write`; the cas-register model adds `:cas`
//! with `:value [old new]`. Histories of independent keys wrap every value in a `[key value]`
//! tuple. The nemesis's operations (`:process :nemesis`) are not client operations and are skipped.
//!
//! Times: only the order of events matters for linearizability, so an operation's invocation and
//! completion times are the positions of its two events in the history (0, 1, 2, ...), exact even
//! where Jepsen's `:time` has ties. An invocation never completed is `info` (it may have happened).

use std::collections::BTreeMap;

use crate::edn::{self, Edn, Pos, Spanned};
use crate::history::{History, Key, Op, OpKind, Outcome, Value};

/// A Jepsen history read into the lab's terms.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The operations; times are event positions.
    pub history: History,
    /// `register`, or `cas-register` if any operation is a compare-and-swap.
    pub model: &'static str,
    /// The name of each key as the history wrote it, for keys that were not plain numbers.
    pub key_names: BTreeMap<Key, String>,
    /// Whether values were `[key value]` tuples.
    pub independent: bool,
}

/// Why a history could not be read, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pos}: {message}")]
pub struct ImportError {
    /// Line and column of the offending form.
    pub pos: Pos,
    /// What is wrong.
    pub message: String,
}

impl From<edn::EdnError> for ImportError {
    fn from(e: edn::EdnError) -> Self {
        ImportError {
            pos: e.pos,
            message: e.message,
        }
    }
}

fn bad<T>(at: &Spanned, message: impl Into<String>) -> Result<T, ImportError> {
    Err(ImportError {
        pos: at.pos,
        message: message.into(),
    })
}

/// One event of the history, parsed.
struct Event<'a> {
    at: &'a Spanned,
    process: u32,
    kind: EventType,
    f: F,
    key: Option<&'a Spanned>,
    value: &'a Spanned,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum EventType {
    Invoke,
    Ok,
    Fail,
    Info,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum F {
    Read,
    Write,
    Cas,
}

/// Reads a Jepsen history from EDN text.
pub fn read(text: &str) -> Result<Imported, ImportError> {
    let forms = edn::read_all(text)?;
    let events: Vec<&Spanned> = match forms.as_slice() {
        [one] if matches!(one.value, Edn::Seq(_)) => match &one.value {
            Edn::Seq(items) => items.iter().collect(),
            _ => unreachable!("matched a sequence"),
        },
        many => many.iter().collect(),
    };
    let mut builder = Builder::default();
    for (position, form) in events.iter().enumerate() {
        if let Some(event) = parse_event(form)? {
            builder.add(position as u64, event)?;
        }
    }
    builder.finish(events.len() as u64)
}

/// Parses one operation map; `None` for the nemesis's.
fn parse_event(form: &Spanned) -> Result<Option<Event<'_>>, ImportError> {
    if !matches!(form.value, Edn::Map(_)) {
        return bad(
            form,
            "expected an operation map like {:process 0, :type :invoke, :f :read, :value nil}",
        );
    }
    let field = |name: &str| match form.get(name) {
        Some(v) => Ok(v),
        None => bad(form, format!("operation has no :{name}")),
    };
    let process = match &field("process")?.value {
        Edn::Keyword(_) => return Ok(None),
        Edn::Int(p) if (0..=i64::from(u32::MAX)).contains(p) => *p as u32,
        _ => {
            return bad(
                field("process")?,
                ":process must be a non-negative integer or :nemesis",
            )
        }
    };
    let kind = match keyword(field("type")?) {
        Some("invoke") => EventType::Invoke,
        Some("ok") => EventType::Ok,
        Some("fail") => EventType::Fail,
        Some("info") => EventType::Info,
        _ => return bad(field("type")?, ":type must be :invoke, :ok, :fail or :info"),
    };
    let f = match keyword(field("f")?) {
        Some("read") => F::Read,
        Some("write") => F::Write,
        Some("cas") => F::Cas,
        _ => {
            return bad(
                field("f")?,
                ":f must be :read, :write or :cas (the register and cas-register models)",
            )
        }
    };
    let value = field("value")?;
    let (key, value) = split_independent(f, value);
    Ok(Some(Event {
        at: form,
        process,
        kind,
        f,
        key,
        value,
    }))
}

fn keyword(v: &Spanned) -> Option<&str> {
    match &v.value {
        Edn::Keyword(k) => Some(k),
        _ => None,
    }
}

/// An independent history's `[key value]` tuple, split; a plain value is returned as it is.
fn split_independent(f: F, value: &Spanned) -> (Option<&Spanned>, &Spanned) {
    if let Edn::Seq(items) = &value.value {
        if let [k, v] = items.as_slice() {
            let tuple = match f {
                F::Read | F::Write => true,
                F::Cas => matches!(v.value, Edn::Seq(_)),
            };
            if tuple {
                return (Some(k), v);
            }
        }
    }
    (None, value)
}

/// An invocation waiting for its completion.
struct Pending {
    invoke_at: u64,
    f: F,
    key: Key,
    value: Spanned,
}

#[derive(Default)]
struct Builder {
    pending: BTreeMap<u32, Pending>,
    ops: Vec<Op>,
    key_names: BTreeMap<String, Key>,
    independent: Option<bool>,
    saw_cas: bool,
}

impl Builder {
    fn key(&mut self, event: &Event) -> Result<Key, ImportError> {
        let independent = event.key.is_some();
        match self.independent {
            Some(was) if was != independent => {
                return bad(event.at, "mixes [key value] tuples and plain values")
            }
            _ => self.independent = Some(independent),
        }
        let Some(k) = event.key else { return Ok(0) };
        if let Edn::Int(n) = k.value {
            if let Ok(n) = Key::try_from(n) {
                return Ok(n);
            }
        }
        let name = match &k.value {
            Edn::Str(s) | Edn::Keyword(s) | Edn::Symbol(s) => s.clone(),
            other => format!("{other:?}"),
        };
        // Names that are not numbers get numbers from the top of the key space down.
        let next = Key::MAX - self.key_names.len() as Key;
        Ok(*self.key_names.entry(name).or_insert(next))
    }

    fn add(&mut self, position: u64, event: Event) -> Result<(), ImportError> {
        let key = self.key(&event)?;
        if event.kind == EventType::Invoke {
            if self.pending.contains_key(&event.process) {
                return bad(
                    event.at,
                    format!(
                        "process {} invokes again before its last operation completed",
                        event.process
                    ),
                );
            }
            self.saw_cas |= event.f == F::Cas;
            self.pending.insert(
                event.process,
                Pending {
                    invoke_at: position,
                    f: event.f,
                    key,
                    value: event.value.clone(),
                },
            );
            return Ok(());
        }
        let Some(pending) = self.pending.remove(&event.process) else {
            return bad(
                event.at,
                format!(
                    "process {} completes an operation it never invoked",
                    event.process
                ),
            );
        };
        if pending.f != event.f || pending.key != key {
            return bad(
                event.at,
                format!(
                    "process {} completes a different operation than it invoked",
                    event.process
                ),
            );
        }
        let op = complete(pending, &event, position, self.ops.len() as u64)?;
        self.ops.push(op);
        Ok(())
    }

    fn finish(mut self, end: u64) -> Result<Imported, ImportError> {
        for (process, pending) in std::mem::take(&mut self.pending) {
            let kind = op_kind(pending.f, pending.key, &pending.value)?;
            self.ops.push(Op {
                id: 0,
                client: process,
                kind,
                invoke_us: pending.invoke_at,
                complete_us: end,
                outcome: Outcome::Info,
                node: None,
            });
        }
        self.ops.sort_by_key(|op| (op.invoke_us, op.client));
        for (i, op) in self.ops.iter_mut().enumerate() {
            op.id = i as u64;
        }
        Ok(Imported {
            history: History { ops: self.ops },
            model: if self.saw_cas {
                "cas-register"
            } else {
                "register"
            },
            key_names: self
                .key_names
                .into_iter()
                .map(|(name, k)| (k, name))
                .collect(),
            independent: self.independent.unwrap_or(false),
        })
    }
}

/// The lab's operation for an invocation and its completion event.
fn complete(pending: Pending, done: &Event, position: u64, id: u64) -> Result<Op, ImportError> {
    let kind = op_kind(pending.f, pending.key, &pending.value)?;
    let outcome = match (done.kind, pending.f) {
        (EventType::Ok, F::Read) => Outcome::Ok {
            read: Some(value_or_nil(done.value)?),
            swapped: None,
        },
        (EventType::Ok, F::Cas) => Outcome::Ok {
            read: None,
            swapped: Some(true),
        },
        (EventType::Ok, F::Write) => Outcome::Ok {
            read: None,
            swapped: None,
        },
        (EventType::Fail, _) => Outcome::Fail,
        _ => Outcome::Info,
    };
    Ok(Op {
        id,
        client: done.process,
        kind,
        invoke_us: pending.invoke_at,
        complete_us: position,
        outcome,
        node: None,
    })
}

fn op_kind(f: F, key: Key, value: &Spanned) -> Result<OpKind, ImportError> {
    Ok(match f {
        F::Read => OpKind::Get { key },
        F::Write => OpKind::Put {
            key,
            value: register_value(value)?,
        },
        F::Cas => match &value.value {
            Edn::Seq(pair) if pair.len() == 2 => OpKind::Cas {
                key,
                expect: register_value(&pair[0])?,
                new: register_value(&pair[1])?,
            },
            _ => return bad(value, "a :cas value must be [old new]"),
        },
    })
}

fn register_value(v: &Spanned) -> Result<Value, ImportError> {
    match v.value {
        Edn::Int(n) if n >= 0 => Ok(n as Value),
        _ => bad(v, "register values must be non-negative integers"),
    }
}

fn value_or_nil(v: &Spanned) -> Result<Option<Value>, ImportError> {
    match v.value {
        Edn::Nil => Ok(None),
        _ => register_value(v).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::{check_history, CheckLimits, Verdict};

    fn check(text: &str) -> Verdict {
        check_history(&read(text).unwrap().history, CheckLimits::default())
    }

    #[test]
    fn a_linearizable_cas_register_history() {
        let h = "{:process 0 :type :invoke :f :write :value 1}
                 {:process 0 :type :ok :f :write :value 1}
                 {:process 1 :type :invoke :f :cas :value [1 2]}
                 {:process 2 :type :invoke :f :read :value nil}
                 {:process 1 :type :ok :f :cas :value [1 2]}
                 {:process 2 :type :ok :f :read :value 2}
                 {:process :nemesis :type :info :f :start :value nil}";
        let imported = read(h).unwrap();
        assert_eq!(imported.model, "cas-register");
        assert_eq!(imported.history.ops.len(), 3);
        assert_eq!(check(h), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_on_an_independent_key_is_named() {
        let h = "[{:process 0, :type :invoke, :f :write, :value [7 1]}
                  {:process 0, :type :ok, :f :write, :value [7 1]}
                  {:process 1, :type :invoke, :f :write, :value [7 2]}
                  {:process 1, :type :ok, :f :write, :value [7 2]}
                  {:process 2, :type :invoke, :f :read, :value [7 nil]}
                  {:process 2, :type :ok, :f :read, :value [7 1]}
                  {:process 3, :type :invoke, :f :read, :value [8 nil]}
                  {:process 3, :type :ok, :f :read, :value [8 nil]}]";
        let Verdict::NotLinearizable { key, ops, .. } = check(h) else {
            panic!()
        };
        assert_eq!((key, ops.len()), (7, 3));
        assert!(read(h).unwrap().independent);
    }

    #[test]
    fn an_unfinished_write_may_have_happened() {
        let h = "{:process 0 :type :invoke :f :write :value 5}
                 {:process 1 :type :invoke :f :read :value nil}
                 {:process 1 :type :ok :f :read :value 5}";
        assert_eq!(check(h), Verdict::Linearizable);
    }

    #[test]
    fn bad_histories_say_where() {
        let err = read("{:process 0 :type :invoke :f :write :value 1}\n{:process 0 :type :invoke :f :read :value nil}").unwrap_err();
        assert_eq!((err.pos.line, err.pos.col), (2, 1));
        let err = read("{:process 0 :type :invoke :f :append :value 1}").unwrap_err();
        assert!(err.message.contains(":f must be"), "{err}");
        let err = read("{:process 0 :type :invoke :f :write :value -1}").unwrap_err();
        assert!(err.message.contains("non-negative"), "{err}");
    }
}
