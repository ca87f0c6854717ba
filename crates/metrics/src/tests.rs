use super::*;

#[test]
fn retain_drops_only_what_it_refuses_and_the_memory_goes_with_the_last_holder() {
    let r = Registry::new();
    let a = r.series("shop", "prod", Variant::Production);
    let b = r.series("shop", "beta", Variant::Production);
    r.series("shop", "beta", Variant::Canary);
    assert_eq!(r.len(), 3);
    r.retain(|k| k.stage != "beta");
    assert_eq!(r.len(), 1);
    assert!(Arc::ptr_eq(&a, &r.series("shop", "prod", Variant::Production)), "kept as it was");
    // A request still recording into a dropped series holds it until it finishes.
    let weak = Arc::downgrade(&b);
    assert!(weak.upgrade().is_some());
    drop(b);
    assert!(weak.upgrade().is_none(), "freed with its last holder");
    // Nothing to drop: nothing changes.
    let before = r.keys();
    r.retain(|_| true);
    assert_eq!(r.keys(), before);
}

fn obs(status: u16, ms: u64, routed: Routed) -> Observation {
    Observation {
        status,
        latency_us: ms * 1000,
        integration_us: Some(ms * 900),
        cache: None,
        routed,
    }
}

#[test]
fn a_second_survives_its_encoding_whole_or_counters_only() {
    let s = Series::new();
    let t = 1_800_000_000u64;
    assert_eq!(s.second(t), None);
    s.record(t, &obs(200, 3, Routed::Random));
    s.record(t, &obs(503, 70, Routed::Forced));
    s.record(t, &obs(404, 1, Routed::Sticky(42)));
    s.record(t, &obs(500, 1, Routed::Sticky(42)));
    let c = s.second(t).unwrap();
    assert_eq!(
        (c.count, c.e4, c.e5, c.forced, c.forced_e5, c.sticky_e5, c.sticky_keys_e5),
        (4, 1, 2, 1, 1, 1, 1)
    );
    assert_eq!(c.latency.n, 4);
    assert_eq!(c.latency.max_us, 70_000);
    let v = c.encode();
    assert_eq!(v.len(), ENCODED_LEN);
    assert_eq!(SecondCounts::decode(&v), Some(c.clone()));
    let scalars = SecondCounts::decode(&v[..SCALARS]).unwrap();
    assert_eq!((scalars.count, scalars.e5, scalars.latency.n), (4, 2, 0));
    assert_eq!(SecondCounts::decode(&v[..SCALARS + 1]), None, "any other length is refused");
    // An empty histogram's minimum (u64::MAX) comes back as it was.
    let empty = SecondCounts::default();
    assert_eq!(SecondCounts::decode(&empty.encode()), Some(empty));
}

#[test]
fn the_cluster_reads_the_sum_of_what_each_replica_said_last() {
    let key = SeriesKey {
        api: "shop".into(),
        stage: "prod".into(),
        variant: Variant::Canary,
    };
    let t = 1_800_000_000u64;
    let (a, b) = (Series::new(), Series::new());
    for _ in 0..3 {
        a.record(t, &obs(200, 2, Routed::Random));
    }
    b.record(t, &obs(500, 50, Routed::Random));
    b.record(t + 1, &obs(502, 10, Routed::Random));
    let mut cluster = ClusterSeconds::new();
    cluster.put("a", key.clone(), t, a.second(t).unwrap());
    cluster.put("b", key.clone(), t, b.second(t).unwrap());
    cluster.put("b", key.clone(), t + 1, b.second(t + 1).unwrap());
    assert_eq!(cluster.reduce(&key, Metric::Count, Statistic::Sum, t, t + 2), Some(5.0));
    assert_eq!(cluster.reduce(&key, Metric::Error5xx, Statistic::Sum, t, t + 1), Some(1.0));
    assert_eq!(cluster.reduce(&key, Metric::Latency, Statistic::Maximum, t, t + 1), Some(50.0));
    // A replica publishing a second again (late requests) replaces what it said, never adds twice.
    a.record(t, &obs(500, 2, Routed::Random));
    cluster.put("a", key.clone(), t, a.second(t).unwrap());
    assert_eq!(cluster.second(&key, t).map(|c| (c.count, c.e5)), Some((5, 2)));
    let points = cluster.query(&key, Metric::Count, Statistic::Sum, 1, t, t + 5);
    assert_eq!(
        points,
        vec![
            Datapoint { timestamp: t, value: 5.0 },
            Datapoint {
                timestamp: t + 1,
                value: 1.0
            }
        ]
    );
    // The same reduction as one process that saw every request.
    let one = Series::new();
    for (sec, o) in [(t, obs(200, 2, Routed::Random)); 3].into_iter().chain([
        (t, obs(500, 2, Routed::Random)),
        (t, obs(500, 50, Routed::Random)),
        (t + 1, obs(502, 10, Routed::Random)),
    ]) {
        one.record(sec, &o);
    }
    for m in [Metric::Count, Metric::Error5xx, Metric::Latency, Metric::IntegrationLatency] {
        for st in [Statistic::Sum, Statistic::Average, Statistic::Percentile(99.0)] {
            assert_eq!(cluster.reduce(&key, m, st, t, t + 2), one.reduce(m, st, t, t + 2), "{m:?} {st:?}");
        }
    }
    cluster.forget_before(t + 1);
    assert_eq!(cluster.first_second(), Some(t + 1));
    assert_eq!(cluster.second(&key, t), None);
}
