"""Transcribe audio from object storage with a Zipformer model on Ray; write Parquet.

Examples:
  # local Ray on this machine
  python jobs/transcribe.py --manifest data/cuts.jsonl.gz --model model/assets/demo --output out/

  # on a cluster
  ray job submit --address http://HEAD:8265 --working-dir . -- \\
      python jobs/transcribe.py --manifest s3://bucket/cuts.jsonl.gz --model s3://bucket/models/zf-m \\
      --output s3://bucket/asr-out --run-id nightly-2026-11-25

Inputs (--manifest, repeatable; local or s3://):
  *.jsonl / *.jsonl.gz     lhotse CutSet (or RecordingSet) manifest, read lazily; supervision text,
                           speaker and language are carried into the output
  a glob of manifests      'cuts.*.jsonl.gz', 's3://b/corpus/**/cuts.*.jsonl.gz' (quote it): every
                           file it matches, in key order
  a lhotse Shar directory  cuts.NNNNNN.jsonl.gz + recording.NNNNNN.tar: audio read from the tars
  a directory or s3 prefix all audio files below it (wav, flac, mp3, opus, ogg, m4a)
  *.txt / *.lst            one audio URI per line
Each input file is planned in a Ray task of its own. Audio may be local paths or s3:// objects;
it is decoded, mixed (or --channel picked by the manifest) to mono and resampled to 16 kHz.
Segments of long recordings (cuts with start/duration) are read by range: each recording once
per shard, not once per cut. Unreadable cuts, and cuts whose durations or headers lie (NaN,
negative, longer than --max-recording-hours, a header claiming more than its file holds), become
rows with status='error'.

Model (--model): a directory, local or s3://: a flat folder with pretrained.pt (or epoch-N.pt),
bpe.model or tokens.txt and optionally config.json; an icefall / Hugging Face repo root (exp/ +
data/lang_bpe_*/); or an icefall exp/ folder with --epoch/--avg/--use-averaged-model as
icefall's decode.py takes them. Check it first: python jobs/inspect_model.py DIR. From S3 only
the files needed are fetched, once per node, into $ZIPSCRIBE_CACHE (default
~/.cache/zipscribe) and checked against the weights' SHA-256. A model that does not load (or
whose tokenizer does not fit) is one line and exit status 2, before any audio is read.

Output (--output, local or s3://):
  transcripts/run_id=<id>/part-<shard>.parquet   one row per cut (schema in README)
  runs/<id>/summary.json                         counts, audio hours, RTFx, padding, stage times, plan, actors
  runs/<id>/plan/                                the frozen plan (summary.json, index, one file per shard)
  words/run_id=<id>/part-<shard>.parquet         one row per word
  wer_groups/run_id=<id>/, wer_errors/run_id=<id>/
                                                 WER report tables, written when the cuts have references
                                                 (manifest supervisions): WER per dataset, speaker and
                                                 duration bucket; word errors
  reports/run_id=<id>/summary.md, report.html    the report's documents (worst utterances, plots)
Each table folder holds run_id=<id>/ partitions of Parquet files and nothing else; the run id is
in the path only (run ids start with a letter).
Exit status: 0 done; 2 bad input (unreadable manifest or model, invalid option, a plan made
with other options, no node a model actor fits on within --resource-timeout, a GPU actor whose
torch has no CUDA); 3 incomplete: shards not done (they failed every attempt, or the run
stopped), or cuts with status='error' under --fail-on-error. A rerun finishes what is missing.

How it runs: the inputs are planned once into shards (content-derived ids) under
<output>/runs/<id>/plan/; then, on Ray Data, each shard is checked (a part with the same
fingerprint means done), its audio fetched and decoded by CPU tasks (--audio-cpus), and
transcribed by a pool of model actors (--num-actors N or MIN:MAX, --gpus-per-actor,
--cpus-per-actor), each shard's part written atomically. Long recordings are stitched last.

Rerunning with the same --output and --run-id resumes: the plan is reused (say --replan after
the inputs changed), shards whose part exists with the same fingerprint (shard contents + model
checksum + decoding settings) are skipped, so every cut is written exactly once.

S3: endpoint, region and credentials come from the standard AWS chain (AWS_ENDPOINT_URL,
AWS_REGION, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance roles) or the flags.
Ray: RAY_ADDRESS / --ray-address selects the cluster; without one, a Ray already started on this
machine (`ray start`) is used, else a private local one is started (--ray-address local: always).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

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
from pipeline.report.files import write_run_report  # noqa: E402
from pipeline.report.markdown import headline_text  # noqa: E402
from pipeline.run.config import TranscribeConfig  # noqa: E402
from pipeline.run.driver import dry_run, run  # noqa: E402
from pipeline.run.summary import format_summary  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobs/transcribe.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--manifest", action="append", required=True, metavar="URI",
                    help="input manifest, glob of manifests, lhotse Shar directory, audio prefix/directory or URI "
                         "list (repeatable)")
    io.add_argument("--model", metavar="DIR", help="model directory (local or s3://); required unless --plan-only")
    io.add_argument("--output", metavar="URI", help="output root (local or s3://); required unless --plan-only")
    io.add_argument("--plan-only", action="store_true",
                    help="dry run: plan the inputs (in local processes), shard and pack batches, print counts, the "
                         "cuts found wrong, padding ratio and driver peak memory; no Ray, no model, no output")
    io.add_argument("--run-id", default=None, help="run id (default: UTC timestamp + random suffix); reuse it to resume")
    io.add_argument("--dataset", default=None,
                    help="dataset name stored in every row (default: each input's own name: cuts_test for "
                         "data/cuts_test.jsonl.gz, the folder for a directory, prefix, Shar directory or glob)")
    add_plan_options(io)

    dec = p.add_argument_group("decoding")
    dec.add_argument("--decoding", action="append", default=None, choices=("auto",) + METHODS,
                     help="decoding method; auto = attention-rescoring if the model has CTC + attention decoder, "
                          "else transducer-beam, else ctc-beam (default: auto). Repeatable: each batch is encoded "
                          "once and decoded with every method given; each cut gets one row per method (column "
                          "'decoding'), all in its shard's part, and the WER report has a table per method")
    add_decoding_options(dec)
    dec.add_argument("--no-wer-report", dest="wer_report", action="store_false",
                     help="do not write the WER report under <output>/wer/ (it is written when cuts have references)")

    add_model_options(p)
    add_backend_option(p)
    add_resource_options(p)
    add_longform_options(p)
    add_operating_options(p)
    add_s3_options(p)

    out = p.add_argument_group("reporting")
    out.add_argument("--no-eta", dest="eta", action="store_false", help="no ETA in the progress bar")
    out.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    out.add_argument("--summary-json", action="store_true", help="print the summary as JSON instead of text")
    out.add_argument("--fail-on-error", action="store_true", help="exit with status 3 when any cut ends with status='error'")
    return p


def config_from_args(args: argparse.Namespace) -> TranscribeConfig:
    return transcribe_config(
        args, decoding_methods(args.decoding), manifest=args.manifest, model=args.model, output=args.output, run_id=args.run_id,
        dataset=args.dataset, eta=args.eta, progress=args.progress,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    start_job(args)
    if not args.plan_only:
        missing = [flag for flag, value in (("--model", args.model), ("--output", args.output)) if not value]
        if missing:
            build_parser().error(f"the following arguments are required: {', '.join(missing)}")
    try:
        if args.plan_only:
            from dataclasses import asdict

            print(json.dumps(asdict(dry_run(config_from_args(args))), indent=2))
            return 0
        summary = run(config_from_args(args))
    except INPUT_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.summary_json:
        from dataclasses import asdict

        print(json.dumps(asdict(summary), indent=2))
    else:
        print(format_summary(summary))
    try:  # the transcripts are written: the report is extra, it never decides the exit status
        report = write_run_report(summary.transcripts_uri, args.output, summary.run_id, args.normalizer) \
            if args.wer_report else None
    except Exception as exc:  # noqa: BLE001
        logging.getLogger("zipscribe.report").error("the WER report of run %s could not be made (%s: %s); the "
                                                    "transcripts are complete", summary.run_id, type(exc).__name__, exc)
        report = None
    if report is not None:
        where = report[1].get("report.html") or report[1]["wer_groups"]
        print(headline_text(report[0]) + f"\nWER report: {where}", file=sys.stderr if args.summary_json else sys.stdout)
    if summary.shards_failed:
        print(f"error: {len(summary.shards_failed)} shard(s) not done ({', '.join(summary.shards_failed[:5])}"
              f"{', ...' if len(summary.shards_failed) > 5 else ''}); rerun with the same --output and --run-id to "
              "finish them", file=sys.stderr)
        reason = summary.stopped or next(iter(summary.shard_errors.values()), "")
        if reason:
            print(f"error: {reason}", file=sys.stderr)
        return 3
    if args.fail_on_error and summary.cuts_error:
        print(f"error: {summary.cuts_error} cut(s) failed (--fail-on-error)", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
