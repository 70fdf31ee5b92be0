"""The zipscribe demo (`make demo`): synthetic test speech in, transcripts and a WER report out.

Steps:
  1. Speak the first --utts everyday sentences (WordNet examples, fortune files: sentences people
     wrote, not the corpus's templates) of the demo model's held-out test split with espeak-ng
     (jobs/make_synthetic_corpus.py with the corpus options of model/assets/demo/MODEL_CARD.md;
     fresh voices), unless --data already holds them. The model never heard these sentences.
  2. Run the product: `python jobs/transcribe.py` on a local Ray with the shipped model
     (model/assets/demo), writing Parquet and the WER report under --output.
  3. Read the Parquet back with DuckDB and print transcripts next to references, the WER, the
     real-time factor and a query to paste into `duckdb`.

Example:
  python jobs/demo.py                      # what `make demo` runs
  python jobs/demo.py --utts 100 --output /tmp/demo-out
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.output.paths import TABLES, RunPaths  # noqa: E402

DEFAULT_MODEL = REPO / "model" / "assets" / "demo"
#: marker files: the demo removes only folders that hold the marker it left when it made them
DATA_MARKER = ".zipscribe-demo-data"
OUTPUT_MARKER = ".zipscribe-demo-output"
#: The corpus options the demo model was trained with (model/assets/demo/MODEL_CARD.md, less the
#: split sizes): with them the demo speaks sentences of that corpus's held-out test split.
CORPUS_ARGS = ("--seed", "0", "--dev-utts", "300", "--text", "natural", "--vocabulary", "10000",
               "--random-fraction", "0.4")


def _corpus_job():
    """jobs/make_synthetic_corpus.py as a module (its plan is the one place the splits are decided)."""
    import importlib.util

    sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location("make_synthetic_corpus", REPO / "jobs" / "make_synthetic_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=8)
def _test_split(n: int) -> tuple[str, ...]:
    msc = _corpus_job()
    args = msc.parse_args(["--out", str(REPO / "demo-data"), *CORPUS_ARGS, "--train-utts", "0", "--test-utts", str(n)])
    return tuple(item["text"] for item in msc.plan(args)["test"])


def held_out_sentences(n: int, offset: int = 0) -> list[str]:
    """Sentences ``offset .. offset + n`` of the demo corpus's test split: never spoken in training
    (the corpus job plans dev and test sentences first, from the same seeded generator)."""
    return list(_test_split(offset + n)[offset:])


def _claim(folder: Path, marker: str, flag: str) -> None:
    """Make ``folder`` the demo's (a new or empty folder gets ``marker``); a folder with other
    files and no marker is someone else's: the demo stops rather than touch it."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise SystemExit(f"error: {flag} {folder} is not a folder the demo can use")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / marker).is_file():
        raise SystemExit(f"error: {flag} {folder} holds files the demo did not make (no {marker} in it): give a new or "
                         "empty folder, or the demo's own")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / marker).touch()


def ensure_data(data: Path, utts: int) -> Path:
    """The demo manifest, synthesising it when missing or smaller than ``utts``, in a folder that
    is the demo's own (:func:`_claim`)."""
    _claim(data, DATA_MARKER, "--data")
    manifest = data / "cuts_test.jsonl.gz"
    info = data / "corpus.json"
    if manifest.is_file() and info.is_file():
        have = json.loads(info.read_text()).get("splits", {}).get("test", {}).get("utterances", 0)
        if have == utts:
            return manifest
    for entry in data.iterdir():  # the demo's own folder: what it made before
        if entry.name != DATA_MARKER:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    print(f"speaking {utts} held-out test sentences with espeak-ng into {data} ...", flush=True)
    # sentences people wrote (not the corpus's templates and random words): about two thirds of the split
    cmd = [sys.executable, str(REPO / "jobs" / "make_synthetic_corpus.py"), "--out", str(data), *CORPUS_ARGS,
           "--train-utts", "0", "--test-utts", str(3 * utts), "--splits", "test", "--only-natural", "--limit", str(utts),
           "--jobs", "2"]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return manifest


def run_transcribe(manifest: Path, model: Path, output: Path, run_id: str, extra: list[str]) -> dict:
    """`jobs/transcribe.py` as a user runs it; returns its summary."""
    cmd = [sys.executable, str(REPO / "jobs" / "transcribe.py"), "--manifest", str(manifest), "--model", str(model),
           "--output", str(output), "--run-id", run_id, "--summary-json", "--no-progress", *extra]
    print("$ " + " ".join(str(c) for c in cmd[1:]).replace(str(REPO) + "/", ""), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"transcribe.py failed with exit status {proc.returncode}")
    out = proc.stdout
    return json.loads(out[out.index("{\n"): out.rindex("}") + 1])


