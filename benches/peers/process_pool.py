"""Python's ProcessPoolExecutor on 20,000 trivial tasks with 2 workers: the peer of
benches/process.rs (`throughput/map_trivial_20k`, `throughput/submit_all_20k`).

    python3 benches/peers/process_pool.py [--repeats 5]

Prints the median seconds per run and microseconds per task of each variant:
- submit_all: submit 20,000 tasks, then read every result;
- map_chunksize_100: pool.map(fn, range(20000), chunksize=100);
- map_chunksize_1: pool.map with the default chunksize.
"""

import argparse
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

N = 20_000


def trivial(x):
    return x + 1


def submit_all(pool):
    futures = [pool.submit(trivial, i) for i in range(N)]
    return sum(f.result() for f in futures)


def map_chunk(pool, chunksize):
    return sum(pool.map(trivial, range(N), chunksize=chunksize))


def measure(name, fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        total = fn()
        times.append(time.perf_counter() - t0)
        assert total == N * (N + 1) // 2, total
    med = statistics.median(times)
    print(f"{name:20s} median {med * 1e3:9.1f} ms/run  {med / N * 1e6:7.2f} us/task  "
          f"(runs: {', '.join(f'{t * 1e3:.1f}' for t in times)} ms)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with ProcessPoolExecutor(max_workers=2) as pool:
        pool.submit(trivial, 0).result()  # start the workers before timing
        measure("submit_all", lambda: submit_all(pool), args.repeats)
        measure("map_chunksize_100", lambda: map_chunk(pool, 100), args.repeats)
        measure("map_chunksize_1", lambda: map_chunk(pool, 1), args.repeats)


if __name__ == "__main__":
    main()
