//! Shard-key experiments: how candidate keys behave as write volume grows 100x.
//!
//! A [`workload::Workload`] names datasets (fields and their distributions, write volume, queries)
//! and candidate shard keys. [`run`] replays the same deterministic write stream under each
//! candidate key into a MongoDB-style chunk map ([`chunks::ChunkMap`]): chunks split as they grow,
//! jumbo chunks stay put, a balancer migrates between rounds. Growth steps (1x, 10x, 100x) run one
//! after another on the same cluster, the way real growth arrives. After each step it measures the
//! write skew across shards and chunks, migrations, and how many sampled queries must go to every
//! shard, and at the end gives each key a verdict with its reason.

pub mod chart;
pub mod chunks;
pub mod keyspace;
pub mod replay;
pub mod workload;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution as _, Zipf};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::chunks::ChunkMap;
use crate::keyspace::{mix64, KeyLayout, QueryShape, Target};
use crate::workload::{
    ClusterSettings, Dataset, Distribution, KeySpec, Workload, WorkloadError, DAY_MS,
};

/// Queries sampled per key and growth step to measure routing.
const QUERY_SAMPLES: u32 = 2_000;

/// How to run the experiment, beyond the workload file.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Override the workload's shard count.
    pub shards: Option<usize>,
    /// Growth factors, in order (e.g. 1, 10, 100); `None` takes the workload's.
    pub growth: Option<Vec<u64>>,
    /// Seed for the write stream and query samples.
    pub seed: u64,
    /// Only these keys (by name); all when `None`.
    pub keys: Option<Vec<String>>,
}

/// What one growth step measured for one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    /// Growth factor of this step.
    pub growth: u64,
    /// Writes in this step.
    pub writes: u64,
    /// Busiest shard's writes over the mean per shard (1.0 is perfect).
    pub max_over_mean: f64,
    /// Share of this step's writes taken by the busiest shard.
    pub hottest_shard_share: f64,
    /// Share of this step's writes taken by the busiest chunk.
    pub hottest_chunk_share: f64,
    /// Jumbo chunks at the end of the step.
    pub jumbo_chunks: usize,
    /// Chunks at the end of the step.
    pub chunks: usize,
    /// Bytes the balancer moved during the step.
    pub bytes_migrated: u64,
    /// Share of sampled queries that went to every shard (`None`: no queries defined).
    pub scatter_gather_share: Option<f64>,
    /// Mean shards a sampled query touched.
    pub shards_per_query: Option<f64>,
}

/// Everything measured for one candidate key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyResult {
    /// Key name.
    pub key: String,
    /// Its dataset.
    pub dataset: String,
    /// Its fields, as written in the workload.
    pub fields: Vec<String>,
    /// Hashed or ranged.
    pub hashed: bool,
    /// One entry per growth step.
    pub steps: Vec<StepResult>,
    /// `good`, `weak` or `bad`.
    pub grade: String,
    /// One line: the grade and why.
    pub verdict: String,
    /// Writes per shard per balancer round, over all steps (for the chart).
    pub load: Vec<Vec<u64>>,
}

/// The whole experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardReport {
    /// Workload name.
    pub workload: String,
    /// Shards in the cluster.
    pub shards: usize,
    /// Growth factors.
    pub growth: Vec<u64>,
    /// Seed.
    pub seed: u64,
    /// Balancer rounds per step (chart buckets).
    pub rounds_per_step: u32,
    /// Per key.
    pub keys: Vec<KeyResult>,
    /// Writes simulated, summed over keys.
    pub writes_simulated: u64,
}

/// Draws documents for one dataset, deterministically from a seed.
struct DocStream<'a> {
    dataset: &'a Dataset,
    rng: SmallRng,
    zipfs: Vec<Option<Zipf<f64>>>,
}

impl<'a> DocStream<'a> {
    fn new(dataset: &'a Dataset, seed: u64) -> Self {
        let zipfs = dataset
            .fields
            .iter()
            .map(|f| match f.dist {
                Distribution::Zipf { cardinality, skew } => {
                    Some(Zipf::new(cardinality, skew).expect("validated zipf"))
                }
                _ => None,
            })
            .collect();
        DocStream {
            dataset,
            rng: SmallRng::seed_from_u64(seed),
            zipfs,
        }
    }

