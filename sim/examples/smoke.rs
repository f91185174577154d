fn main() {
    let name = std::env::args()
        .nth(1)
        .unwrap_or("etcd-leader-isolate".into());
    let seed: u64 = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(1);
    let s = quorumlab_experiment::Scenario::load(&name).unwrap();
    let t = std::time::Instant::now();
    let out = quorumlab_sim::run(&s, &quorumlab_sim::RunConfig::seeded(seed)).unwrap();
    let el = t.elapsed();
    for e in out
        .trace
        .iter()
        .filter(|e| !matches!(e.what, quorumlab_sim::trace::EventKind::Op { .. }))
    {
        println!("{}", e.timeline_line());
    }
    println!("{:#?}", out.summary);
    println!("wall {:?} ops {}", el, out.history.ops.len());
}
