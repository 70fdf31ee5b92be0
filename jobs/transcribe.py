"""Transcribe audio from object storage with a Zipformer model on Ray; write Parquet.

Examples:
  # local Ray on this machine
  python jobs/transcribe.py --manifest data/cuts.jsonl.gz --model model/assets/demo --output out/

  # on a cluster
  ray job submit --address http://HEAD:8265 --working-dir . -- \\
      python jobs/transcribe.py --manifest s3://bucket/cuts.jsonl.gz --model s3://bucket/models/zf-m \\
      --output s3://bucket/asr-out --run-id nightly-2026-11-25

Inputs (--manifest, repeatable):
  *.jsonl / *.jsonl.gz     lhotse CutSet (or RecordingSet) manifest, read lazily; supervision text,
                           speaker and language are carried into the output
  a directory or s3 prefix all audio files below it (wav, flac, mp3, opus, ogg, m4a)
  *.txt / *.lst            one audio URI per line
Audio may be local paths or s3:// objects; it is decoded, mixed (or --channel picked by the
manifest) to mono and resampled to 16 kHz. Unreadable cuts become rows with status='error'.

Model (--model): a directory, local or s3://, with pretrained.pt (or epoch-N.pt), bpe.model or
tokens.txt, and optionally config.json. From S3 it is fetched once per node into
$ZIPSCRIBE_CACHE (default ~/.cache/zipscribe) and checked against the checkpoint's SHA-256.

Output (--output, local or s3://):
  transcripts/run_id=<id>/part-<shard>.parquet   one row per cut (schema in README)
  runs/<id>/summary.json                         counts, audio hours, RTFx, padding, stage times
Exit status: 0 done; 1 some shard failed every attempt; 2 bad input (unreadable manifest or
model, invalid option); 3 cuts with status='error' under --fail-on-error.

Rerunning with the same --output and --run-id resumes: shards whose part exists with the same
fingerprint (manifest shard + model checksum + decoding settings) are skipped, so every cut is
written exactly once.

S3: endpoint, region and credentials come from the standard AWS chain (AWS_ENDPOINT_URL,
AWS_REGION, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance roles) or the flags.
Ray: RAY_ADDRESS / --ray-address selects the cluster; without one a local Ray is started.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.decoding import METHODS, DecodingConfig  # noqa: E402
from model.checkpoint import CheckpointMismatchError  # noqa: E402
from pipeline.driver import TranscribeConfig, format_summary, plan, run  # noqa: E402
from pipeline.manifests import ManifestError  # noqa: E402
from pipeline.storage import StorageError  # noqa: E402

# Bad command-line inputs: reported as one line, no traceback.
INPUT_ERRORS = (ManifestError, StorageError, FileNotFoundError, CheckpointMismatchError, ValueError)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobs/transcribe.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--manifest", action="append", required=True, metavar="URI", help="input manifest, audio prefix/directory or URI list (repeatable)")
    io.add_argument("--model", metavar="DIR", help="model directory (local or s3://); required unless --plan-only")
    io.add_argument("--output", metavar="URI", help="output root (local or s3://); required unless --plan-only")
    io.add_argument("--plan-only", action="store_true",
                    help="dry run: stream the manifest, shard and pack batches, print counts, padding ratio and "
                         "driver peak memory; no Ray, no model, no output")
    io.add_argument("--run-id", default=None, help="run id (default: UTC timestamp + random suffix); reuse it to resume")
    io.add_argument("--dataset", default=None, help="dataset name stored in every row (e.g. the eval set name)")
    io.add_argument("--no-resume", dest="resume", action="store_false", help="redo shards even if their part exists")

    dec = p.add_argument_group("decoding")
    defaults = DecodingConfig()
    dec.add_argument("--decoding", default="auto", choices=("auto",) + METHODS,
                     help="decoding method; auto = attention-rescoring if the model has CTC + attention decoder, "
                          "else transducer-beam, else ctc-beam (default: auto)")
    dec.add_argument("--beam", type=int, default=defaults.beam, help=f"CTC prefix beam size = n-best size (default {defaults.beam})")
    dec.add_argument("--attention-scale", type=float, default=None,
                     help="final = ctc_score + scale * attention_score (icefall convention; default: the model's config.json "
                          f"'decoding' section, else {defaults.attention_scale})")
    dec.add_argument("--transducer-beam", type=int, default=defaults.transducer_beam, help="modified beam search beam (default 4)")
    dec.add_argument("--normalizer", default="english", choices=("english", "none"), help="text normaliser for WER columns")

    res = p.add_argument_group("resources and batching")
    res.add_argument("--num-actors", type=int, default=None, help="transcriber actors (default: one per GPU, else CPUs / cpus-per-actor)")
    res.add_argument("--gpus-per-actor", type=float, default=None, help="GPUs per actor (default 1 if the cluster has GPUs, else 0)")
    res.add_argument("--cpus-per-actor", type=float, default=None, help="CPUs per actor (default 1 with GPUs, else min(4, cluster CPUs))")
    res.add_argument("--max-batch-seconds", type=float, default=160.0, help="padded audio seconds per batch (default 160; ~1000 on a big GPU)")
    res.add_argument("--max-batch-size", type=int, default=None, help="cap on cuts per batch")
    res.add_argument("--shard-size", type=int, default=1000, help="cuts per shard = per Parquet part and unit of retry; larger shards sort durations more finely, so less padding (default 1000)")
    res.add_argument("--shards-in-flight", type=int, default=None, help="outstanding shards (default 2 per actor)")
    res.add_argument("--max-attempts", type=int, default=3, help="tries per shard when actors die (default 3)")
    res.add_argument("--precision", dest="amp_dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                     help="encoder precision (auto: bf16 autocast on CUDA, fp32 on CPU)")
    res.add_argument("--rescoring-precision", dest="rescoring_dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                     help="attention-decoder n-best pass precision (auto: same as --precision). On CPUs with bf16 "
                          "matrix units, bfloat16 cuts rescoring time ~3x at a tiny change in scores")
    res.add_argument("--ray-address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")

    s3 = p.add_argument_group("S3 (optional; default: standard AWS chain)")
    s3.add_argument("--s3-endpoint-url", default=None, help="e.g. http://127.0.0.1:9000 for MinIO (sets AWS_ENDPOINT_URL)")
    s3.add_argument("--s3-region", default=None, help="sets AWS_REGION")

    out = p.add_argument_group("reporting")
    out.add_argument("--no-eta", dest="eta", action="store_false", help="skip the counting pass over the manifest (no ETA)")
    out.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    out.add_argument("--summary-json", action="store_true", help="print the summary as JSON instead of text")
    out.add_argument("--fail-on-error", action="store_true", help="exit with status 3 when any cut ends with status='error'")
    return p


def config_from_args(args: argparse.Namespace) -> TranscribeConfig:
    decoding = {"method": args.decoding, "beam": args.beam, "transducer_beam": args.transducer_beam}
    if args.attention_scale is not None:
        decoding["attention_scale"] = args.attention_scale
    return TranscribeConfig(
        manifest=args.manifest, model=args.model, output=args.output, run_id=args.run_id, dataset=args.dataset,
        decoding=decoding, num_actors=args.num_actors, gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor, max_batch_seconds=args.max_batch_seconds,
        max_batch_size=args.max_batch_size, shard_size=args.shard_size, shards_in_flight=args.shards_in_flight,
        max_attempts=args.max_attempts, resume=args.resume, eta=args.eta, amp_dtype=args.amp_dtype,
        rescoring_dtype=args.rescoring_dtype,
        normalizer=args.normalizer, progress=args.progress, ray_address=args.ray_address,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.s3_endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = args.s3_endpoint_url
    if args.s3_region:
        os.environ["AWS_REGION"] = args.s3_region
    if args.plan_only:
        from dataclasses import asdict

        print(json.dumps(asdict(plan(config_from_args(args))), indent=2))
        return 0
    missing = [flag for flag, value in (("--model", args.model), ("--output", args.output)) if not value]
    if missing:
        build_parser().error(f"the following arguments are required: {', '.join(missing)}")
    try:
        summary = run(config_from_args(args))
    except INPUT_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.summary_json:
        from dataclasses import asdict

        print(json.dumps(asdict(summary), indent=2))
    else:
        print(format_summary(summary))
    if summary.shards_failed:
        return 1
    if args.fail_on_error and summary.cuts_error:
        print(f"error: {summary.cuts_error} cut(s) failed (--fail-on-error)", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