    fn value(&mut self, field: usize, now_ms: u64) -> u64 {
        match self.dataset.fields[field].dist {
            Distribution::Uniform { cardinality } | Distribution::Enum { cardinality } => {
                self.rng.gen_range(0..cardinality)
            }
            Distribution::Zipf { cardinality, .. } => {
                let rank = self.zipfs[field]
                    .as_ref()
                    .expect("zipf sampler")
                    .sample(&mut self.rng) as u64;
                // Popular ids are scattered over the id space, as real ids are.
                mix64(rank) % cardinality
            }
            Distribution::Monotonic => now_ms,
        }
    }

    fn fill(&mut self, doc: &mut [u64], now_ms: u64) {
        for (f, slot) in doc.iter_mut().enumerate() {
            *slot = self.value(f, now_ms);
        }
    }
}

/// Runs every selected candidate key of `workload` through the growth steps.
pub fn run(workload: &Workload, config: &ShardConfig) -> Result<ShardReport, WorkloadError> {
    let (shards, growth, keys) = resolve(workload, config)?;
    let prepared: Vec<(&KeySpec, &Dataset, KeyLayout)> = keys
        .iter()
        .map(|k| {
            let dataset = workload.dataset(&k.dataset).expect("validated dataset");
            let span_ms = dataset.step_days * DAY_MS * growth.len() as u64;
            let layout = KeyLayout::new(dataset, k, workload.key_fields(k)?, span_ms);
            Ok((*k, dataset, layout))
        })
        .collect::<Result<_, WorkloadError>>()?;
    let mut runs: Vec<KeyRun> = prepared
        .into_iter()
        .map(|(key, dataset, layout)| KeyRun::new(key, dataset, layout, shards, &workload.cluster))
        .collect();
    for dataset in &workload.datasets {
        let keys: Vec<&mut KeyRun> = runs
            .iter_mut()
            .filter(|r| r.dataset.name == dataset.name)
            .collect();
        if !keys.is_empty() {
            grow(workload, dataset, &growth, config.seed, keys);
        }
    }
    let results: Vec<KeyResult> = runs.into_iter().map(KeyRun::finish).collect();
    let writes_simulated = results
        .iter()
        .flat_map(|r| &r.steps)
        .map(|s| s.writes)
        .sum();
    Ok(ShardReport {
        workload: workload.name.clone(),
        shards,
        growth,
        seed: config.seed,
        rounds_per_step: workload.cluster.balancer_rounds_per_step,
        keys: results,
        writes_simulated,
    })
}

