//! Read-only data given once to every worker: large data is one sealed memory file that all
//! workers (replacements included) map, so they share its pages; a file's bytes arrive as
//! they were at `build`; decoded values may borrow from the mapping; small data stays in the
//! setup frame; a mapping the memory cap cannot hold is a clear pool error.

mod process_support;

use std::collections::{HashMap, HashSet};

use offload::{AnyRemoteFn, ProcessPool, RemoteFn, ShutdownMode};
use process_support::{call, check, outcome, rt, submit};

/// What a worker sees of its shared-data mapping in `/proc/self/smaps`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Mapping {
    pid: u32,
    inode: u64,
    perms: String,
    rss_kb: u64,
    pss_kb: u64,
}

/// The worker's mapping of the pool's memory file, if it has one.
fn mapping() -> Option<Mapping> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut found: Option<Mapping> = None;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range perms offset dev inode path.
            if found.is_some() {
                return found;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 6 && f[5].contains("memfd:offload-shared") {
                found = Some(Mapping {
                    pid: std::process::id(),
                    inode: f[4].parse().unwrap_or(0),
                    perms: f[1].to_string(),
                    rss_kb: 0,
                    pss_kb: 0,
                });
            }
        } else if let Some(m) = found.as_mut() {
            let kb = || {
                line.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("Rss:") {
                m.rss_kb = kb();
            } else if line.starts_with("Pss:") {
                m.pss_kb = kb();
            }
        }
    }
    found
}

/// A checksum every side can compute.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Touches every byte of the shared data, then reports the mapping and the checksum.
static INSPECT: RemoteFn<(), (Option<Mapping>, u64, usize)> = RemoteFn::new("inspect", |()| {
    let bytes = offload::shared_bytes().unwrap_or_default();
    let sum = checksum(bytes);
    // Give the other worker a chance at the next task.
    std::thread::sleep(std::time::Duration::from_millis(2));
    (mapping(), sum, bytes.len())
});

static SUM_DECODED: RemoteFn<(), u64> = RemoteFn::new("sum_decoded", |()| {
    offload::shared::<Vec<u64>>()
        .map(|v| v.iter().sum())
        .unwrap_or(u64::MAX)
});

