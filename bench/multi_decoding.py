"""One evaluation with three decoding methods against three evaluations of one method each.

    python bench/multi_decoding.py                     # 60 held-out demo sentences, 2 repeats
    python bench/multi_decoding.py --utts 120 --repeats 3

Both sides run ``jobs/evaluate.py`` as a user would (local Ray, the shipped demo model, the
demo corpus's held-out test sentences spoken by espeak-ng): (A) once with ``--decoding
ctc-greedy --decoding ctc-beam --decoding attention-rescoring``; (B) three times, one method
each. Repeats alternate A and B; printed: the wall time of each side per repeat, the medians and
their ratio, and the model actors' stage seconds (features, encoder, decoding) summed over the
side's runs, from the run summaries. Each side's WER per method is printed too: they must be
the same (the texts are).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "jobs"))

METHODS = ("ctc-greedy", "ctc-beam", "attention-rescoring")


def evaluate(manifest: Path, out: Path, run_id: str, methods: tuple[str, ...], env: dict[str, str]) -> dict:
    args = [sys.executable, "jobs/evaluate.py", "--eval-set", f"test={manifest}", "--model",
            str(REPO / "model" / "assets" / "demo"), "--output", str(out), "--history", str(out), "--run-id", run_id,
            "--no-progress"]
    for m in methods:
        args += ["--decoding", m]
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    stages: dict[str, float] = {}
    for summary in (out / "runs").glob(f"{run_id}.*/summary.json"):
        for k, v in json.loads(summary.read_text())["stage_seconds"].items():
            stages[k] = stages.get(k, 0.0) + v
    import pyarrow.parquet as pq

    report = pq.read_table(out / "wer_groups" / f"run_id={run_id}" / "part-00000.parquet").to_pylist()
    wer = {g["decoding"].split()[0]: round(100 * g["wer"], 2) for g in report if g["group_by"] == "all"}
    return {"wall": wall, "stages": stages, "wer": wer}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utts", type=int, default=60)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    import demo as demo_job

    with tempfile.TemporaryDirectory(prefix="multi-decoding-") as tmp:
        root = Path(tmp)
        manifest = demo_job.ensure_data(root / "data", args.utts)
        env = dict(os.environ, RAY_AUTH_MODE="disabled", ZIPSCRIBE_CACHE=str(root / "cache"))
        env.pop("RAY_ADDRESS", None)
        walls: dict[str, list[float]] = {"A": [], "B": []}
        for r in range(args.repeats):
            one = evaluate(manifest, root / f"a{r}", f"a{r}", METHODS, env)
            walls["A"].append(one["wall"])
            print(json.dumps({"side": "A: one run, 3 decodings", "repeat": r, "wall_s": round(one["wall"], 1),
                              "stage_s": {k: round(v, 1) for k, v in one["stages"].items()}, "wer": one["wer"]}),
                  flush=True)
            total, stages, wers = 0.0, {}, {}
            for m in METHODS:
                res = evaluate(manifest, root / f"b{r}-{m}", f"b{r}-{m}", (m,), env)
                total += res["wall"]
                wers.update(res["wer"])
                for k, v in res["stages"].items():
                    stages[k] = stages.get(k, 0.0) + v
            walls["B"].append(total)
            print(json.dumps({"side": "B: 3 runs, 1 decoding each", "repeat": r, "wall_s": round(total, 1),
                              "stage_s": {k: round(v, 1) for k, v in stages.items()}, "wer": wers}), flush=True)
        a, b = statistics.median(walls["A"]), statistics.median(walls["B"])
        print(f"{args.utts} utterances: one run with 3 decodings {a:.1f} s (min {min(walls['A']):.1f}, max "
              f"{max(walls['A']):.1f}); 3 separate runs {b:.1f} s (min {min(walls['B']):.1f}, max {max(walls['B']):.1f}); "
              f"separate / one = {b / a:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
