//! Shrinking a failing run to its cause, after QuickCheck's shrinkers and Jepsen's habit of
//! re-running with less: keep the seed, and remove faults, shorten the run and lower the workload
//! for as long as the run still fails. What is left is the smallest scenario this search finds
//! that still breaks a safety property with that seed, written out as a file a reader can run.
//!
//! Every candidate is a valid scenario and is judged by running it, so the result fails by
//! construction; the search is greedy (one change at a time, repeated until nothing more can go),
//! which finds a scenario from which no single fault can be removed.

use quorumlab_experiment::{FaultStep, Scenario};

use crate::run::fault_schedule;

/// The smallest failing scenario found, and what finding it cost.
#[derive(Debug, Clone)]
pub struct Shrunk {
    /// The scenario: same seed, fewer faults, shorter, lighter.
    pub scenario: Scenario,
    /// Runs tried, the first (the original) included.
    pub runs: u64,
}

/// Shrinks `scenario` while `fails` says it still fails (for the caller's seed and build).
/// Returns `Ok(None)` when the original does not fail.
pub fn shrink<E>(
    scenario: &Scenario,
    seed: u64,
    fails: &mut dyn FnMut(&Scenario) -> Result<bool, E>,
) -> Result<Option<Shrunk>, E> {
    let mut search = Search {
        fails,
        runs: 0,
        best: scenario.clone(),
    };
    if !search.still_fails(scenario)? {
        return Ok(None);
    }
    search.make_chaos_explicit(seed)?;
    loop {
        let mut changed = search.drop_faults()?;
        changed |= search.shorten()?;
        changed |= search.lighten()?;
        if !changed {
            break;
        }
    }
    Ok(Some(Shrunk {
        scenario: search.best,
        runs: search.runs,
    }))
}

struct Search<'f, E> {
    fails: &'f mut dyn FnMut(&Scenario) -> Result<bool, E>,
    runs: u64,
    best: Scenario,
}

impl<E> Search<'_, E> {
    fn still_fails(&mut self, candidate: &Scenario) -> Result<bool, E> {
        if candidate.validate().is_err() {
            return Ok(false);
        }
        self.runs += 1;
        (self.fails)(candidate)
    }

    /// Adopts `candidate` if it still fails.
    fn try_adopt(&mut self, candidate: Scenario) -> Result<bool, E> {
        if candidate != self.best && self.still_fails(&candidate)? {
            self.best = candidate;
            return Ok(true);
        }
        Ok(false)
    }

    /// Chaos faults drawn from the seed become plain scheduled faults, which can then be removed
    /// one by one (kept only if the run still fails that way).
    fn make_chaos_explicit(&mut self, seed: u64) -> Result<bool, E> {
        if self.best.chaos.is_none() {
            return Ok(false);
        }
        let mut candidate = self.best.clone();
        candidate.faults = fault_schedule(&self.best, seed);
        candidate.chaos = None;
        self.try_adopt(candidate)
    }

    /// Removes each fault it can, latest first.
    fn drop_faults(&mut self) -> Result<bool, E> {
        let mut changed = false;
        let mut i = self.best.faults.len();
        while i > 0 {
            i -= 1;
            let mut candidate = self.best.clone();
            candidate.faults.remove(i);
            changed |= self.try_adopt(candidate)?;
        }
        Ok(changed)
    }

    /// The shortest duration (in whole tenths of a second) that still fails, by bisection.
    fn shorten(&mut self) -> Result<bool, E> {
        let last_fault_ms = self
            .best
            .faults
            .iter()
            .map(|f: &FaultStep| f.at_ms)
            .max()
            .unwrap_or(0);
        let mut lo = (last_fault_ms + 1).div_ceil(100);
        let mut hi = self.best.duration_ms / 100;
        let mut changed = false;
        while lo < hi {
            let mid = (lo + hi) / 2;
            let mut candidate = self.best.clone();
            candidate.duration_ms = mid * 100;
            if self.try_adopt(candidate)? {
                hi = mid;
                changed = true;
            } else {
                lo = mid + 1;
            }
        }
        Ok(changed)
    }

    /// Fewer clients, a lower rate and fewer keys, each halved while the run still fails.
    fn lighten(&mut self) -> Result<bool, E> {
        let halvings: [fn(&mut Scenario) -> bool; 3] = [
            |s| halve(&mut s.workload.clients),
            |s| halve(&mut s.workload.rate_per_s),
            |s| halve(&mut s.workload.keys),
        ];
        let mut changed = false;
        for halving in halvings {
            loop {
                let mut candidate = self.best.clone();
                if !halving(&mut candidate) || !self.try_adopt(candidate)? {
                    break;
                }
                changed = true;
            }
        }
        Ok(changed)
    }
}

/// Halves a count that is above 1; false if it is already 1 (or 0).
fn halve<T>(n: &mut T) -> bool
where
    T: Copy + PartialOrd + From<u8> + std::ops::Div<Output = T>,
{
    if *n > T::from(1) {
        *n = *n / T::from(2);
        true
    } else {
        false
    }
}
