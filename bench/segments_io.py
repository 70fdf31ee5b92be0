"""Segments of long recordings against the same audio as one file per cut, on moto's S3.

Builds ``--recordings`` recordings of ``--hours`` each from everyday sentences spoken by espeak-ng
(one sentence per ``--segment`` seconds, padded with silence), in FLAC and MP3; the same samples
also cut into one file per segment (FLAC: the very samples; MP3: each segment encoded on its
own). Everything goes to a moto S3 server behind a proxy that counts the bytes it serves.

For each format, side by side, ``--repeats`` times alternating:

* **segments**: a lhotse manifest of segment cuts (``start`` / ``duration``) of the long files;
* **files**: a manifest of the one-file-per-cut copies;

the real planner makes the shards and the real audio stage loads them
(``pipeline.run.shard_audio.load_shard_audio``, each shard in a fresh process, so no cache
carries over), and the bench prints the bytes the store served against the recordings' bytes, the
audio stage's CPU seconds per audio second, and wall time (median and spread); compares every
segment's samples with the long file decoded whole and sliced (FLAC: bit-identical; MP3: libmpg123
rounds differently by ~1e-8 when read in blocks); and, with ``--transcribe``
(default), has the demo model transcribe both sets' audio once and compares the transcripts
(FLAC: the same samples; MP3: each one-file-per-cut copy is an encoding of its own, so a few
transcripts may differ by a word).

    python bench/segments_io.py                       # 1 recording of 1 h per format, 360 segments
    python bench/segments_io.py --hours 0.1 --repeats 2 --no-transcribe   # a quick look
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

# one case in a fresh process: plan the manifest, load every shard's audio; facts as JSON (and the
# samples, for transcribing, to a .npz when asked)
LOAD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from pipeline.io.ranges import RangeReader
from pipeline.output.paths import RunPaths
from pipeline.plan.frozen import PlanOptions, iter_plan_shards, write_plan
from pipeline.run.shard_audio import load_shard_audio
manifest, out, keep = sys.argv[2], sys.argv[3], sys.argv[4]
paths = RunPaths(out, "bench")
plan = write_plan(paths, PlanOptions(manifests=(manifest,)))
started = time.perf_counter()
facts = {"shards": plan.shards, "cuts": 0, "errors": 0, "fetched": 0, "needed": 0.0, "cpu": 0.0, "audio": 0.0}
samples = {}
reader = RangeReader()
for shard in iter_plan_shards(paths, plan):
    audio = load_shard_audio(shard.items, reader)
    facts["cuts"] += len(shard.items)
    facts["errors"] += sum(e is not None for e in audio.errors)
    facts["fetched"] += audio.bytes_fetched
    facts["needed"] += audio.bytes_needed
    facts["cpu"] += audio.cpu_seconds
    facts["audio"] += sum(d or 0.0 for d in audio.durations)
    if keep != "-":
        samples.update({i.cut_id: s for i, s in zip(shard.items, audio.samples) if s is not None})
facts["wall"] = time.perf_counter() - started
if keep != "-":
    np.savez(keep, **samples)
print(json.dumps(facts))
"""


def build(work: Path, hours: float, recordings: int, segment: float) -> tuple[dict[str, np.ndarray], float]:
    """Spoken sentences, one per ``segment`` seconds: ``{recording id: 16 kHz int16 samples}``."""
    from model.training.corpus import EVERYDAY_LIST, read_sentence_list
    from model.training.evaluation import spoken_sentences

    import soundfile as sf

    per_recording = int(round(hours * 3600 / segment))
    texts = read_sentence_list(EVERYDAY_LIST)
    styles = -(-per_recording * recordings // len(texts))
    utts = spoken_sentences(texts, work / "spoken", styles=styles, seed=7)
    width = int(segment * 16000)
    out = {}
    for r in range(recordings):
        pcm = np.zeros(per_recording * width, dtype=np.int16)
        for k in range(per_recording):
            wave, sr = sf.read(str(utts[r * per_recording + k].audio_path), dtype="int16")
            assert sr == 16000
            wave = wave[:width - 1600]
            pcm[k * width + 800:k * width + 800 + wave.size] = wave  # 50 ms of silence before each sentence
        out[f"rec{r}"] = pcm
    return out, segment


def encode(pcm: np.ndarray, path: Path) -> Path:
    import soundfile as sf

    if path.suffix == ".flac":
        sf.write(str(path), pcm, 16000, subtype="PCM_16")
    else:
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "s16le", "-ar", "16000", "-ac", "1", "-i", "-",
                        "-b:a", "64k", str(path)], input=pcm.tobytes(), check=True)
    return path


