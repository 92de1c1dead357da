"""Python's ProcessPoolExecutor on 20,000 trivial tasks with 2 workers: the peer of
benches/process.rs (`throughput/map_trivial_20k`, `throughput/submit_all_20k`).

    python3 benches/peers/process_pool.py [--repeats 5]
    python3 benches/peers/process_pool.py --shared-mib 32 [--repeats 20]

Prints the median seconds per run and microseconds per task of each variant:
- submit_all: submit 20,000 tasks, then read every result;
- map_chunksize_100: pool.map(fn, range(20000), chunksize=100);
- map_chunksize_1: pool.map with the default chunksize.

With --shared-mib M, instead: the peer of `shared_start` in benches/process.rs. One worker
that is replaced after every task (max_tasks_per_child=1) gets M MiB of bytes through the
initializer, and each task reads one byte of every 4 KiB page; prints the median
milliseconds per task (a worker start, its setup and the task) for the spawn and forkserver
start methods (fork cannot recycle workers).
"""

import argparse
import statistics
import time
import multiprocessing
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


_shared = b""


def keep(data):
    global _shared
    _shared = data


def touch(_):
    return sum(_shared[::4096])


def shared_start(mib, repeats):
    data = b"\x01" * (mib << 20)
    pages = len(data) // 4096
    for method in ("spawn", "forkserver"):
        ctx = multiprocessing.get_context(method)
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx, max_tasks_per_child=1,
                                 initializer=keep, initargs=(data,)) as pool:
            pool.submit(touch, 0).result()  # warm up (the forkserver itself starts here)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                assert pool.submit(touch, 0).result() == pages
                times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"shared_start_{mib}mib_{method:10s} median {med * 1e3:8.2f} ms/task "
              f"(runs: {', '.join(f'{t * 1e3:.1f}' for t in times)} ms)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shared-mib", type=int, default=0)
    args = ap.parse_args()
    if args.shared_mib:
        shared_start(args.shared_mib, args.repeats)
        return
    with ProcessPoolExecutor(max_workers=2) as pool:
        pool.submit(trivial, 0).result()  # start the workers before timing
        measure("submit_all", lambda: submit_all(pool), args.repeats)
        measure("map_chunksize_100", lambda: map_chunk(pool, 100), args.repeats)
        measure("map_chunksize_1", lambda: map_chunk(pool, 1), args.repeats)


if __name__ == "__main__":
    main()
