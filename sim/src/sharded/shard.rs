//! One shard as a pure state machine: its documents by chunk, what it knows of the routing table,
//! and its side of a chunk migration (MongoDB's `moveChunk`), as donor or recipient.
//!
//! A [`Shard`] is driven by [`Shard::tick`], [`Shard::receive`] (another shard's [`Msg`]),
//! [`Shard::write`] and [`Shard::read`] (a router's request, with the chunk version it believes),
//! [`Shard::move_chunk`] (the balancer), [`Shard::refreshed`] (a routing table read from the config
//! servers, which it asked for) and [`Shard::commit_result`] (the outcome of its commit on the
//! config servers). It answers with [`Effects`]: messages, answers to held requests, a refresh or
//! commit to carry out, and [`Note`]s for the run's records. It never touches a socket or a clock.
//!
//! A migration, from the donor's side: it accepts the move and tells the recipient (`Start`); the
//! recipient pulls clone batches at its insert speed, then the changes made since (the donor keeps
//! every write to the chunk as a change); when a batch of changes is small the recipient says it is
//! caught up, the donor enters the critical section (holding writes and reads to the chunk), the
//! recipient takes the last changes and confirms, the donor commits on the config servers and only
//! then leaves the critical section. Its copy is deleted after `range_deletion_delay`. A shard
//! deletes a range only after a fresh routing table shows another shard owns it, so neither a
//! crash nor a timeout can delete the only copy.

use std::collections::{BTreeMap, BTreeSet};

use quorumlab_experiment::history::Key;
use quorumlab_experiment::rebalance::MigrationOutcome;
use quorumlab_experiment::sharded::MigrationStep;
use serde::{Deserialize, Serialize};

use super::routing::{version_went_back, Entry, Table};

/// A workload document: its shard-key value's number and its `_id`.
pub type Doc = (Key, u64);

/// Static settings of one shard.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// This shard (0 is `s1`).
    pub me: usize,
    /// Bytes of one workload document.
    pub doc_bytes: u64,
    /// Largest clone batch.
    pub clone_batch_bytes: u64,
    /// The recipient's insert speed.
    pub clone_bytes_per_s: u64,
    /// A change batch this small means caught up.
    pub catch_up_docs_max: usize,
    /// Silence after which a migration aborts.
    pub migration_timeout_us: u64,
    /// Delay before a migrated range is deleted on the donor.
    pub range_deletion_delay_us: u64,
    /// Deliberately broken build: return every document held, owned or orphaned.
    pub orphan_reads: bool,
}

/// What survives a crash: documents, preloaded bytes, pending range deletions and the donor's
/// record of a migration being committed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Durable {
    /// Workload documents by chunk.
    pub docs: BTreeMap<u32, BTreeSet<Doc>>,
    /// Preloaded bytes by chunk.
    pub bulk: BTreeMap<u32, u64>,
    /// Range deletions due, by chunk: when.
    pub deletions: BTreeMap<u32, u64>,
    /// The donor's record of its migration (MongoDB's migration coordinator document):
    /// (number, chunk, recipient, whether its commit was under way).
    pub coordinator: Option<(u64, u32, usize, bool)>,
}

/// A message between shards, or between the balancer and a donor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    /// Donor → recipient: start taking in `chunk`.
    Start {
        /// Migration number.
        number: u64,
        /// The chunk.
        chunk: u32,
    },
    /// Recipient → donor: the next clone batch after `after`.
    CloneNext {
        /// Migration number.
        number: u64,
    },
    /// Donor → recipient: documents and preloaded bytes; `done` when nothing is left.
    CloneBatch {
        /// Migration number.
        number: u64,
        /// Documents.
        docs: Vec<Doc>,
        /// Preloaded bytes.
        bulk: u64,
        /// The clone is complete.
        done: bool,
    },
    /// Recipient → donor: the changes since the last batch (`last`: the final ones, in the
    /// critical section).
    ModsNext {
        /// Migration number.
        number: u64,
    },
    /// Donor → recipient: the changes.
    ModsBatch {
        /// Migration number.
        number: u64,
        /// Documents written since.
        docs: Vec<Doc>,
        /// Sent in the critical section: nothing can follow.
        last: bool,
    },
    /// Recipient → donor: caught up.
    Steady {
        /// Migration number.
        number: u64,
    },
    /// Donor → recipient: in the critical section; take the last changes.
    CommitClone {
        /// Migration number.
        number: u64,
    },
    /// Recipient → donor: has everything, durably.
    CloneCommitted {
        /// Migration number.
        number: u64,
    },
    /// Donor → recipient: how it ended.
    Finished {
        /// Migration number.
        number: u64,
        /// Committed on the config servers.
        committed: bool,
    },
}

impl Msg {
    fn number(&self) -> u64 {
        match *self {
            Msg::Start { number, .. }
            | Msg::CloneNext { number }
            | Msg::CloneBatch { number, .. }
            | Msg::ModsNext { number }
            | Msg::ModsBatch { number, .. }
            | Msg::Steady { number }
            | Msg::CommitClone { number }
            | Msg::CloneCommitted { number }
            | Msg::Finished { number, .. } => number,
        }
    }
}