def show(output: Path, run_id: str, summary: dict, rows: int) -> dict:
    """Print transcripts vs references, WER, speed and a DuckDB query; return the numbers."""
    import duckdb

    glob = str(output / "transcripts" / f"run_id={run_id}" / "*.parquet")
    con = duckdb.connect()
    table = con.execute(
        f"SELECT cut_id, reference, text, errors, ref_words FROM read_parquet('{glob}') "
        "WHERE status = 'ok' ORDER BY cut_id LIMIT ?", [rows]).fetchall()
    errors, words, cuts, bad = con.execute(
        f"SELECT sum(errors), sum(ref_words), count(*), count(*) FILTER (WHERE status <> 'ok') FROM read_parquet('{glob}')"
    ).fetchone()
    wer = 100.0 * errors / max(1, words)
    width = shutil.get_terminal_size((120, 20)).columns
    col = max(30, (width - 8) // 2)
    print()
    print(f"{'reference':<{col}}  {'zipscribe':<{col}}  err")
    print("-" * (2 * col + 6))
    for _cut, ref, hyp, err, _n in table:
        r = textwrap.wrap(ref or "", col) or [""]
        h = textwrap.wrap(hyp or "", col) or [""]
        for i in range(max(len(r), len(h))):
            print(f"{r[i] if i < len(r) else '':<{col}}  {h[i] if i < len(h) else '':<{col}}  {err if i == 0 else ''}")
    print("-" * (2 * col + 6))
    print(f"(the first {len(table)} of {cuts} cuts; {bad} error rows; err = word errors in the row)")
    print()
    print(f"WER            {wer:.2f} %  ({errors} errors / {words} reference words, {cuts} cuts)")
    print(f"audio          {summary['audio_seconds']:.1f} s in {summary['wall_seconds']:.1f} s wall")
    print(f"speed          {summary['rtfx']:.1f}x real time for the whole job (Ray start-up included), "
          f"{summary['model_rtfx']:.1f}x in the model")
    print(f"padding        {100 * summary['padding_ratio']:.1f} % of batched audio")
    print(f"output         {output}/  (transcripts/, words/, wer_groups/, wer_errors/: tables partitioned by run_id; "
          f"reports/run_id={run_id}/summary.md and report.html; runs/)")
    print()
    print("Query it yourself (paste into `duckdb` or python -c 'import duckdb; ...'):")
    print(f"  SELECT cut_id, errors, ref_words, text FROM read_parquet('{glob}') ORDER BY errors DESC LIMIT 5;")
    return {"wer": wer, "errors": int(errors), "ref_words": int(words), "cuts": int(cuts), "error_rows": int(bad),
            "rtfx": summary["rtfx"], "model_rtfx": summary["model_rtfx"]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="model directory (default: the shipped demo model)")
    p.add_argument("--data", default="demo-data", help="where the demo audio and manifest live (created if missing)")
    p.add_argument("--output", default="demo-output", help="where transcripts and the WER report go")
    p.add_argument("--utts", type=int, default=60, help="test sentences to speak (default 60, about 3 minutes)")
    p.add_argument("--run-id", default="demo", help="run id; a previous demo run with this id is replaced")
    p.add_argument("--rows", type=int, default=12, help="transcripts to print")
    args, extra = p.parse_known_args(argv)
    t0 = time.time()
    data, output = Path(args.data).absolute(), Path(args.output).absolute()
    try:
        paths = RunPaths(str(output), args.run_id)  # a run id that is not a name is refused here
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    manifest = ensure_data(data, args.utts)
    _claim(output, OUTPUT_MARKER, "--output")
    # a fresh run each time (the demo measures, it does not resume): the run's own folders, in the
    # demo's own output folder, never through a symbolic link
    for stale in (*(paths.table(t) for t in TABLES), paths.reports, os.path.dirname(paths.summary)):
        if os.path.isdir(stale) and not os.path.islink(stale):
            shutil.rmtree(stale)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    summary = run_transcribe(manifest, Path(args.model).resolve(), output, args.run_id, extra)
    numbers = show(output, args.run_id, summary, args.rows)
    print(f"\ndemo finished in {time.time() - t0:.0f} s")
    return numbers


if __name__ == "__main__":
    main()
