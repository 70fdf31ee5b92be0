"""WER report at scale: synthetic transcript parts like a real run's, then the report built from
them, timed, with the peak memory of the process that builds it.

    python bench/report_scale.py --rows 1000000            # the target: <= 60 s, <= 1.5 GB
    python bench/report_scale.py --rows 200000 --old       # also the old way (rows as Python objects), side by side

The parts (``--parts`` of them, zstd Parquet with every ``TRANSCRIPT_SCHEMA`` column, token ids
and times included, so the files are as large as a real run's) are written once into
``--workdir``. Each row has a reference of 4-30 words drawn from a 20,000-word vocabulary
(Zipf-like), and a hypothesis made from it by random substitutions, deletions and insertions
(about 10 % errors), with the row's counts and ``word_edits`` stored as the actor stores them;
0.5 % of rows failed, 1 % have no reference; 3 datasets, 2,000 speakers, 1-25 s durations.

Each build runs in a fresh Python process (``--build``) that reports its wall time (for the new
report: building the tables and writing them (``wer_groups``, ``wer_errors``), ``summary.md`` and
``report.html``, as a job does; the old way is timed to its tables only) and its peak
RSS (``ru_maxrss``: the interpreter, pyarrow and DuckDB included). Repeats alternate the builds
(new, old, new, old, ...); the output is one JSON line per build and a summary with the median
and spread. The report's overall counts are checked against the generator's own totals.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _vocabulary(size: int, rng: random.Random) -> list[str]:
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    words: set[str] = set()
    while len(words) < size:
        n = rng.randint(2, 9)
        words.add("".join(rng.choice(letters[: 10 + n * 2]) for _ in range(n)))
    return sorted(words)


def write_parts(directory: Path, rows: int, parts: int, seed: int = 0) -> dict[str, int]:
    """Write ``rows`` synthetic transcript rows as ``parts`` Parquet parts under ``directory``;
    returns the totals the report must reproduce (``utterances``, ``scored``, ``failed``,
    ``no_reference``, ``ref_words``, ``substitutions``, ``deletions``, ``insertions``)."""
    from datetime import datetime, timezone

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.output.records import TRANSCRIPT_SCHEMA

    rng = random.Random(seed)
    vocab = _vocabulary(20000, rng)
    weights = [1.0 / (k + 1) for k in range(len(vocab))]
    cum = list(itertools.accumulate(weights))
    totals = dict(utterances=0, scored=0, failed=0, no_reference=0, ref_words=0, substitutions=0, deletions=0,
                  insertions=0)
    directory.mkdir(parents=True, exist_ok=True)
    per_part = -(-rows // parts)
    made = 0
    for p in range(parts):
        n = min(per_part, rows - made)
        if n <= 0:
            break
        cols: dict[str, list] = {name: [] for name in TRANSCRIPT_SCHEMA.names}
        for i in range(n):
            cut = f"cut-{made + i:08d}"
            ref = rng.choices(vocab, cum_weights=cum, k=rng.randint(4, 30))
            hyp: list[str] = []
            edits = []
            for w in ref:
                x = rng.random()
                if x < 0.04:
                    h = rng.choices(vocab, cum_weights=cum)[0]
                    hyp.append(h)
                    edits.append({"op": "S", "ref": w, "hyp": h})
                elif x < 0.07:
                    edits.append({"op": "D", "ref": w, "hyp": None})
                else:
                    hyp.append(w)
                if rng.random() < 0.03:
                    h = rng.choices(vocab, cum_weights=cum)[0]
                    hyp.append(h)
                    edits.append({"op": "I", "ref": None, "hyp": h})
            status = "error" if rng.random() < 0.005 else "ok"
            has_ref = rng.random() >= 0.01
            s = sum(e["op"] == "S" for e in edits)
            d = sum(e["op"] == "D" for e in edits)
            ins = sum(e["op"] == "I" for e in edits)
            tokens = max(1, int(len(hyp) * 1.5))
            duration = round(rng.uniform(1.0, 25.0), 2)
            scored = status == "ok" and has_ref
            values = dict(
                cut_id=cut, recording_id=cut, source=f"s3://bucket/audio/{cut}.flac", channel=0,
                start_s=0.0, duration=duration, text=" ".join(hyp) if status == "ok" else None,
                token_ids=[rng.randrange(500) for _ in range(tokens)] if status == "ok" else [],
                token_times=[round(k * duration / tokens, 2) for k in range(tokens)] if status == "ok" else [],
                token_confidences=[0.9] * tokens if status == "ok" else [],
                ctc_score=-rng.random() * 50, attention_score=-rng.random() * 50, confidence=rng.random(),
                lm_score=None,  # the decoding below has no word LM
                hotword_score=None, hotwords_matched=None, biased_ref_words=None, biased_errors=None,
                unbiased_ref_words=None, unbiased_errors=None,  # nor hotword lists
                reference=" ".join(ref) if has_ref else None,
                ref_words=len(ref) if scored else None, errors=s + d + ins if scored else None,
                substitutions=s if scored else None, deletions=d if scored else None, insertions=ins if scored else None,
                ref_norm=" ".join(ref) if has_ref else None, hyp_norm=" ".join(hyp) if scored else None,
                word_edits=edits if scored else None, speaker=f"spk{rng.randrange(2000):04d}", language="en",
                dataset=("clean", "other", "noisy")[rng.randrange(3)], status=status,
                error=None if status == "ok" else "unreadable audio", model_id="zipformer", model_sha256="ab" * 32,
                decoding="attention-rescoring beam=8 scale=1", shard_id=f"{p:06d}", worker="host:1",
                processed_at=None,
            )
            for name in TRANSCRIPT_SCHEMA.names:
                cols[name].append(values[name])
            totals["utterances"] += 1
            totals["failed"] += status != "ok"
            totals["no_reference"] += status == "ok" and not has_ref
            if scored:
                totals["scored"] += 1
                totals["ref_words"] += len(ref)
                totals["substitutions"] += s
                totals["deletions"] += d
                totals["insertions"] += ins
        cols["processed_at"] = [datetime(2026, 12, 1, tzinfo=timezone.utc)] * n
        pq.write_table(pa.Table.from_pydict(cols, schema=TRANSCRIPT_SCHEMA), directory / f"part-{p:06d}.parquet",
                       compression="zstd")
        made += n
    return totals


def build(directory: str, how: str, memory_limit: str) -> dict:
    """Build the report of the parts under ``directory`` in this process; wall seconds, peak RSS
    and the overall counts."""
    started = time.perf_counter()
    written = 0.0
    if how == "new":
        from pipeline.report.files import build_run_report, write_report

        report = build_run_report([directory], run_id="scale", normalizer="english", memory_limit=memory_limit)
        table, errors = report.table, report.errors
        built = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="report-out-") as out:
            write_report(report, out)  # wer_groups, wer_errors, summary.md, report.html
        written = time.perf_counter() - built
    else:  # the old way: every row into Python, every utterance aligned again
        sys.path.insert(0, str(REPO / "tests"))
        from datetime import datetime, timezone

        from pipeline.report.files import read_rows
        from reference_report import reference_report

        table, errors, _ = reference_report(read_rows([directory]), "scale", "english", datetime.now(timezone.utc))
    seconds = time.perf_counter() - started
    overall = [g for g in table.to_pylist() if g["group_by"] == "all"][0]
    return {"how": how, "seconds": round(seconds, 2), "of_which_writing_files": round(written, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "groups": table.num_rows, "error_rows": errors.num_rows,
            "overall": {k: overall[k] for k in ("utterances", "scored", "failed", "no_reference", "ref_words",
                                                "substitutions", "deletions", "insertions")}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--parts", type=int, default=0, help="parts to write (default: one per 1,000 rows, as shards)")
    p.add_argument("--repeats", type=int, default=1, help="builds of each kind, alternating")
    p.add_argument("--old", action="store_true", help="also build the report the old way, side by side")
    p.add_argument("--memory-limit", default="1GB", help="DuckDB's memory_limit (default 1GB)")
    p.add_argument("--workdir", default=None, help="where the parts go (default: a temporary directory)")
    p.add_argument("--build", metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument("--how", default="new", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.build:
        print(json.dumps(build(args.build, args.how, args.memory_limit)))
        return 0
    with tempfile.TemporaryDirectory(prefix="report-scale-") as tmp:
        directory = Path(args.workdir or tmp) / "transcripts" / "run_id=scale"
        started = time.perf_counter()
        totals = write_parts(directory, args.rows, args.parts or max(1, args.rows // 1000))
        size = sum(f.stat().st_size for f in directory.glob("*.parquet"))
        print(json.dumps({"rows": args.rows, "parts": len(list(directory.glob("*.parquet"))),
                          "parts_mb": round(size / 2**20, 1), "generate_seconds": round(time.perf_counter() - started, 1)}),
              flush=True)
        kinds = ["new", "old"] if args.old else ["new"]
        results: dict[str, list[dict]] = {k: [] for k in kinds}
        for _ in range(args.repeats):
            for how in kinds:
                out = subprocess.run([sys.executable, __file__, "--build", str(directory), "--how", how,
                                      "--memory-limit", args.memory_limit], capture_output=True, text=True)
                if out.returncode != 0:
                    print(out.stderr[-3000:], file=sys.stderr)
                    return 1
                r = json.loads(out.stdout.strip().splitlines()[-1])
                r["counts_match"] = r["overall"] == totals
                print(json.dumps(r), flush=True)
                results[how].append(r)
        for how, rs in results.items():
            secs = [r["seconds"] for r in rs]
            rss = [r["peak_rss_mb"] for r in rs]
            print(f"{how}: {args.rows} rows: report in {statistics.median(secs):.1f} s (min {min(secs):.1f}, max "
                  f"{max(secs):.1f}), peak RSS {statistics.median(rss):.0f} MB (max {max(rss):.0f}); counts match: "
                  f"{all(r['counts_match'] for r in rs)}")
        return 0 if all(r["counts_match"] for rs in results.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