/// A shard's answer to a router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    /// Written.
    Written,
    /// The documents with the key this shard owns (or holds, in the broken build).
    Docs(Vec<u64>),
    /// The router's version is not this shard's: refresh and retry.
    StaleConfig,
}

/// A router's request held in a critical section.
#[derive(Debug, Clone, PartialEq)]
enum Held {
    Write {
        token: u64,
        chunk: u32,
        doc: Doc,
        version: u64,
    },
    Read {
        token: u64,
        chunk: u32,
        key: Key,
        version: u64,
    },
}

/// What the run records of a shard's doings (the host stamps the time).
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// This donor accepted migration `number`.
    Started {
        /// Migration number.
        number: u64,
        /// The chunk.
        chunk: u32,
        /// Recipient.
        to: usize,
    },
    /// Migration `number` reached `step`.
    Step {
        /// Migration number.
        number: u64,
        /// The step.
        step: MigrationStep,
    },
    /// The donor left its critical section.
    CriticalSectionLeft {
        /// Migration number.
        number: u64,
    },
    /// Migration `number` ended.
    Ended {
        /// Migration number.
        number: u64,
        /// How.
        outcome: MigrationOutcome,
        /// Bytes the recipient received.
        bytes: u64,
        /// Why it aborted.
        why: Option<String>,
    },
    /// This shard's copy of `chunk` became an orphan.
    Orphaned {
        /// The chunk.
        chunk: u32,
        /// Workload documents in it.
        docs: u64,
    },
    /// The range deleter removed this shard's orphaned copy of `chunk`.
    RangeDeleted {
        /// The chunk.
        chunk: u32,
    },
    /// This shard's copy of `chunk` is no longer an orphan: it owns the chunk again, or is
    /// receiving it.
    OrphanGone {
        /// The chunk.
        chunk: u32,
    },
    /// A routing table read showed a chunk version lower than one known before.
    VersionWentBack(String),
}

/// What one call produced.
#[derive(Debug, Default)]
pub struct Effects {
    /// Messages to other shards.
    pub send: Vec<(usize, Msg)>,
    /// Answers to held requests: (token, answer).
    pub answers: Vec<(u64, Answer)>,
    /// Read the routing table from the config servers and call [`Shard::refreshed`].
    pub refresh: bool,
    /// Commit migration `number` on the config servers: chunk, the entry expected, the new
    /// owner; then call [`Shard::commit_result`].
    pub commit: Option<(u64, u32, Entry, usize)>,
    /// The balancer's answer: (migration number, outcome).
    pub balancer: Option<(u64, MigrationOutcome)>,
    /// Trace lines.
    pub events: Vec<String>,
    /// Records.
    pub notes: Vec<Note>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DonorPhase {
    Cloning,
    CatchUp,
    Critical,
    Committing,
}

/// The donor's side of a migration.
#[derive(Debug, Clone)]
struct Donation {
    number: u64,
    chunk: u32,
    to: usize,
    entry: Entry,
    phase: DonorPhase,
    /// Documents not yet cloned (a snapshot at the start; later writes go to `mods`).
    to_clone: Vec<Doc>,
    bulk_left: u64,
    mods: Vec<Doc>,
    bytes_sent: u64,
    heard_us: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecipientPhase {
    Cloning,
    CatchUp,
    Final,
    Done,
}

/// The recipient's side of a migration.
#[derive(Debug, Clone)]
struct Receipt {
    number: u64,
    chunk: u32,
    from: usize,
    phase: RecipientPhase,
    /// When to ask for the next batch (`None`: waiting for an answer).
    next_ask_us: Option<u64>,
    steady_sent: bool,
    heard_us: u64,
}

/// How often a caught-up recipient asks for changes.
const MODS_POLL_US: u64 = 20_000;

/// One shard.
#[derive(Debug)]
pub struct Shard {
    config: ShardConfig,
    durable: Durable,
    /// The routing table as last read; `None` until the first refresh after a start.
    table: Option<Table>,
    refreshing: bool,
    donation: Option<Donation>,
    receipt: Option<Receipt>,
    held: Vec<Held>,
}

impl Shard {
    /// A shard starting from `durable` and knowing `table` (a fresh cluster) or nothing (a
    /// restart, which refreshes first).
    pub fn start(config: ShardConfig, durable: Durable, table: Option<Table>) -> Shard {
        Shard {
            config,
            durable,
            table,
            refreshing: false,
            donation: None,
            receipt: None,
            held: Vec::new(),
        }
    }

    /// What survives a crash.
    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    /// The routing table this shard knows.
    pub fn table(&self) -> Option<&Table> {
        self.table.as_ref()
    }

    /// `(migration, chunk)` this shard is donating, and whether it is in the critical section.
    pub fn donating(&self) -> Option<(u64, u32, bool)> {
        self.donation.as_ref().map(|d| {
            let critical = matches!(d.phase, DonorPhase::Critical | DonorPhase::Committing);
            (d.number, d.chunk, critical)
        })
    }

    /// Migration this shard is receiving.
    pub fn receiving(&self) -> Option<u64> {
        self.receipt.as_ref().map(|r| r.number)
    }