/// Decodes the shared data as borrowed strings and counts those whose bytes lie inside the
/// shared data itself (not copied).
static BORROWED: RemoteFn<(), (usize, usize)> = RemoteFn::new("borrowed", |()| {
    let Ok(bytes) = offload::shared_bytes() else {
        return (0, 0);
    };
    let range = bytes.as_ptr_range();
    let Ok(words) = offload::shared::<Vec<&'static str>>() else {
        return (0, 0);
    };
    let inside = words.iter().filter(|w| range.contains(&w.as_ptr())).count();
    (words.len(), inside)
});

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn large_data_is_one_mapping_that_every_worker_shares() -> Result<(), String> {
    let data: Vec<u64> = (0..1_000_000u64)
        .map(|i| i * 2_654_435_761 % 1_000_003)
        .collect();
    let expected_sum: u64 = data.iter().sum();
    let encoded = postcard::to_allocvec(&data).map_err(err)?;
    rt().block_on(async {
        // A frame limit far under the data: it cannot be travelling in the setup frame.
        let pool = ProcessPool::builder()
            .workers(2)
            .max_frame_size(1 << 20)
            .shared_data(&data)
            .build()
            .map_err(err)?;
        let sum = outcome(&pool, &SUM_DECODED, ()).await?;
        check(sum.as_ref().ok() == Some(&expected_sum), || {
            format!("decoded sum {sum:?}")
        })?;
        // Until both workers report a mapping whose pages the other maps too (Pss about half
        // of Rss once both touched every page).
        let mut seen: HashMap<u32, Mapping> = HashMap::new();
        let mut halved: HashSet<u32> = HashSet::new();
        for _ in 0..400 {
            let hs = [
                submit(&pool, &INSPECT, ()).await?,
                submit(&pool, &INSPECT, ()).await?,
            ];
            for h in hs {
                let (m, sum, len) = h.await.map_err(err)?;
                check(len == encoded.len(), || format!("{len} bytes seen"))?;
                check(sum == checksum(&encoded), || "another checksum".into())?;
                let m = m.ok_or("no memfd:offload-shared mapping in the worker")?;
                check(m.perms.starts_with('r') && !m.perms.contains('w'), || {
                    format!("a read-only mapping expected: {m:?}")
                })?;
                if m.rss_kb > 0 && m.pss_kb * 4 <= m.rss_kb * 3 {
                    halved.insert(m.pid);
                }
                seen.insert(m.pid, m);
            }
            if halved.len() == 2 {
                break;
            }
        }
        check(seen.len() == 2, || format!("workers seen: {seen:?}"))?;
        let inodes: HashSet<u64> = seen.values().map(|m| m.inode).collect();
        check(inodes.len() == 1, || format!("one file expected: {seen:?}"))?;
        check(halved.len() == 2, || {
            format!("both workers should share the pages: {seen:?}")
        })?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

fn replacement_workers_map_the_same_file() -> Result<(), String> {
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    rt().block_on(async {
        let pool = ProcessPool::builder()
            .workers(1)
            .max_tasks_per_worker(1)
            .shared_bytes(bytes.clone())
            .build()
            .map_err(err)?;
        let mut pids = HashSet::new();
        let mut inodes = HashSet::new();
        for _ in 0..3 {
            let (m, sum, _) = call(&pool, &INSPECT, ()).await?;
            check(sum == checksum(&bytes), || "another checksum".into())?;
            let m = m.ok_or("no mapping")?;
            pids.insert(m.pid);
            inodes.insert(m.inode);
        }
        check(pids.len() == 3, || {
            format!("three workers expected: {pids:?}")
        })?;
        check(inodes.len() == 1, || {
            format!("one file expected: {inodes:?}")
        })?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

fn a_shared_file_arrives_as_it_was_at_build() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("offload-shared-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(err)?;
    let path = dir.join("table.bin");
    let contents: Vec<u8> = (0..500_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&path, &contents).map_err(err)?;
    let r = rt().block_on(async {
        let pool = ProcessPool::builder()
            .workers(1)
            .shared_file(&path)
            .build()
            .map_err(err)?;
        // Changed on disk after build: the workers keep the copy taken at build.
        std::fs::write(&path, b"changed").map_err(err)?;
        let (m, sum, len) = call(&pool, &INSPECT, ()).await?;
        check(len == contents.len() && sum == checksum(&contents), || {
            format!("{len} bytes, another checksum")
        })?;
        check(m.is_some(), || "a file is always mapped".into())?;
        pool.shutdown(ShutdownMode::Drain).await;
        // A file that is not there fails the build, naming it.
        let missing = dir.join("missing.bin");
        let e = ProcessPool::builder()
            .workers(1)
            .shared_file(&missing)
            .build()
            .expect_err("no such file");
        check(e.to_string().contains("missing.bin"), || e.to_string())?;
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn small_data_travels_inline_unless_the_threshold_says_otherwise() -> Result<(), String> {
    rt().block_on(async {
        for (threshold, mapped) in [(None, false), (Some(0), true)] {
            let mut b = ProcessPool::builder();
            b.workers(1).shared_bytes(b"tiny".to_vec());
            if let Some(t) = threshold {
                b.shared_map_threshold(t);
            }
            let pool = b.build().map_err(err)?;
            let (m, sum, len) = call(&pool, &INSPECT, ()).await?;
            check(len == 4 && sum == checksum(b"tiny"), || {
                format!("{len} bytes")
            })?;
            check(m.is_some() == mapped, || {
                format!("threshold {threshold:?}: mapping {m:?}")
            })?;
            pool.shutdown(ShutdownMode::Drain).await;
        }
        Ok(())
    })
}

fn decoded_values_borrow_from_the_mapping() -> Result<(), String> {
    let words: Vec<String> = (0..20_000).map(|i| format!("word-{i:05}")).collect();
    rt().block_on(async {
        let pool = ProcessPool::builder()
            .workers(1)
            .shared_data(&words)
            .build()
            .map_err(err)?;
        let (n, inside) = call(&pool, &BORROWED, ()).await?;
        check(n == words.len() && inside == n, || {
            format!("{n} words decoded, {inside} borrowed from the shared bytes")
        })?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

fn a_mapping_over_the_memory_cap_is_a_clear_pool_error() -> Result<(), String> {
    rt().block_on(async {
        let pool = ProcessPool::builder()
            .workers(1)
            .memory_limit(160 << 20)
            .shared_bytes(vec![7u8; 192 << 20])
            .build()
            .map_err(err)?;
        let e = outcome(&pool, &INSPECT, ())
            .await?
            .expect_err("no worker can map the data");
        check(e.kind() == offload::ErrorKind::Pool, || {
            format!("a pool error expected: {e}")
        })?;
        check(
            e.to_string().contains("could not map the shared data"),
            || e.to_string(),
        )?;
        pool.shutdown(ShutdownMode::Cancel).await;
        Ok(())
    })
}

/// Descriptors of this process that point at a pool's memory file.
fn shared_files_open_here() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|l| l.to_string_lossy().contains("memfd:offload-shared"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

fn the_pool_closes_its_file_when_dropped() -> Result<(), String> {
    let before = shared_files_open_here();
    rt().block_on(async {
        let pool = ProcessPool::builder()
            .workers(1)
            .shared_bytes(vec![1u8; 1 << 20])
            .build()
            .map_err(err)?;
        check(shared_files_open_here() == before + 1, || {
            "the pool holds its file".into()
        })?;
        call(&pool, &INSPECT, ()).await?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok::<_, String>(())
    })?;
    // The slot threads let go of the pool's state as they end.
    for _ in 0..200 {
        if shared_files_open_here() == before {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(format!(
        "{} memory files still open after the pool ended",
        shared_files_open_here() - before
    ))
}

const FUNCTIONS: &[&'static dyn AnyRemoteFn] = &[&INSPECT, &SUM_DECODED, &BORROWED];

fn main() {
    offload::init(FUNCTIONS);
    process_support::run(&[
        (
            "large_data_is_one_mapping_that_every_worker_shares",
            large_data_is_one_mapping_that_every_worker_shares,
        ),
        (
            "replacement_workers_map_the_same_file",
            replacement_workers_map_the_same_file,
        ),
        (
            "a_shared_file_arrives_as_it_was_at_build",
            a_shared_file_arrives_as_it_was_at_build,
        ),
        (
            "small_data_travels_inline_unless_the_threshold_says_otherwise",
            small_data_travels_inline_unless_the_threshold_says_otherwise,
        ),
        (
            "decoded_values_borrow_from_the_mapping",
            decoded_values_borrow_from_the_mapping,
        ),
        (
            "a_mapping_over_the_memory_cap_is_a_clear_pool_error",
            a_mapping_over_the_memory_cap_is_a_clear_pool_error,
        ),
        (
            "the_pool_closes_its_file_when_dropped",
            the_pool_closes_its_file_when_dropped,
        ),
    ]);
}
