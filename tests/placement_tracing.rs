//! Every decision is a `tracing` event (target `offload::placement`) with the key, the
//! prediction, the tier and, for timed calls, the actual duration.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use offload::Scheduler;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{Layer, Registry};

/// Placement's default clean streak before a bucket goes inline (`PlacementConfig::clean_streak`).
const CLEAN_STREAK: usize = 4;

#[derive(Default, Debug, Clone)]
struct Seen {
    key: String,
    tier: String,
    predicted: bool,
    actual: bool,
}

impl Visit for Seen {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "key" => self.key = value.to_string(),
            "tier" => self.tier = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let v = format!("{value:?}");
        match field.name() {
            "key" => self.key = v,
            "tier" => self.tier = v,
            "predicted_ns" => self.predicted = true,
            "actual_ns" => self.actual = true,
            _ => {}
        }
    }
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Seen>>>);

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() == "offload::placement" {
            let mut seen = Seen::default();
            event.record(&mut seen);
            self.0.lock().expect("not poisoned").push(seen);
        }
    }
}

#[test]
fn each_decision_is_an_event_with_key_prediction_tier_and_actual() {
    let capture = Capture::default();
    let subscriber = Registry::default().with(capture.clone());
    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .build()
        .expect("scheduler starts");
    let site = sched.site("traced");
    tracing::subscriber::with_default(subscriber, || {
        sched.block_on(async {
            for _ in 0..10 {
                site.call(|| 1 + 1).await.expect("runs");
            }
        })
    });
    let events = capture.0.lock().expect("not poisoned").clone();
    let decisions: Vec<_> = events.iter().filter(|e| !e.tier.is_empty()).collect();
    assert_eq!(decisions.len(), 10, "{events:?}");
    assert!(decisions.iter().all(|e| e.key == "traced" && e.predicted));
    // The first calls of an unknown key went off-core (until a clean streak of
    // CLEAN_STREAK samples) and were timed there.
    let n = CLEAN_STREAK;
    assert!(
        decisions[..n]
            .iter()
            .all(|e| e.tier == "threads" && e.actual)
    );
    // Then inline; an inline bucket times every call until it is confident.
    assert!(
        decisions[n..]
            .iter()
            .all(|e| e.tier == "inline" && e.actual)
    );
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(5));
}