    /// Whether this shard owns `chunk` by the table it knows.
    fn owns(&self, chunk: u32) -> bool {
        self.table
            .as_ref()
            .is_some_and(|t| t[chunk as usize].shard == self.config.me)
    }

    fn in_critical_section(&self, chunk: u32) -> bool {
        self.donating()
            .is_some_and(|(_, c, critical)| critical && c == chunk)
    }

    /// Checks a router's version of `chunk`: `Ok(owner)` when it is this shard's, otherwise the
    /// stale-config answer (asking for a refresh when this shard is the stale one).
    fn check_version(
        &mut self,
        chunk: u32,
        version: u64,
        fx: &mut Effects,
    ) -> Result<bool, Answer> {
        let Some(table) = &self.table else {
            fx.refresh = true;
            return Err(Answer::StaleConfig);
        };
        let entry = table[chunk as usize];
        if version > entry.version {
            fx.refresh = true;
            return Err(Answer::StaleConfig);
        }
        if version < entry.version {
            return Err(Answer::StaleConfig);
        }
        Ok(entry.shard == self.config.me)
    }

    /// A router's insert of `doc` into `chunk`, at the version it believes. `None`: held in the
    /// critical section; the answer comes later in [`Effects::answers`] with `token`.
    pub fn write(
        &mut self,
        token: u64,
        chunk: u32,
        doc: Doc,
        version: u64,
        fx: &mut Effects,
    ) -> Option<Answer> {
        if self.in_critical_section(chunk) {
            self.held.push(Held::Write {
                token,
                chunk,
                doc,
                version,
            });
            return None;
        }
        match self.check_version(chunk, version, fx) {
            Ok(true) => {}
            Ok(false) => return Some(Answer::StaleConfig),
            Err(stale) => return Some(stale),
        }
        self.durable.docs.entry(chunk).or_default().insert(doc);
        if let Some(d) = self.donation.as_mut().filter(|d| d.chunk == chunk) {
            d.mods.push(doc);
        }
        Some(Answer::Written)
    }

    /// A router's read of `key` in `chunk`, at the version it believes; held like a write.
    pub fn read(
        &mut self,
        token: u64,
        chunk: u32,
        key: Key,
        version: u64,
        fx: &mut Effects,
    ) -> Option<Answer> {
        if self.in_critical_section(chunk) {
            self.held.push(Held::Read {
                token,
                chunk,
                key,
                version,
            });
            return None;
        }
        let owner = match self.check_version(chunk, version, fx) {
            Ok(owner) => owner,
            Err(stale) => return Some(stale),
        };
        if !owner && !self.config.orphan_reads {
            return Some(Answer::Docs(Vec::new()));
        }
        let ids = self
            .durable
            .docs
            .get(&chunk)
            .map(|docs| {
                docs.range((key, 0)..=(key, u64::MAX))
                    .map(|d| d.1)
                    .collect()
            })
            .unwrap_or_default();
        Some(Answer::Docs(ids))
    }

    /// The balancer asks this shard to move `chunk`, which it believes this shard owns at
    /// `version`, to `to`. Refused (aborted at once) unless this shard agrees and is idle.
    pub fn move_chunk(
        &mut self,
        number: u64,
        chunk: u32,
        version: u64,
        to: usize,
        now_us: u64,
        fx: &mut Effects,
    ) {
        let entry = self.table.as_ref().map(|t| t[chunk as usize]);
        let refuse = if self.donation.is_some() || self.receipt.is_some() {
            Some("the donor is already in a migration")
        } else if entry
            != Some(Entry {
                version,
                shard: self.config.me,
            })
        {
            Some("the donor's routing table disagrees with the balancer's")
        } else {
            None
        };
        if let Some(why) = refuse {
            fx.balancer = Some((number, MigrationOutcome::Aborted));
            fx.events.push(format!("refused migration {number}: {why}"));
            return;
        }
        let to_clone: Vec<Doc> = self
            .durable
            .docs
            .get(&chunk)
            .map(|d| d.iter().copied().collect())
            .unwrap_or_default();
        let bulk_left = self.durable.bulk.get(&chunk).copied().unwrap_or(0);
        self.donation = Some(Donation {
            number,
            chunk,
            to,
            entry: entry.expect("checked above"),
            phase: DonorPhase::Cloning,
            to_clone,
            bulk_left,
            mods: Vec::new(),
            bytes_sent: 0,
            heard_us: now_us,
        });
        self.durable.coordinator = Some((number, chunk, to, false));
        fx.notes.push(Note::Started { number, chunk, to });
        fx.notes.push(Note::Step {
            number,
            step: MigrationStep::Clone,
        });
        fx.events.push(format!(
            "migration {number}: donating chunk {} to s{} ({} documents, {} KiB preloaded)",
            chunk + 1,
            to + 1,
            self.donation.as_ref().map_or(0, |d| d.to_clone.len()),
            bulk_left >> 10
        ));
        fx.send.push((to, Msg::Start { number, chunk }));
    }