/// The shard count, growth factors and candidate keys the run uses: the command line's, else the
/// workload's; each refused in one line when impossible.
fn resolve<'w>(
    workload: &'w Workload,
    config: &ShardConfig,
) -> Result<(usize, Vec<u64>, Vec<&'w KeySpec>), WorkloadError> {
    let invalid = |reason: String| WorkloadError::Invalid {
        name: workload.name.clone(),
        reason,
    };
    let shards = config.shards.unwrap_or(workload.cluster.shards);
    if shards == 0 {
        return Err(invalid(
            "0 shards: a sharded cluster needs at least 1 shard".into(),
        ));
    }
    let growth = config
        .growth
        .clone()
        .unwrap_or_else(|| workload.growth.clone());
    if growth.is_empty() || growth.contains(&0) {
        return Err(invalid(
            "growth factors must be positive, e.g. 1,10,100".into(),
        ));
    }
    let keys: Vec<&KeySpec> = match &config.keys {
        None => workload.keys.iter().collect(),
        Some(names) => names
            .iter()
            .map(|n| {
                workload.keys.iter().find(|k| &k.name == n).ok_or_else(|| {
                    let known: Vec<&str> = workload.keys.iter().map(|k| k.name.as_str()).collect();
                    invalid(format!(
                        "no candidate key '{n}' (known: {})",
                        known.join(", ")
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    Ok((shards, growth, keys))
}

/// Grows one dataset step by step. Its write stream is drawn once, a balancer round at a time,
/// and every key of that dataset routes the very same documents (in parallel), so keys are
/// compared on equal terms.
fn grow(
    workload: &Workload,
    dataset: &Dataset,
    growth: &[u64],
    seed: u64,
    mut keys: Vec<&mut KeyRun>,
) {
    let name_hash = dataset
        .name
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31) + u64::from(b));
    let seed = seed ^ mix64(name_hash);
    let mut stream = DocStream::new(dataset, seed);
    let fields = dataset.fields.len();
    let rounds = u64::from(workload.cluster.balancer_rounds_per_step);
    let mut docs: Vec<u64> = Vec::new();
    for (step_index, &factor) in growth.iter().enumerate() {
        keys.iter_mut().for_each(|k| k.start_step());
        let writes = dataset.writes_per_step * factor;
        let span_ms = dataset.step_days * DAY_MS;
        let start_ms = step_index as u64 * span_ms;
        let mut written = 0u64;
        for round in 0..rounds {
            let until = writes * (round + 1) / rounds;
            docs.clear();
            docs.resize(((until - written) as usize) * fields, 0);
            for doc in docs.chunks_exact_mut(fields) {
                stream.fill(doc, start_ms + written * span_ms / writes);
                written += 1;
            }
            keys.par_iter_mut()
                .for_each(|k| k.round(&docs, workload.cluster.imbalance_chunks));
        }
        let now_ms = start_ms + span_ms;
        keys.par_iter_mut()
            .for_each(|k| k.end_step(factor, writes, seed, now_ms));
    }
}

/// One candidate key's cluster as the experiment runs.
struct KeyRun<'a> {
    key: &'a KeySpec,
    dataset: &'a Dataset,
    layout: KeyLayout,
    map: ChunkMap,
    shards: usize,
    step_load: Vec<u64>,
    step_migrated: u64,
    load: Vec<Vec<u64>>,
    steps: Vec<StepResult>,
    /// Growth steps started so far.
    steps_started: usize,
    /// Records one step's chunk map and migrations, for a replay.
    recorder: Option<replay::Recorder>,
}

impl<'a> KeyRun<'a> {
    fn new(
        key: &'a KeySpec,
        dataset: &'a Dataset,
        layout: KeyLayout,
        shards: usize,
        settings: &ClusterSettings,
    ) -> Self {
        let map = if key.hashed {
            ChunkMap::presplit(shards, settings.chunk_bytes_max)
        } else {
            ChunkMap::ranged(shards, settings.chunk_bytes_max)
        };
        KeyRun {
            key,
            dataset,
            layout,
            map,
            shards,
            step_load: vec![0; shards],
            step_migrated: 0,
            load: Vec::new(),
            steps: Vec::new(),
            steps_started: 0,
            recorder: None,
        }
    }

    fn start_step(&mut self) {
        self.steps_started += 1;
        if let Some(r) = self.recorder.as_mut() {
            r.step_started(self.steps_started, &self.map);
        }
        self.map.reset_writes();
        self.step_load = vec![0; self.shards];
        self.step_migrated = 0;
    }

    /// Inserts one balancer round's documents (flattened, `fields` values each), then balances.
    fn round(&mut self, docs: &[u64], imbalance_chunks: u64) {
        let mut round_load = vec![0u64; self.shards];
        for doc in docs.chunks_exact(self.dataset.fields.len()) {
            let point = self.layout.point(doc);
            let shard = self.map.insert(point, self.dataset.doc_bytes);
            round_load[shard] += 1;
            if let Some(r) = self.recorder.as_mut() {
                r.write(self.steps_started, point);
            }
        }
        for (total, w) in self.step_load.iter_mut().zip(&round_load) {
            *total += w;
        }
        self.load.push(round_load);
        let moves = self.map.balance_moves(imbalance_chunks);
        self.step_migrated += moves.iter().map(|m| m.bytes).sum::<u64>();
        if let Some(r) = self.recorder.as_mut() {
            r.moved(self.steps_started, &moves);
        }
    }

    fn end_step(&mut self, growth: u64, writes: u64, seed: u64, now_ms: u64) {
        assert_eq!(
            self.step_load.iter().sum::<u64>(),
            writes,
            "every write lands on exactly one shard"
        );
        // Every key samples the same queries: same seed, same order.
        let mut values = DocStream::new(self.dataset, mix64(seed ^ growth));
        let mut rng = SmallRng::seed_from_u64(mix64(seed ^ growth ^ 0x9e37));
        let (scatter, touched) = sample_queries(
            self.dataset,
            &self.layout,
            &self.map,
            self.shards,
            &mut values,
            &mut rng,
            now_ms,
        );
        let busiest = *self.step_load.iter().max().unwrap_or(&0);
        let hottest_chunk = self
            .map
            .chunks()
            .iter()
            .map(|c| c.writes)
            .max()
            .unwrap_or(0);
        self.steps.push(StepResult {
            growth,
            writes,
            max_over_mean: busiest as f64 / (writes as f64 / self.shards as f64),
            hottest_shard_share: busiest as f64 / writes as f64,
            hottest_chunk_share: hottest_chunk as f64 / writes as f64,
            jumbo_chunks: self.map.jumbo_count(),
            chunks: self.map.chunks().len(),
            bytes_migrated: self.step_migrated,
            scatter_gather_share: scatter,
            shards_per_query: touched,
        });
    }

    fn finish(self) -> KeyResult {
        let (grade, verdict) = judge(
            self.steps.last().expect("at least one growth step"),
            self.shards,
        );
        KeyResult {
            key: self.key.name.clone(),
            dataset: self.dataset.name.clone(),
            fields: self.key.fields.clone(),
            hashed: self.key.hashed,
            steps: self.steps,
            grade: grade.to_string(),
            verdict,
            load: self.load,
        }
    }
}

/// Routes a sample of the dataset's queries; returns (share sent to every shard, mean shards).
fn sample_queries(
    dataset: &Dataset,
    layout: &KeyLayout,
    map: &ChunkMap,
    shards: usize,
    values: &mut DocStream,
    rng: &mut SmallRng,
    now_ms: u64,
) -> (Option<f64>, Option<f64>) {
    let total_weight: u32 = dataset.queries.iter().map(|q| q.weight).sum();
    if total_weight == 0 {
        return (None, None);
    }
    let field_index = |name: &str| {
        dataset
            .fields
            .iter()
            .position(|f| f.name == name)
            .expect("validated field")
    };
    let (mut everywhere, mut touched) = (0u32, 0u64);
    for _ in 0..QUERY_SAMPLES {
        let mut pick = rng.gen_range(0..total_weight);
        let query = dataset
            .queries
            .iter()
            .find(|q| {
                if pick < q.weight {
                    return true;
                }
                pick -= q.weight;
                false
            })
            .expect("weights sum to total");
        let mut shape = QueryShape {
            eq: vec![None; dataset.fields.len()],
            range: None,
        };
        for name in &query.eq {
            let f = field_index(name);
            shape.eq[f] = Some(values.value(f, now_ms));
        }
        if let Some(name) = &query.range {
            shape.range = Some((
                field_index(name),
                now_ms.saturating_sub(query.range_days * DAY_MS),
                now_ms,
            ));
        }
        let target = layout.target(&shape);
        let hit = match target {
            Target::Broadcast => map.shards_with_chunks(),
            Target::Range(lo, hi) => map.shards_for_range(lo, hi).len(),
        };
        touched += hit as u64;
        if target == Target::Broadcast || (shards > 1 && hit >= shards) {
            everywhere += 1;
        }
    }
    let n = f64::from(QUERY_SAMPLES);
    (Some(f64::from(everywhere) / n), Some(touched as f64 / n))
}

/// Grades a key on its last (largest) growth step.
pub fn judge(last: &StepResult, shards: usize) -> (&'static str, String) {
    let pct = |x: f64| format!("{:.0}%", x * 100.0);
    if last.jumbo_chunks > 0 {
        return (
            "bad",
            format!("{} jumbo chunks: too few distinct key values to split or balance (low cardinality)", last.jumbo_chunks),
        );
    }
    if shards > 1 && last.hottest_shard_share > 0.5 {
        return (
            "bad",
            format!(
                "one shard takes {} of new writes at {}x: every insert lands at one end of the key range (monotonic key)",
                pct(last.hottest_shard_share),
                last.growth
            ),
        );
    }
    if last.max_over_mean > 1.5 {
        return (
            "weak",
            format!(
                "uneven writes: busiest shard at {:.2}x the mean",
                last.max_over_mean
            ),
        );
    }
    match last.scatter_gather_share {
        Some(s) if s > 0.5 => (
            "weak",
            format!(
                "writes spread (max/mean {:.2}) but {} of queries go to every shard",
                last.max_over_mean,
                pct(s)
            ),
        ),
        Some(s) => (
            "good",
            format!(
                "writes spread (max/mean {:.2}) and {} of queries are targeted",
                last.max_over_mean,
                pct(1.0 - s)
            ),
        ),
        None => (
            "good",
            format!("writes spread (max/mean {:.2})", last.max_over_mean),
        ),
    }
}
