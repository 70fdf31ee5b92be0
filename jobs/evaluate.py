"""Nightly WER evaluation: transcribe fixed evaluation sets, write the WER report, append the
WER history and fail when WER regressed.

Examples:
  # local Ray on this machine
  python jobs/evaluate.py --eval-set clean=data/clean.jsonl.gz --eval-set other=data/other.jsonl.gz \\
      --model model/assets/demo --output out/ --history hist/

  # on a cluster, every night (the exit status fails the job on a regression)
  ray job submit --address http://HEAD:8265 --working-dir . \\
      --runtime-env-json '{"env_vars": {"ZIPSCRIBE_GIT_REVISION": "'$(git rev-parse HEAD)'"}}' -- \\
      python jobs/evaluate.py --eval-set clean=s3://b/eval/clean.jsonl.gz --model s3://b/models/zf-m \\
      --output s3://b/asr-eval --history s3://b/asr-eval --max-regression 0.5

What it does:
  1. transcribes every --eval-set through the same pipeline as jobs/transcribe.py
     (pipeline.run.driver.run with dataset=NAME), once: each batch is encoded once and decoded
     with every --decoding. The transcripts of set NAME land in
     <output>/transcripts/run_id=<run-id>.<NAME>/, one row per cut and decoding (column
     'decoding'; rows carry reference, normalised texts, per-utterance substitutions /
     deletions / insertions and the alignment's errors);
  2. appends one row per (dataset, decoding) to the history table,
     <history>/wer_history/run_id=<run-id>/part-00000.parquet, with the counts, WER, model
     checksum, git revision of the code (when known; set $ZIPSCRIBE_GIT_REVISION where the code
     has no .git, e.g. under ray job submit), wall time, RTFx, the GPU-, node- and CPU core-hours
     the set's run held and their cost (--price / --prices; README: Operating a run): written
     first, so the record of the night stands whatever happens to the report;
  3. writes the report of the whole evaluation, computed by DuckDB queries over the transcripts
     parts: the tables <output>/wer_groups/run_id=<run-id>/ (WER per dataset, speaker and
     duration bucket) and <output>/wer_errors/run_id=<run-id>/ (most frequent substitutions,
     deletions, insertions, per-word statistics), and the documents
     <output>/reports/run_id=<run-id>/summary.md and report.html (plots, including WER over time
     per dataset from the history, and the worst utterances);
  4. compares each (dataset, decoding) with its baseline: the latest earlier run in the history
     with the same dataset, decoding and normaliser that passed the gate (or was the first, or
     was accepted). It prints one verdict line per (dataset, decoding):
        FIRST         no earlier run: passes, and says so
        PASS          WER rose by at most --max-regression absolute points (or fell)
        REGRESSION    WER rose by more, or more cuts failed than in the baseline
                      (beyond --max-new-failures), or RTFx fell by more than
                      --max-rtfx-drop percent (when given)
        NO-REFERENCE  nothing to score (the set has no reference words)
        ACCEPTED      a regression recorded as the new baseline because of --accept
     A failed night stays failed: the next night compares with the last good run again,
     until the cause is fixed or a run with --accept records the new level.

Eval sets (--eval-set NAME=URI, repeatable): NAME is letters, digits, '.', '_', '-' (the set's run id
is <run-id>.<NAME>; run ids start with a letter); URI is a
lhotse CutSet manifest (*.jsonl[.gz], local or s3://) whose supervisions carry the reference
texts (anything jobs/transcribe.py accepts works, but only cuts with references are scored).

Exit status: 0 every check passed; 1 a regression (or a set with nothing to score);
2 bad input (unreadable manifest or model, invalid option); 3 a transcription run did not
finish (a shard failed every attempt): the report is written, the history is not appended.

Rerunning with the same --run-id resumes the transcription (finished shards are skipped) and
replaces the run's own report and history file.

S3 and Ray: as for jobs/transcribe.py (standard AWS chain or --s3-* flags; RAY_ADDRESS or
--ray-address, else a local Ray).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.decoding import METHODS  # noqa: E402
from pipeline.cli import (  # noqa: E402
    INPUT_ERRORS,
    add_decoding_options,
    add_backend_option,
    add_model_options,
    add_longform_options,
    add_operating_options,
    add_plan_options,
    add_resource_options,
    add_s3_options,
    decoding_methods,
    start_job,
    transcribe_config,
)
from pipeline.report import history as hist  # noqa: E402
from pipeline.report.files import build_run_report, write_report  # noqa: E402
from pipeline.report.tables import build_report  # noqa: E402
from pipeline.run.config import TranscribeConfig, check_run_id, new_run_id  # noqa: E402
from pipeline.run.driver import run  # noqa: E402
from pipeline.run.summary import RunSummary, format_summary  # noqa: E402

EXIT_OK, EXIT_REGRESSION, EXIT_INPUT, EXIT_INCOMPLETE = 0, 1, 2, 3
DEFAULT_MAX_REGRESSION = 0.5
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

log = logging.getLogger("zipscribe.evaluate")


def eval_set(text: str) -> tuple[str, str]:
    """``NAME=URI`` -> ``(NAME, URI)`` (argparse type)."""
    name, sep, uri = text.partition("=")
    if not sep or not uri:
        raise argparse.ArgumentTypeError(f"expected NAME=MANIFEST_URI, got {text!r}")
    if not _NAME.fullmatch(name) or ".." in name:
        raise argparse.ArgumentTypeError(f"invalid eval-set name {name!r}: use 1-64 letters, digits, '.', '_', '-'")
    return name, uri


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobs/evaluate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--eval-set", action="append", required=True, type=eval_set, metavar="NAME=URI",
                    help="evaluation set: a name and its manifest with references (repeatable)")
    io.add_argument("--model", required=True, metavar="DIR", help="model directory (local or s3://)")
    io.add_argument("--output", required=True, metavar="URI", help="output root for transcripts and the report (local or s3://)")
    io.add_argument("--history", required=True, metavar="URI",
                    help="history root: rows go to <history>/wer_history/ (local or s3://; may equal --output)")
    io.add_argument("--run-id", default=None,
                    help="evaluation run id (default: eval-<UTC timestamp>-<random>); reuse it to resume")
    add_plan_options(io)

    gate = p.add_argument_group("regression gate")
    gate.add_argument("--max-regression", type=float, default=DEFAULT_MAX_REGRESSION, metavar="ABS_POINTS",
                      help="largest tolerated WER increase over the baseline, in absolute percentage points "
                           f"(0.5 = 10.0%% -> 10.5%% still passes; default {DEFAULT_MAX_REGRESSION})")
    gate.add_argument("--max-new-failures", type=int, default=0, metavar="N",
                      help="tolerated increase in cuts with status='error' over the baseline (default 0; -1 = not gated)")
    gate.add_argument("--max-rtfx-drop", type=float, default=None, metavar="PCT",
                      help="also fail when the set's end-to-end RTFx fell more than PCT percent below the baseline's "
                           "(20: 100x -> 79x fails); RTFx depends on the cluster and its load, so leave a margin above "
                           "the nightly cluster's run-to-run noise (default: speed is not gated)")
    gate.add_argument("--accept", action="store_true",
                      help="record this run as the new baseline even where it regressed (verdict ACCEPTED, exit 0)")

    dec = p.add_argument_group("decoding and scoring")
    dec.add_argument("--decoding", action="append", default=None, choices=("auto",) + METHODS,
                     help="decoding method, repeatable: each set is encoded once and decoded with every method; each "
                          "(set, method) gets its own report tables and history row (default: auto = "
                          "attention-rescoring for CTC + attention-decoder models, else transducer-beam, else ctc-beam)")
    add_decoding_options(dec)
    dec.add_argument("--worst", type=int, default=20, metavar="N", help="worst utterances shown in the report (default 20)")

    add_model_options(p)
    add_backend_option(p)
    add_resource_options(p, "resources and batching (as jobs/transcribe.py)")
    add_longform_options(p)
    add_operating_options(p)
    add_s3_options(p)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def eval_set_config(args: argparse.Namespace, run_id: str, name: str, uri: str, methods: Sequence[str]) -> TranscribeConfig:
    """The driver configuration of one eval set with every decoding method: exactly what
    jobs/transcribe.py would run with those --decoding options."""
    return transcribe_config(
        args, methods, manifest=[uri], model=args.model, output=args.output, run_id=f"{run_id}.{name}",
        dataset=name, progress=args.progress,
    )


def evaluate(args: argparse.Namespace) -> int:
    names = [n for n, _ in args.eval_set]
    if len(set(names)) != len(names):
        raise ValueError(f"eval-set names must be unique, got {names}")
    methods = decoding_methods(args.decoding)
    run_id = check_run_id(args.run_id or new_run_id("eval"))
    git_rev = hist.git_revision()

    summaries: list[RunSummary] = []
    facts: dict[tuple[str, str], hist.RunFacts] = {}
    for name, uri in args.eval_set:
        log.info("evaluating %s (%s) with decoding %s", name, uri, ", ".join(methods))
        summary = run(eval_set_config(args, run_id, name, uri, methods))
        print(format_summary(summary), flush=True)
        summaries.append(summary)
        for label in summary.decodings:  # wall time, RTFx, resources and cost are the set's, shared by its decodings
            facts[(name, label)] = hist.RunFacts.from_summary(summary, args.model)

    started = time.perf_counter()
    created_at = datetime.now(timezone.utc)
    report = build_run_report([s.transcripts_uri for s in summaries], run_id=run_id, normalizer=args.normalizer,
                              created_at=created_at, worst_n=args.worst, require_references=False)
    if report is None:  # no part at all (every shard failed): an empty report, and exit 3 below
        report = build_report(pa.table({"cut_id": pa.array([], pa.string())}), run_id=run_id,
                              normalizer=args.normalizer, created_at=created_at)
    history = hist.read_history(args.history)
    current = hist.history_rows(report.table, facts, run_id=run_id, created_at=created_at, git_rev=git_rev)
    max_new_failures = None if args.max_new_failures < 0 else args.max_new_failures
    verdicts = hist.compare(current, history, max_regression=args.max_regression, max_new_failures=max_new_failures,
                            accept=args.accept, max_rtfx_drop=args.max_rtfx_drop)
    current = hist.history_rows(report.table, facts, run_id=run_id, created_at=created_at, git_rev=git_rev,
                                verdicts=verdicts)
    keys = set(facts)
    earlier = [r for r in history.to_pylist() if (r["dataset"], r["decoding"]) in keys and r["run_id"] != run_id]
    report.history = pa.concat_tables([pa.Table.from_pylist(earlier, schema=hist.HISTORY_SCHEMA), current])
    report.verdicts = verdicts

    incomplete = [s.run_id for s in summaries if s.shards_failed]
    written = None
    if not incomplete:  # the history row first: the record of the night, whatever happens to the report
        written = hist.append_history(args.history, current)
    try:
        uris = write_report(report, args.output)
        shown = uris.get("report.html") or uris["wer_groups"]
        print(f"report: {shown} (and the report's other files beside it)")
    except Exception as exc:  # noqa: BLE001 - the report is the evaluation's account, not its outcome
        log.error("the WER report of %s could not be written (%s: %s); the history and the verdicts stand", run_id,
                  type(exc).__name__, exc)
    if incomplete:
        print(hist.format_verdicts(verdicts))
        print(f"error: transcription incomplete in {', '.join(incomplete)} (shards failed every attempt); "
              "history not appended", file=sys.stderr)
        return EXIT_INCOMPLETE
    log.info("history row(s) appended to %s; report and history took %.1f s", written, time.perf_counter() - started)
    print(f"history: {written}")
    print(hist.format_verdicts(verdicts), flush=True)
    failing = [v for v in verdicts if v.failing]
    if failing:
        print(f"error: WER regression gate failed for {', '.join(f'{v.dataset} [{v.decoding}]' for v in failing)}",
              file=sys.stderr)
        return EXIT_REGRESSION
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    start_job(args)
    try:
        return evaluate(args)
    except INPUT_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