    /// A message from shard `from`.
    pub fn receive(&mut self, from: usize, msg: Msg, now_us: u64, fx: &mut Effects) {
        if let Msg::Start { number, chunk } = msg {
            self.start_receiving(number, chunk, from, now_us, fx);
            return;
        }
        let number = msg.number();
        if self
            .donation
            .as_ref()
            .is_some_and(|d| d.number == number && d.to == from)
        {
            self.donation.as_mut().expect("checked").heard_us = now_us;
            self.donor_receive(msg, now_us, fx);
        } else if self
            .receipt
            .as_ref()
            .is_some_and(|r| r.number == number && r.from == from)
        {
            self.receipt.as_mut().expect("checked").heard_us = now_us;
            self.recipient_receive(msg, now_us, fx);
        }
        // Anything else belongs to a migration this shard has left behind: ignored.
    }

    fn donor_receive(&mut self, msg: Msg, now_us: u64, fx: &mut Effects) {
        let doc_bytes = self.config.doc_bytes;
        let batch_docs = (self.config.clone_batch_bytes / doc_bytes).max(1) as usize;
        let d = self.donation.as_mut().expect("donating");
        let number = d.number;
        match msg {
            Msg::CloneNext { .. } => {
                let bulk = d.bulk_left.min(self.config.clone_batch_bytes);
                d.bulk_left -= bulk;
                let room = batch_docs.saturating_sub((bulk / doc_bytes) as usize);
                let take = room.min(d.to_clone.len());
                let docs: Vec<Doc> = d.to_clone.drain(..take).collect();
                d.bytes_sent += bulk + docs.len() as u64 * doc_bytes;
                let done = d.bulk_left == 0 && d.to_clone.is_empty();
                if done && d.phase == DonorPhase::Cloning {
                    d.phase = DonorPhase::CatchUp;
                    fx.notes.push(Note::Step {
                        number,
                        step: MigrationStep::CatchUp,
                    });
                }
                fx.send.push((
                    d.to,
                    Msg::CloneBatch {
                        number,
                        docs,
                        bulk,
                        done,
                    },
                ));
            }
            Msg::ModsNext { .. } => {
                let docs: Vec<Doc> = std::mem::take(&mut d.mods);
                d.bytes_sent += docs.len() as u64 * doc_bytes;
                let last = d.phase == DonorPhase::Critical;
                fx.send.push((d.to, Msg::ModsBatch { number, docs, last }));
            }
            Msg::Steady { .. } if d.phase == DonorPhase::CatchUp => {
                d.phase = DonorPhase::Critical;
                fx.notes.push(Note::Step {
                    number,
                    step: MigrationStep::CriticalSection,
                });
                fx.events.push(format!(
                    "migration {number}: critical section entered, writes to chunk {} held",
                    d.chunk + 1
                ));
                fx.send.push((d.to, Msg::CommitClone { number }));
            }
            Msg::CloneCommitted { .. } if d.phase == DonorPhase::Critical => {
                d.phase = DonorPhase::Committing;
                self.durable.coordinator = Some((number, d.chunk, d.to, true));
                fx.notes.push(Note::Step {
                    number,
                    step: MigrationStep::Commit,
                });
                fx.events.push(format!(
                    "migration {number}: committing on the config servers"
                ));
                fx.commit = Some((number, d.chunk, d.entry, d.to));
            }
            _ => {}
        }
        let _ = now_us;
    }

    fn start_receiving(
        &mut self,
        number: u64,
        chunk: u32,
        from: usize,
        now_us: u64,
        fx: &mut Effects,
    ) {
        if self.receipt.is_some() || self.donation.is_some() {
            // Busy: the donor hears nothing and times out.
            fx.events
                .push(format!("ignored migration {number}: already in one"));
            return;
        }
        // A range being received is not deleted: its leftovers are about to be cloned over.
        if self.durable.deletions.remove(&chunk).is_some() {
            fx.notes.push(Note::OrphanGone { chunk });
        }
        self.receipt = Some(Receipt {
            number,
            chunk,
            from,
            phase: RecipientPhase::Cloning,
            next_ask_us: None,
            steady_sent: false,
            heard_us: now_us,
        });
        fx.send.push((from, Msg::CloneNext { number }));
    }

