"""Planning a large corpus of many manifests: the driver's memory and CPU, serial against parallel.

Writes ``--files`` synthetic lhotse CutSet manifests of ``--cuts-per-file`` cuts each (durations
drawn like a read-speech corpus: 1-20 s, mean ~7 s; the default is 100 x 100,000 = 10 M cuts) and
plans them, each run in a fresh process, side by side, alternating:

* ``serial``: the units planned one after another in the driver's process
  (``pipeline.plan.units.serial_planner``) -- what planning was before it ran as tasks;
* ``ray``: a local Ray of ``--cpus`` CPUs, each unit planned in a Ray task that writes its own shard
  files (``pipeline.run.planning.ray_planner``, what a run does); the driver merges index rows.

For each: wall time of the planning, peak RSS and CPU seconds of the driver's process (Ray's
workers are other processes), and the driver's CPU per cut with what it implies for a billion
cuts. The two plans are checked to be identical (index, counts). ``--plan-only`` adds the
``jobs/transcribe.py --plan-only`` preview (processes, no Ray).

    python bench/plan_memory.py                                   # 10 M cuts in 100 manifests
    python bench/plan_memory.py --files 10 --cuts-per-file 10000 --repeats 2   # a quick look
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# one planning, in a fresh process: the driver's own peak RSS, CPU and wall, and the plan's facts
PLAN = """
import hashlib, json, resource, shutil, sys, time
sys.path.insert(0, sys.argv[1])
from pipeline.output.paths import RunPaths
from pipeline.plan.frozen import PlanOptions, read_index, write_plan
pattern, out, shard_size, how, cpus = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
shutil.rmtree(out, ignore_errors=True)
options = PlanOptions(manifests=(pattern,), shard_size=shard_size)
init = 0.0
if how == "ray":
    import ray
    from pipeline.run.planning import ray_planner
    t = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": sys.argv[1]}})
    init = time.perf_counter() - t
    planner = ray_planner()
else:
    from pipeline.plan.units import serial_planner as planner
started, cpu = time.perf_counter(), time.process_time()
plan = write_plan(RunPaths(out, "bench"), options, planner)
wall, cpu = time.perf_counter() - started, time.process_time() - cpu
ids = [r["shard_id"] for r in read_index(RunPaths(out, "bench"), plan, ["shard_id"])]
print(json.dumps({"cuts": plan.cuts, "shards": plan.shards, "units": plan.units, "wall_s": round(wall, 2),
                  "ray_init_s": round(init, 2), "driver_cpu_s": round(cpu, 2), "shard_ids_digest": hashlib.sha256("\\n".join(ids).encode()).hexdigest()[:16],
                  "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
if how == "ray":
    ray.shutdown()
shutil.rmtree(out, ignore_errors=True)
"""


def write_manifest(path: Path, first: int, n: int, seed: int) -> None:
    """A CutSet jsonl.gz of ``n`` mono cuts with one supervision each (built as dicts: fast)."""
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt", compresslevel=1) as f:
        for i in range(first, first + n):
            dur = round(min(20.0, max(1.0, rng.gammavariate(3.0, 2.4))), 2)
            rid = f"rec-{i:09d}"
            cut = {
                "id": f"cut-{i:09d}", "start": 0.0, "duration": dur, "channel": 0, "type": "MonoCut",
                "supervisions": [{"id": f"sup-{i:09d}", "recording_id": rid, "start": 0.0, "duration": dur,
                                  "channel": 0, "text": "some words here", "speaker": f"spk-{i % 997}"}],
                "recording": {"id": rid, "sources": [{"type": "url", "channels": [0], "source": f"s3://bucket/audio/{rid}.flac"}],
                              "sampling_rate": 16000, "num_samples": int(dur * 16000), "duration": dur, "channel_ids": [0]},
            }
            f.write(json.dumps(cut) + "\n")
    tmp.rename(path)


def planning(pattern: str, out: Path, shard_size: int, how: str, cpus: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_DISABLE_IMPORT_WARNING="1")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", PLAN, str(REPO), pattern, str(out), str(shard_size), how, str(cpus)],
                          capture_output=True, text=True, check=True, env=env, cwd=str(REPO))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> list[float]:
    return [round(statistics.median(values), 2), round(min(values), 2), round(max(values), 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--cuts-per-file", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--plan-only", action="store_true", help="also time jobs/transcribe.py --plan-only")
    parser.add_argument("--workdir", default="/tmp/zipscribe-plan")
    args = parser.parse_args()
    work = Path(args.workdir) / f"{args.files}x{args.cuts_per_file}"
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.cpus) as pool:
        for fut in [pool.submit(write_manifest, work / f"cuts.{k:06d}.jsonl.gz", k * args.cuts_per_file,
                                args.cuts_per_file, k)
                    for k in range(args.files) if not (work / f"cuts.{k:06d}.jsonl.gz").exists()]:
            fut.result()
    print(f"manifests ready in {time.perf_counter() - t:.0f} s: {work}", file=sys.stderr)
    pattern = str(work / "cuts.*.jsonl.gz")
    runs: dict[str, list[dict]] = {"serial": [], "ray": []}
    for r in range(args.repeats):
        for how in (("serial", "ray") if r % 2 == 0 else ("ray", "serial")):
            runs[how].append(planning(pattern, Path(args.workdir) / f"out-{how}", args.shard_size, how, args.cpus))
            print(how, json.dumps(runs[how][-1]), file=sys.stderr)
    cuts = runs["serial"][0]["cuts"]
    same = len({x["shard_ids_digest"] for x in runs["serial"] + runs["ray"]}) == 1 \
        and len({(x["cuts"], x["shards"]) for x in runs["serial"] + runs["ray"]}) == 1
    result = {"files": args.files, "cuts": cuts, "cpus": args.cpus, "repeats": args.repeats,
              "plans_identical": same}
    for how, rs in runs.items():
        cpu_per_cut = statistics.median(x["driver_cpu_s"] for x in rs) / cuts
        result[how] = {"wall_s": spread([x["wall_s"] for x in rs]),
                       "driver_peak_rss_mb": spread([x["driver_peak_rss_mb"] for x in rs]),
                       "driver_cpu_s": spread([x["driver_cpu_s"] for x in rs]),
                       "driver_cpu_us_per_cut": round(1e6 * cpu_per_cut, 3),
                       "driver_cpu_for_1e9_cuts_h": round(1e9 * cpu_per_cut / 3600, 2),
                       "ray_init_s": spread([x["ray_init_s"] for x in rs])}
    result["parallel_over_serial_wall"] = round(result["ray"]["wall_s"][0] / result["serial"]["wall_s"][0], 3)
    if args.plan_only:
        t = time.perf_counter()
        out = subprocess.run([sys.executable, str(REPO / "jobs" / "transcribe.py"), "--plan-only", "--manifest", pattern,
                              "--shard-size", str(args.shard_size)], capture_output=True, text=True, check=True)
        preview = json.loads(out.stdout)
        result["plan_only"] = {k: preview[k] for k in ("shards", "batches", "padding_ratio", "peak_rss_mb")}
        result["plan_only"]["wall_s"] = round(time.perf_counter() - t, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
