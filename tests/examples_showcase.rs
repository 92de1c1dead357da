//! The showcase runs every policy with small settings and writes results.json (a list of objects
//! with the documented fields) and latency.svg. Behaviour only: no figure is compared.

#[allow(dead_code)]
#[path = "../examples/showcase.rs"]
mod showcase;

use std::time::Duration;

#[test]
fn showcase_quick_writes_results_json_with_the_fields() {
    let out = std::env::temp_dir().join(format!("offload-showcase-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let settings = showcase::Settings {
        warmup: Duration::from_millis(200),
        measure: Duration::from_millis(400),
        out: out.clone(),
        progress: false,
        ..showcase::Settings::quick()
    };
    let results = showcase::run(&settings).expect("the showcase runs");
    assert_eq!(results.len(), 3);

    let text = std::fs::read_to_string(out.join("results.json")).expect("results.json written");
    let json: serde_json::Value = serde_json::from_str(&text).expect("results.json is JSON");
    let rows = json.as_array().expect("a list of objects");
    let policies: Vec<&str> = rows
        .iter()
        .map(|r| r["policy"].as_str().expect("policy is a string"))
        .collect();
    assert_eq!(policies, ["inline", "offload", "adaptive"]);
    for r in rows {
        for field in [
            "echo_p50_us",
            "echo_p99_us",
            "echo_p999_us",
            "compute_count",
        ] {
            assert!(r[field].is_u64(), "{field} in {r}");
        }
        assert!(r["compute_rps"].is_f64(), "compute_rps in {r}");
        assert!(
            r["echo_count"].as_u64() > Some(0),
            "echo replies measured: {r}"
        );
        assert!(
            r["compute_count"].as_u64() > Some(0),
            "compute replies measured: {r}"
        );
        assert_eq!(
            r["errors"].as_u64(),
            Some(0),
            "no wrong or late replies: {r}"
        );
        assert!(r["tier_counts"].is_object(), "tier_counts in {r}");
    }
    // Each fixed policy placed every call where it says.
    assert_eq!(rows[0]["tier_counts"]["threads"].as_u64(), Some(0));
    assert_eq!(rows[1]["tier_counts"]["inline"].as_u64(), Some(0));

    let svg = std::fs::read_to_string(out.join("latency.svg")).expect("latency.svg written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for p in ["inline", "offload", "adaptive"] {
        assert!(svg.contains(p), "the chart names {p}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn showcase_flood_phase_sheds_the_flood_and_writes_flood_json() {
    let out = std::env::temp_dir().join(format!("offload-showcase-flood-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let settings = showcase::Settings {
        policies: vec![showcase::Policy::Offload, showcase::Policy::Adaptive],
        warmup: Duration::from_millis(100),
        flood: Some(Duration::from_millis(300)),
        out: out.clone(),
        progress: false,
        ..showcase::Settings::quick()
    };
    let results = showcase::run_flood(&settings).expect("the flood phase runs");
    assert_eq!(results.len(), 2);
    for r in &results {
        assert!(r.flood_busy >= 1, "the flood's excess is shed: {r:?}");
        assert_eq!(r.errors, 0, "{r:?}");
    }
    let text = std::fs::read_to_string(out.join("flood.json")).expect("flood.json written");
    let json: serde_json::Value = serde_json::from_str(&text).expect("flood.json is JSON");
    for r in json.as_array().expect("a list of objects") {
        for field in [
            "calm_p99_us",
            "flood_p99_us",
            "flood_served",
            "flood_busy",
            "cheap_shed",
        ] {
            assert!(r[field].is_u64(), "{field} in {r}");
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}