    fn recipient_receive(&mut self, msg: Msg, now_us: u64, fx: &mut Effects) {
        let rate = self.config.clone_bytes_per_s;
        let (doc_bytes, small) = (self.config.doc_bytes, self.config.catch_up_docs_max);
        let r = self.receipt.as_mut().expect("receiving");
        let (number, chunk) = (r.number, r.chunk);
        match msg {
            Msg::CloneBatch {
                docs, bulk, done, ..
            } if r.phase == RecipientPhase::Cloning => {
                let bytes = bulk + docs.len() as u64 * doc_bytes;
                *self.durable.bulk.entry(chunk).or_default() += bulk;
                self.durable.docs.entry(chunk).or_default().extend(docs);
                if done {
                    r.phase = RecipientPhase::CatchUp;
                }
                // Taking the batch in costs its bytes at the insert speed.
                r.next_ask_us = Some(now_us + bytes * 1_000_000 / rate);
            }
            Msg::ModsBatch { docs, last, .. }
                if matches!(r.phase, RecipientPhase::CatchUp | RecipientPhase::Final) =>
            {
                let caught_up = docs.len() <= small;
                let pause = docs.len() as u64 * doc_bytes * 1_000_000 / rate;
                self.durable.docs.entry(chunk).or_default().extend(docs);
                if last && r.phase == RecipientPhase::Final {
                    r.phase = RecipientPhase::Done;
                    r.next_ask_us = None;
                    fx.send.push((r.from, Msg::CloneCommitted { number }));
                } else {
                    if caught_up && !r.steady_sent {
                        r.steady_sent = true;
                        fx.send.push((r.from, Msg::Steady { number }));
                    }
                    r.next_ask_us =
                        Some(now_us + pause.max(if caught_up { MODS_POLL_US } else { 0 }));
                }
            }
            Msg::CommitClone { .. } if r.phase == RecipientPhase::CatchUp => {
                r.phase = RecipientPhase::Final;
                r.next_ask_us = None;
                fx.send.push((r.from, Msg::ModsNext { number }));
            }
            Msg::Finished { committed, .. } => {
                self.receipt = None;
                if !committed {
                    self.schedule_deletion(chunk, now_us, fx);
                }
                // Either way, learn the new owner.
                fx.refresh = true;
            }
            _ => {}
        }
    }

    /// Nothing left to do: the table known, no migration on either side, no write held, no
    /// range deletion due and no interrupted migration to recover.
    pub fn is_idle(&self) -> bool {
        self.table.is_some()
            && !self.refreshing
            && self.donation.is_none()
            && self.receipt.is_none()
            && self.held.is_empty()
            && self.durable.deletions.is_empty()
            && self.durable.coordinator.is_none()
    }

    /// When [`Shard::tick`] next has something to do (a millisecond on, if it is due now).
    pub fn next_due_us(&self, now_us: u64) -> u64 {
        let timeout = self.config.migration_timeout_us;
        let mut due = u64::MAX;
        if self.table.is_none() && !self.refreshing {
            due = now_us;
        }
        if let Some(r) = &self.receipt {
            due = due
                .min(r.next_ask_us.unwrap_or(u64::MAX))
                .min(r.heard_us + timeout + 1);
        }
        if let Some(d) = &self.donation {
            due = due.min(d.heard_us + timeout + 1);
        }
        if let Some(&at) = self
            .durable
            .deletions
            .values()
            .min()
            .filter(|_| !self.refreshing)
        {
            due = due.min(at);
        }
        // Never sooner than a millisecond on: what is due now is done by this tick.
        due.max(now_us + 1000)
    }

    /// Time passes: batches due, timeouts, range deletions due.
    pub fn tick(&mut self, now_us: u64, fx: &mut Effects) {
        if self.table.is_none() {
            // Just started: learn the routing table before anything else.
            fx.refresh = true;
        }
        let timeout = self.config.migration_timeout_us;
        if let Some(r) = self.receipt.as_mut() {
            if r.next_ask_us.is_some_and(|at| at <= now_us) {
                r.next_ask_us = None;
                let msg = match r.phase {
                    RecipientPhase::Cloning => Msg::CloneNext { number: r.number },
                    _ => Msg::ModsNext { number: r.number },
                };
                fx.send.push((r.from, msg));
            }
            let silent = now_us.saturating_sub(r.heard_us) > timeout;
            if silent && r.phase == RecipientPhase::Done {
                // It has told the donor it holds everything, so the donor may have committed:
                // only the donor's word, or a table showing the owner, settles it. Keep asking.
                r.heard_us = now_us;
                fx.refresh = true;
            } else if silent {
                let (number, chunk) = (r.number, r.chunk);
                self.receipt = None;
                fx.events
                    .push(format!("migration {number}: donor silent, receipt dropped"));
                self.schedule_deletion(chunk, now_us, fx);
            }
        }
        if let Some(d) = &self.donation {
            let silent = now_us.saturating_sub(d.heard_us) > timeout;
            if silent && d.phase != DonorPhase::Committing {
                let why = format!("recipient s{} silent for {} ms", d.to + 1, timeout / 1000);
                self.abort(why, now_us, fx);
            }
        }
        let due = self.durable.deletions.values().any(|&at| at <= now_us);
        if due && !self.refreshing {
            fx.refresh = true;
        }
    }

    /// Ends this donor's migration without a commit: it keeps the chunk, and the requests held
    /// in the critical section go ahead.
    fn abort(&mut self, why: String, now_us: u64, fx: &mut Effects) {
        let Some(d) = self.donation.take() else {
            return;
        };
        self.durable.coordinator = None;
        fx.events
            .push(format!("migration {}: aborted ({why})", d.number));
        if matches!(d.phase, DonorPhase::Critical) {
            fx.notes
                .push(Note::CriticalSectionLeft { number: d.number });
        }
        fx.notes.push(Note::Ended {
            number: d.number,
            outcome: MigrationOutcome::Aborted,
            bytes: d.bytes_sent,
            why: Some(why),
        });
        fx.balancer = Some((d.number, MigrationOutcome::Aborted));
        fx.send.push((
            d.to,
            Msg::Finished {
                number: d.number,
                committed: false,
            },
        ));
        self.release_held(now_us, fx);
    }

