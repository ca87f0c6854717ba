//! Changing the weight under continuous load: no request fails or hangs, and a new weight holds for the
//! very next request after the call returns.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_weight_changes_under_load_lose_nothing() {
    let Fixture {
        s,
        prod: _prod,
        canary,
        c,
        dir: _dir,
        ..
    } = fixture(10.0, json!({})).await;
    let url = format!("{}/orders/prod/load", s.gateway);

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (c, url, stop, sent, failed) = (c.clone(), url.clone(), stop.clone(), sent.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                // The client's 10 s timeout turns a hang into a failure.
                let ok = match c.get(&url).send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                sent.fetch_add(1, Ordering::SeqCst);
                if !ok {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for i in 0..50 {
        let before = sent.load(Ordering::SeqCst);
        set_percent(&c, &s, f64::from((i * 37) % 101)).await;
        // Let some requests run on each weight.
        while sent.load(Ordering::SeqCst) < before + 20 {
            tokio::task::yield_now().await;
        }
    }
    set_percent(&c, &s, 0.0).await;
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "of {} requests under weight changes",
        sent.load(Ordering::SeqCst)
    );
    assert!(sent.load(Ordering::SeqCst) >= 1000);
    // Weight 0: the next 1,000 requests all go to production.
    let canary_before = canary.calls();
    assert_eq!(count_canary(&c, &url, 1000, 4).await, 0);
    assert_eq!(canary.calls(), canary_before);
}
