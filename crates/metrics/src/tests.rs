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