    /// The outcome of this donor's commit: `Ok(entry)` when the config servers now record the
    /// recipient (at `entry.version`), `Err(why)` when they still record this shard.
    pub fn commit_result(
        &mut self,
        number: u64,
        result: Result<Entry, String>,
        now_us: u64,
        fx: &mut Effects,
    ) {
        let Some(d) = self.donation.as_ref().filter(|d| d.number == number) else {
            return;
        };
        assert_eq!(
            d.phase,
            DonorPhase::Committing,
            "a commit answers only a commit"
        );
        self.durable.coordinator = None;
        match result {
            Err(why) => {
                // The abort needs the critical phase to emit the "left" note.
                self.donation.as_mut().expect("checked").phase = DonorPhase::Critical;
                self.abort(why, now_us, fx);
            }
            Ok(entry) => {
                let d = self.donation.take().expect("checked");
                assert!(entry.version > d.entry.version && entry.shard == d.to);
                if let Some(table) = self.table.as_mut() {
                    table[d.chunk as usize] = entry;
                }
                fx.events.push(format!(
                    "migration {number}: committed, chunk {} now on s{} at version {}; critical section left",
                    d.chunk + 1,
                    d.to + 1,
                    entry.version
                ));
                fx.notes.push(Note::CriticalSectionLeft { number });
                fx.notes.push(Note::Ended {
                    number,
                    outcome: MigrationOutcome::Committed,
                    bytes: d.bytes_sent,
                    why: None,
                });
                fx.balancer = Some((number, MigrationOutcome::Committed));
                fx.send.push((
                    d.to,
                    Msg::Finished {
                        number,
                        committed: true,
                    },
                ));
                let docs = self
                    .durable
                    .docs
                    .get(&d.chunk)
                    .map_or(0, |s| s.len() as u64);
                fx.notes.push(Note::Orphaned {
                    chunk: d.chunk,
                    docs,
                });
                let due = now_us + self.config.range_deletion_delay_us;
                self.durable.deletions.insert(d.chunk, due);
                self.release_held(now_us, fx);
            }
        }
    }

    /// Answers the requests held in a critical section that has ended.
    fn release_held(&mut self, _now_us: u64, fx: &mut Effects) {
        for held in std::mem::take(&mut self.held) {
            let (token, answer) = match held {
                Held::Write {
                    token,
                    chunk,
                    doc,
                    version,
                } => (token, self.write(token, chunk, doc, version, fx)),
                Held::Read {
                    token,
                    chunk,
                    key,
                    version,
                } => (token, self.read(token, chunk, key, version, fx)),
            };
            if let Some(answer) = answer {
                fx.answers.push((token, answer));
            }
        }
    }

    /// Whether a refresh should be started now (and marks it started).
    pub fn take_refresh(&mut self, fx: &mut Effects) -> bool {
        if fx.refresh && !self.refreshing {
            self.refreshing = true;
            return true;
        }
        false
    }

    /// A routing table read from the config servers after a refresh was asked for.
    pub fn refreshed(&mut self, table: Option<Table>, now_us: u64, fx: &mut Effects) {
        self.refreshing = false;
        let Some(table) = table else {
            // The config servers could not be reached: try again on the next request or tick.
            return;
        };
        if let Some(old) = &self.table {
            if let Some((chunk, was, now)) = version_went_back(old, &table) {
                fx.notes.push(Note::VersionWentBack(format!(
                    "s{} saw chunk {} go from version {was} to {now}",
                    self.config.me + 1,
                    chunk + 1
                )));
                return;
            }
        }
        let first = self.table.is_none();
        self.table = Some(table);
        if let Some(r) = &self.receipt {
            if r.phase == RecipientPhase::Done && self.owns(r.chunk) {
                self.receipt = None;
            }
        }
        if first {
            self.recover(now_us, fx);
        }
        self.run_deletions(now_us, fx);
    }

    /// After a restart, with the first table read: finish what a crash interrupted. A commit
    /// that was under way is settled by the table; copies of chunks this shard does not own
    /// (a clone it was receiving, a range it had not yet deleted) become range deletions.
    fn recover(&mut self, now_us: u64, fx: &mut Effects) {
        if let Some((number, chunk, to, committing)) = self.durable.coordinator.take() {
            // Only a commit under way can have landed; the table says whether it did.
            let committed = committing && !self.owns(chunk);
            fx.events.push(format!(
                "recovered migration {number}: {}",
                if committed {
                    "the config servers record it committed"
                } else {
                    "it did not commit"
                }
            ));
            let (outcome, why) = if committed {
                (MigrationOutcome::Committed, None)
            } else {
                (
                    MigrationOutcome::Aborted,
                    Some("the donor crashed".to_string()),
                )
            };
            fx.notes.push(Note::CriticalSectionLeft { number });
            fx.notes.push(Note::Ended {
                number,
                outcome,
                bytes: 0,
                why,
            });
            fx.send.push((to, Msg::Finished { number, committed }));
        }
        let held: Vec<u32> = self
            .durable
            .docs
            .keys()
            .chain(self.durable.bulk.keys())
            .copied()
            .collect();
        for chunk in held {
            let present = self.durable.docs.get(&chunk).is_some_and(|d| !d.is_empty())
                || self.durable.bulk.get(&chunk).is_some_and(|&b| b > 0);
            if present && !self.owns(chunk) && !self.durable.deletions.contains_key(&chunk) {
                self.schedule_deletion(chunk, now_us, fx);
            }
        }
    }