def manifest(path: Path, cuts: list[tuple[str, str, float, float, float]]) -> None:
    """cuts: (cut id, source URI, start, duration, recording duration)."""
    with gzip.open(path, "wt") as f:
        for cut_id, source, start, duration, total in cuts:
            rec = {"id": source.rsplit("/", 1)[1], "sources": [{"type": "url", "channels": [0], "source": source}],
                   "sampling_rate": 16000, "num_samples": int(total * 16000), "duration": total, "channel_ids": [0]}
            f.write(json.dumps({"id": cut_id, "start": start, "duration": duration, "channel": 0, "type": "MonoCut",
                                "supervisions": [], "recording": rec}) + "\n")


def run_case(manifest_uri: str, out: Path, env: dict[str, str], keep: str = "-") -> dict:
    proc = subprocess.run([sys.executable, "-c", LOAD, str(REPO), manifest_uri, str(out), keep], capture_output=True,
                          text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def transcripts(npz: str) -> dict[str, str]:
    from model.recognizer import Recognizer

    rec = Recognizer.from_dir(REPO / "model" / "assets" / "demo")
    data = np.load(npz)
    ids = sorted(data.files)
    out = {}
    for k in range(0, len(ids), 16):
        batch = ids[k:k + 16]
        done, _ = rec.transcribe([data[i] for i in batch])
        out.update({i: t.text for i, t in zip(batch, done)})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hours", type=float, default=1.0, help="length of each recording (default 1)")
    p.add_argument("--recordings", type=int, default=1, help="recordings per format (default 1)")
    p.add_argument("--segment", type=float, default=10.0, help="seconds per segment (default 10: 360 per hour)")
    p.add_argument("--formats", default="flac,mp3")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-transcribe", dest="transcribe", action="store_false")
    p.add_argument("--workdir", default=None)
    args = p.parse_args()

    import boto3
    import torch

    from pipeline.io.audio import decode_audio
    from s3_testing import FaultProxy, moto_server

    torch.set_num_threads(2)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="zipscribe-segments-"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    pcms, segment = build(work, args.hours, args.recordings, args.segment)
    print(f"spoke {len(pcms)} x {args.hours} h in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    results = {}
    with moto_server() as url, FaultProxy(url) as proxy:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        client.create_bucket(Bucket="corpus")
        env["AWS_ENDPOINT_URL"] = proxy.url
        for fmt in args.formats.split(","):
            long_cuts, file_cuts, sizes = [], [], {"segments": 0, "files": 0}
            for rid, pcm in pcms.items():
                total = pcm.size / 16000
                path = encode(pcm, work / f"{rid}.{fmt}")
                client.upload_file(str(path), "corpus", f"long/{path.name}")
                sizes["segments"] += path.stat().st_size
                width = int(segment * 16000)
                for k in range(pcm.size // width):
                    cut_id = f"{rid}-{k:05d}"
                    long_cuts.append((cut_id, f"s3://corpus/long/{path.name}", k * segment, segment, total))
                    one = encode(pcm[k * width:(k + 1) * width], work / f"{cut_id}.{fmt}")
                    client.upload_file(str(one), "corpus", f"files/{one.name}")
                    sizes["files"] += one.stat().st_size
                    file_cuts.append((cut_id, f"s3://corpus/files/{one.name}", 0.0, segment, segment))
                    one.unlink()
            for name, cuts in (("segments", long_cuts), ("files", file_cuts)):
                manifest(work / f"{name}-{fmt}.jsonl.gz", cuts)
                client.upload_file(str(work / f"{name}-{fmt}.jsonl.gz"), "corpus", f"{name}-{fmt}.jsonl.gz")
            runs: dict[str, list[dict]] = {"segments": [], "files": []}
            for r in range(args.repeats):
                for name in (("segments", "files") if r % 2 == 0 else ("files", "segments")):
                    prefix = "/corpus/long/" if name == "segments" else "/corpus/files/"
                    before = sum(v for k, v in proxy.body_bytes.items() if k.startswith(prefix))
                    facts = run_case(f"s3://corpus/{name}-{fmt}.jsonl.gz", work / f"out-{name}-{fmt}-{r}", env)
                    facts["served"] = sum(v for k, v in proxy.body_bytes.items() if k.startswith(prefix)) - before
                    runs[name].append(facts)
                    print(fmt, name, json.dumps(facts), file=sys.stderr)
            row = {"format": fmt, "cuts": len(long_cuts), "audio_hours": round(sum(c[3] for c in long_cuts) / 3600, 3)}
            for name in ("segments", "files"):
                cpu = [f["cpu"] / f["audio"] for f in runs[name]]
                wall = [f["wall"] for f in runs[name]]
                row[name] = {"objects_bytes": sizes[name], "served_bytes": runs[name][0]["served"],
                             "served_over_objects": round(runs[name][0]["served"] / sizes[name], 4),
                             "own_count_matches_store": all(f["served"] == f["fetched"] for f in runs[name]),
                             "fetched_over_needed": round(runs[name][0]["fetched"] / runs[name][0]["needed"], 4),
                             "cpu_per_audio_s": [round(statistics.median(cpu), 5), round(min(cpu), 5), round(max(cpu), 5)],
                             "wall_s": [round(statistics.median(wall), 2), round(min(wall), 2), round(max(wall), 2)],
                             "errors": runs[name][0]["errors"], "shards": runs[name][0]["shards"]}
            row["cpu_ratio_segments_over_files"] = round(row["segments"]["cpu_per_audio_s"][0]
                                                         / row["files"]["cpu_per_audio_s"][0], 3)
            # the segments' samples against each long file decoded whole (same decoder) and sliced
            npz = {name: str(work / f"{name}-{fmt}.npz") for name in ("segments", "files")}
            run_case(f"s3://corpus/segments-{fmt}.jsonl.gz", work / f"keep-segments-{fmt}", env, keep=npz["segments"])
            got = np.load(npz["segments"])
            exact, worst = 0, 0.0
            for rid in pcms:
                whole = decode_audio(str(work / f"{rid}.{fmt}")).samples
                width = int(segment * 16000)
                for c in got.files:
                    if c.startswith(rid + "-"):
                        ref = whole[int(c.rsplit("-", 1)[1]) * width:][:width]
                        exact += np.array_equal(got[c], ref)
                        worst = max(worst, float(np.abs(got[c] - ref).max()) if got[c].size == ref.size else 1.0)
            # libmpg123 gives float rounding differences (~1e-8) between one read and many
            row["segments_vs_whole_decode_sliced"] = {"bit_identical": f"{exact}/{len(got.files)}", "max_abs_diff": worst}
            if args.transcribe:
                run_case(f"s3://corpus/files-{fmt}.jsonl.gz", work / f"keep-files-{fmt}", env, keep=npz["files"])
                texts = {name: transcripts(npz[name]) for name in npz}
                same = sum(texts["segments"][c] == texts["files"][c] for c in texts["files"])
                row["transcripts_identical"] = f"{same}/{len(texts['files'])}"
            results[fmt] = row
            print(json.dumps(row), file=sys.stderr)
    print(json.dumps({"hours": args.hours, "recordings": args.recordings, "segment_s": args.segment,
                      "repeats": args.repeats, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
