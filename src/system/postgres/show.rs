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
        if s.lost_ids.is_empty() {
            String::new()
        } else {
            format!(
                " (ids {}{})",
                s.lost_ids
                    .iter()
                    .take(5)
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                if s.lost_writes > 5 { ", ..." } else { "" }
            )
        }
    );
    if let Some(d) = s.write_latency_ms {
        println!(
            "  write latency before the fault: p50 {:.1} ms, p99 {:.1} ms",
            d.p50, d.p99
        );
    }
    if !s.lag.is_empty() {
        print_lag(s);
    }
}

/// Prints the lag table: one row per phase and replica, one column per method.
pub fn print_lag(s: &PgRunSummary) {
    println!(
        "\n  {:<8} {:<4} {}",
        "phase",
        "node",
        LagMethod::ALL
            .iter()
            .map(|m| format!("{:>22}", m.label()))
            .collect::<String>()
    );
    println!(
        "  {:<8} {:<4} {}",
        "",
        "",
        LagMethod::ALL
            .iter()
            .map(|_| format!("{:>22}", "p50/p99/max (NULLs)"))
            .collect::<String>()
    );
    let mut rows: Vec<(&str, &str)> = s
        .lag
        .iter()
        .map(|l| (l.phase.as_str(), l.replica.as_str()))
        .collect();
    rows.dedup();
    let mut seen = std::collections::BTreeSet::new();
    rows.retain(|r| seen.insert(*r));
    for (phase, replica) in rows {
        let cells: String = LagMethod::ALL
            .iter()
            .map(|&m| {
                let cell = s
                    .lag
                    .iter()
                    .find(|l| l.phase == phase && l.replica == replica && l.method == m)
                    .map_or("-".to_string(), |l| {
                        let nulls = if l.nulls > 0 {
                            format!(" ({})", l.nulls)
                        } else {
                            String::new()
                        };
                        match l.value {
                            Some(d) => format!("{:.0}/{:.0}/{:.0}{nulls}", d.p50, d.p99, d.max),
                            None => format!("NULL{nulls}"),
                        }
                    });
                format!("{cell:>22}")
            })
            .collect();
        println!("  {phase:<8} {replica:<4} {cells}");
    }
}