    /// Marks this shard's copy of `chunk` for deletion now, once a table shows it is not the
    /// owner.
    fn schedule_deletion(&mut self, chunk: u32, now_us: u64, fx: &mut Effects) {
        let docs = self.durable.docs.get(&chunk).map_or(0, |d| d.len() as u64);
        if self.durable.deletions.insert(chunk, now_us).is_none() {
            fx.notes.push(Note::Orphaned { chunk, docs });
        }
        fx.refresh = true;
    }

    /// Deletes the ranges that are due and that the fresh table shows another shard owns; a
    /// range this shard owns after all (a commit it did not hear of) is kept.
    fn run_deletions(&mut self, now_us: u64, fx: &mut Effects) {
        let due: Vec<u32> = self
            .durable
            .deletions
            .iter()
            .filter(|&(_, &at)| at <= now_us)
            .map(|(&c, _)| c)
            .collect();
        for chunk in due {
            if self.receipt.as_ref().is_some_and(|r| r.chunk == chunk) {
                continue;
            }
            self.durable.deletions.remove(&chunk);
            if self.owns(chunk) {
                // Owned after all (a commit this shard had not heard of): nothing to delete.
                fx.notes.push(Note::OrphanGone { chunk });
                continue;
            }
            let docs = self.durable.docs.remove(&chunk).map_or(0, |d| d.len());
            let bulk = self.durable.bulk.remove(&chunk).unwrap_or(0);
            fx.notes.push(Note::RangeDeleted { chunk });
            fx.events.push(format!(
                "range deleter: chunk {} removed ({docs} documents, {} KiB preloaded)",
                chunk + 1,
                bulk >> 10
            ));
        }
    }

    /// Every document this shard holds in chunks it owns, by the table it knows.
    pub fn owned_docs(&self) -> impl Iterator<Item = (u32, &Doc)> {
        self.durable
            .docs
            .iter()
            .filter(|(&c, _)| self.owns(c))
            .flat_map(|(&c, docs)| docs.iter().map(move |d| (c, d)))
    }

