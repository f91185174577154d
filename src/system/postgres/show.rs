//! How Postgres runs look on a terminal: one run's failover measurements and its lag table.

use quorumlab_experiment::replication::{LagMethod, PgRunSummary};

fn opt_ms(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| format!("{v} ms"))
}

/// Prints one run's failover measurements.
pub fn print_run(s: &PgRunSummary, faults: &str) {
    println!("\n{} run {}: {faults}", s.mode, s.seed);
    if s.fault_at_ms.is_some() {
        println!(
            "  leader key lost after {}; new primary {} took its first write after {}",
            opt_ms(s.detection_ms),
            s.new_primary.as_deref().unwrap_or("-"),
            opt_ms(s.failover_ms)
        );
        println!(
            "  longest stretch with no write acknowledged: {} ms; old primary acked writes for {} after the fault",
            s.write_unavailable_ms,
            opt_ms(s.old_primary_acked_for_ms)
        );
        println!(
            "  two primaries acknowledging writes at once: {}",
            if s.split_brain() {
                format!("YES, for {} ms (split brain)", s.dual_primary_ms)
            } else {
                "no".into()
            }
        );
    }
    println!(
        "  acknowledged writes: {}, lost: {}{}",
        s.acked_writes,
        s.lost_writes,
        crate::table::some_ids(&s.lost_ids, s.lost_writes)
    );
    if let Some(d) = s.write_latency_ms {
        println!(
            "  write latency before the fault: p50 {:.1} ms, p99 {:.1} ms",
            d.p50, d.p99
        );
    }
    if !s.lag.is_empty() {
        crate::table::print_lag(&s.lag, &LagMethod::ALL);
    }
}