    /// Workload documents held in chunks this shard does not own.
    pub fn orphan_docs(&self) -> u64 {
        self.durable
            .docs
            .iter()
            .filter(|(&c, _)| !self.owns(c))
            .map(|(_, d)| d.len() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    //! Two shards driven by hand: messages are carried between them by the test, so each step of
    //! a migration can be looked at.

    use super::*;

    fn config(me: usize) -> ShardConfig {
        ShardConfig {
            me,
            doc_bytes: 100,
            clone_batch_bytes: 1000,
            clone_bytes_per_s: 1_000_000,
            catch_up_docs_max: 2,
            migration_timeout_us: 1_000_000,
            range_deletion_delay_us: 5_000_000,
            orphan_reads: false,
        }
    }

    /// Chunk 0 on shard 0 (with `docs`), chunk 1 on shard 1, both at version 1.
    fn pair(docs: u64) -> (Shard, Shard, Table) {
        let table = vec![
            Entry {
                version: 1,
                shard: 0,
            },
            Entry {
                version: 1,
                shard: 1,
            },
        ];
        let mut donor = Shard::start(config(0), Durable::default(), Some(table.clone()));
        for id in 0..docs {
            let answer = donor.write(id, 0, (7, id), 1, &mut Effects::default());
            assert_eq!(answer, Some(Answer::Written));
        }
        let recipient = Shard::start(config(1), Durable::default(), Some(table.clone()));
        (donor, recipient, table)
    }

    /// Carries messages back and forth, advancing time, until neither side sends anything; the
    /// donor's last effects are returned.
    fn shuttle(
        donor: &mut Shard,
        recipient: &mut Shard,
        first: Effects,
        now_us: &mut u64,
    ) -> Effects {
        let (mut to_recipient, mut to_donor) = (first.send, Vec::new());
        let mut last = Effects::default();
        for _ in 0..200 {
            for (_, msg) in to_recipient.drain(..) {
                let mut fx = Effects::default();
                recipient.receive(0, msg, *now_us, &mut fx);
                to_donor.extend(fx.send.into_iter().map(|(_, m)| m));
            }
            *now_us += 10_000;
            let mut fx = Effects::default();
            recipient.tick(*now_us, &mut fx);
            to_donor.extend(fx.send.into_iter().map(|(_, m)| m));
            for msg in to_donor.drain(..) {
                let mut fx = Effects::default();
                donor.receive(1, msg, *now_us, &mut fx);
                to_recipient.append(&mut fx.send);
                if fx.commit.is_some() || fx.balancer.is_some() {
                    return fx;
                }
                last = fx;
            }
            if to_recipient.is_empty()
                && to_donor.is_empty()
                && recipient
                    .receipt
                    .as_ref()
                    .and_then(|r| r.next_ask_us)
                    .is_none()
            {
                break;
            }
        }
        last
    }

    #[test]
    fn a_migration_clones_catches_up_holds_writes_and_commits() {
        let (mut donor, mut recipient, _) = pair(25);
        let mut now = 0;
        let mut fx = Effects::default();
        donor.move_chunk(1, 0, 1, 1, now, &mut fx);
        // A write during the clone is kept as a change and reaches the recipient.
        assert_eq!(
            donor.write(100, 0, (7, 100), 1, &mut Effects::default()),
            Some(Answer::Written)
        );
        let fx = shuttle(&mut donor, &mut recipient, fx, &mut now);
        let (number, chunk, expect, to) = fx.commit.expect("the donor commits");
        assert_eq!(
            (number, chunk, expect, to),
            (
                1,
                0,
                Entry {
                    version: 1,
                    shard: 0
                },
                1
            )
        );
        assert_eq!(
            donor.donating(),
            Some((1, 0, true)),
            "in the critical section"
        );
        assert_eq!(
            recipient.durable().docs[&0].len(),
            26,
            "every document, the late one too"
        );
        // Held in the critical section, then told its table is stale.
        assert_eq!(
            donor.write(101, 0, (7, 101), 1, &mut Effects::default()),
            None
        );
        let mut fx = Effects::default();
        donor.commit_result(
            1,
            Ok(Entry {
                version: 2,
                shard: 1,
            }),
            now,
            &mut fx,
        );
        assert_eq!(fx.answers, vec![(101, Answer::StaleConfig)]);
        assert_eq!(fx.balancer, Some((1, MigrationOutcome::Committed)));
        assert!(fx.notes.contains(&Note::Orphaned { chunk: 0, docs: 26 }));
        // A router that still believes version 1 is sent away; the donor no longer owns it.
        assert_eq!(
            donor.write(102, 0, (7, 102), 1, &mut Effects::default()),
            Some(Answer::StaleConfig)
        );
        // The recipient refuses version 2 until it has refreshed, then takes it.
        let mut fx = Effects::default();
        assert_eq!(
            recipient.write(103, 0, (7, 103), 2, &mut fx),
            Some(Answer::StaleConfig)
        );
        assert!(
            fx.refresh,
            "a newer version than it knows: the recipient refreshes"
        );
        let table = vec![
            Entry {
                version: 2,
                shard: 1,
            },
            Entry {
                version: 1,
                shard: 1,
            },
        ];
        recipient.refreshed(Some(table), now, &mut Effects::default());
        assert_eq!(
            recipient.write(103, 0, (7, 103), 2, &mut Effects::default()),
            Some(Answer::Written)
        );
    }

    #[test]
    fn an_aborted_migration_lets_held_writes_through_and_the_recipient_drops_its_copy() {
        let (mut donor, mut recipient, table) = pair(5);
        let mut now = 0;
        let mut fx = Effects::default();
        donor.move_chunk(1, 0, 1, 1, now, &mut fx);
        let _ = shuttle(&mut donor, &mut recipient, fx, &mut now);
        assert_eq!(
            donor.write(50, 0, (7, 50), 1, &mut Effects::default()),
            None,
            "held"
        );
        let mut fx = Effects::default();
        donor.commit_result(1, Err("the chunk's entry changed".into()), now, &mut fx);
        assert_eq!(
            fx.answers,
            vec![(50, Answer::Written)],
            "the donor still owns it"
        );
        let Some((
            _,
            Msg::Finished {
                committed: false, ..
            },
        )) = fx.send.first().cloned()
        else {
            panic!("the recipient is told: {:?}", fx.send);
        };
        let mut rfx = Effects::default();
        recipient.receive(0, fx.send.remove(0).1, now, &mut rfx);
        assert!(rfx.refresh && rfx.notes.contains(&Note::Orphaned { chunk: 0, docs: 5 }));
        // Deleted once a fresh table shows the donor owns the chunk.
        let mut rfx = Effects::default();
        recipient.refreshed(Some(table), now, &mut rfx);
        assert!(rfx.notes.contains(&Note::RangeDeleted { chunk: 0 }));
        assert!(!recipient.durable().docs.contains_key(&0));
    }

    #[test]
    fn a_recipient_that_confirmed_everything_never_deletes_on_silence() {
        let (mut donor, mut recipient, table) = pair(5);
        let mut now = 0;
        let mut fx = Effects::default();
        donor.move_chunk(1, 0, 1, 1, now, &mut fx);
        let _ = shuttle(&mut donor, &mut recipient, fx, &mut now);
        // The donor is committing and goes quiet (say, cut off from the config servers).
        now += 10_000_000;
        let mut rfx = Effects::default();
        recipient.tick(now, &mut rfx);
        assert!(rfx.refresh, "it asks the config servers");
        assert!(
            recipient.durable().deletions.is_empty(),
            "but deletes nothing"
        );
        recipient.refreshed(Some(table), now, &mut Effects::default());
        assert_eq!(
            recipient.durable().docs[&0].len(),
            5,
            "the copy waits for the donor's word"
        );
    }
}
