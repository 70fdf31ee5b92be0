"""The GPU check: model throughput by shape, precision and batch size, decoding's share of the
encoder's time, and one end-to-end job on one Ray GPU actor, as one table (not a test).

Run it through ``bench/gpu_suite.sh`` (which runs the CUDA tests first) on a machine with a
CUDA GPU; ``--device cpu --quick`` runs the same code paths on the CPU in about a minute (the
test suite does, so this script cannot rot). Needs nothing from outside the machine: audio is
synthesised with espeak-ng and models are random-weight icefall shapes with calibrated CTC heads
(``bench/pipeline_overhead.py``'s builders), so decoding sees trained-model-like posteriors.

1. **Throughput**: for each shape (``medium``, ``large``; ``--quick``: ``small``) and
   precision (fp32, bf16, fp16 autocast), ``Recognizer.transcribe`` on batches of 10 s
   utterances (``--quick``: 2 s) at batch sizes 8 .. 256 (``--quick``: 2, 4), one warm-up then
   the median of ``--runs``; audio seconds per second, stage shares, peak memory. A batch that
   runs out of memory is reported as ``OOM`` and ends that precision's sweep.
2. **Decoding**: each method the model allows, its time as a share of the encoder's, at the
   middle batch size in the default precision.
3. **End to end**: ``jobs/transcribe.py`` on ``--e2e-minutes`` of synthetic speech with one model
   actor (``--gpus-per-actor 1`` on CUDA), against the model alone on the same batches; GPU
   utilisation sampled with ``nvidia-smi`` while the job runs.

Prints a text table on stdout and writes the numbers as JSON to ``--json`` (default
``<workdir>/gpu_suite.json``).

    bench/gpu_suite.sh                       # on a CUDA machine: tests + this, < 8 minutes
    python bench/gpu_suite.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import pipeline_overhead as po  # noqa: E402
from model.decoding import DecodingConfig, available_methods  # noqa: E402
from model.precision import resolve_precision  # noqa: E402
from model.recognizer import Recognizer, StageTimes  # noqa: E402

PRECISIONS = ("fp32", "bf16", "fp16")


def log(message: str) -> None:
    print(f"[gpu_suite] {message}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(rec: Recognizer, waves: list[np.ndarray], runs: int) -> tuple[float, StageTimes]:
    """Median seconds of ``rec.transcribe(waves)`` after one warm-up, and the stage times of that run."""
    rec.transcribe(waves)
    results = []
    for _ in range(runs):
        sync(rec.device)
        start = time.perf_counter()
        _, stages = rec.transcribe(waves)
        sync(rec.device)
        results.append((time.perf_counter() - start, stages))
    results.sort(key=lambda r: r[0])
    return results[len(results) // 2]


def throughput(model_dir: Path, device: torch.device, batch_sizes: Sequence[int], seconds: float,
               runs: int) -> list[dict[str, Any]]:
    rows = []
    rng = np.random.default_rng(0)
    for precision in PRECISIONS:
        rec = Recognizer.from_dir(model_dir, device=device, amp_dtype=precision, rescoring_dtype=precision)
        for n in batch_sizes:
            waves = [(0.05 * rng.standard_normal(int(seconds * 16000))).astype(np.float32) for _ in range(n)]
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                wall, stages = timed(rec, waves, runs)
            except torch.OutOfMemoryError:
                rows.append({"precision": precision, "batch": n, "oom": True})
                log(f"{model_dir.name} {precision} batch {n}: out of memory")
                break
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            s = stages.as_dict()
            rows.append({"precision": precision, "reason": rec.precision.reason, "batch": n,
                         "audio_s_per_s": round(n * seconds / wall, 1), "peak_gib": peak and round(peak, 2),
                         "shares": {k: round(v / wall, 3) for k, v in s.items()}})
            log(f"{model_dir.name} {precision} batch {n}: {n * seconds / wall:.1f} audio-s/s")
        del rec
    return rows


def decoding_shares(model_dir: Path, device: torch.device, batch: int, seconds: float,
                    runs: int, speech: list[np.ndarray]) -> list[dict[str, Any]]:
    """Each method's decoding time as a share of the encoder's, on synthetic speech."""
    waves = [speech[i % len(speech)][: int(seconds * 16000)] for i in range(batch)]
    probe = Recognizer.from_dir(model_dir, device=device)
    rows = []
    for method in available_methods(probe.model):
        rec = Recognizer.from_dir(model_dir, device=device, decoding=DecodingConfig(method=method))
        _, stages = timed(rec, waves, runs)
        rows.append({"method": method, "decoding_over_encoder": round(stages.decoding / stages.encoder, 3),
                     "encoder_s": round(stages.encoder, 4), "decoding_s": round(stages.decoding, 4)})
        log(f"decoding {method}: {stages.decoding / stages.encoder:.2f} x encoder")
    return rows


class GpuSampler:
    """``nvidia-smi`` utilisation and memory every half second while the block runs."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.samples, self._stop = enabled, [], threading.Event()

    def __enter__(self) -> "GpuSampler":
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                util, mem = out.stdout.splitlines()[0].split(",")
                self.samples.append((float(util), float(mem)))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def report(self) -> dict[str, Any]:
        if not self.samples:
            return {}
        utils = [u for u, _ in self.samples]
        return {"gpu_util_mean": round(statistics.mean(utils), 1), "gpu_util_max": max(utils),
                "gpu_mem_max_mib": max(m for _, m in self.samples), "samples": len(utils)}


def end_to_end(args: argparse.Namespace, model_dir: Path, audio_dir: Path, device: torch.device) -> dict[str, Any]:
    batches = po.plan_batches(audio_dir, args.shard_size, args.max_batch_seconds, None)
    waves = [[po.load_samples(item) for item in b.items] for b in batches]
    audio = sum(w.size for ws in waves for w in ws) / 16000
    rec = Recognizer.from_dir(model_dir, device=device)
    rec.transcribe(waves[0])
    sync(device)
    start = time.perf_counter()
    for ws in waves:
        rec.transcribe(ws)
    sync(device)
    model_only = audio / (time.perf_counter() - start)
    del rec
    if device.type == "cuda":
        torch.cuda.empty_cache()
    job_args = argparse.Namespace(max_batch_seconds=args.max_batch_seconds, shard_size=args.shard_size,
                                  max_batch_size=None, decoding="auto", job_timeout=args.job_timeout,
                                  keep_output=False, gpus_per_actor=1 if device.type == "cuda" else 0)
    with GpuSampler(device.type == "cuda") as sampler:
        run = po.end_to_end(job_args, audio_dir, model_dir, args.workdir)
    s = run["summary"]
    return {"audio_seconds": round(audio, 1), "model_only_rtfx": round(model_only, 1),
            "e2e_rtfx_steady": round(run["rtfx_steady"], 1), "e2e_rtfx_with_startup": round(s["rtfx"], 1),
            "first_part_seconds": round(run["first_part_seconds"], 1), "devices": s["devices"],
            "precision": s.get("precision"), "oom_splits": s.get("oom_splits"), **sampler.report()}


def table(report: dict[str, Any]) -> str:
    lines = [f"device: {report['device_name']}  ({report['device']}, torch {report['torch']})", "",
             "throughput (audio seconds per second; stage shares of the batch's wall time; peak GiB)",
             f"{'shape':8} {'prec':5} {'batch':>5} {'audio-s/s':>10} {'feat':>5} {'enc':>5} {'dec':>5} {'peak':>6}"]
    for shape, rows in report["throughput"].items():
        for r in rows:
            if r.get("oom"):
                lines.append(f"{shape:8} {r['precision']:5} {r['batch']:>5} {'OOM':>10}")
                continue
            sh = r["shares"]
            lines.append(f"{shape:8} {r['precision']:5} {r['batch']:>5} {r['audio_s_per_s']:>10.1f} "
                         f"{sh['features']:>5.2f} {sh['encoder']:>5.2f} {sh['decoding']:>5.2f} "
                         f"{'-' if r['peak_gib'] is None else r['peak_gib']:>6}")
    lines += ["", "decoding time / encoder time (synthetic speech, calibrated CTC head)"]
    lines += [f"  {r['method']:22} {r['decoding_over_encoder']:.3f}" for r in report["decoding"]]
    e = report["end_to_end"]
    lines += ["", f"end to end: {e['audio_seconds']} s of audio on {', '.join(e['devices'])}: "
              f"RTFx {e['e2e_rtfx_steady']} steady ({e['e2e_rtfx_with_startup']} with start-up), model alone "
              f"{e['model_only_rtfx']}; first part after {e['first_part_seconds']} s; precision {e['precision']}"
              + (f"; GPU utilisation mean {e['gpu_util_mean']} % (max {e['gpu_util_max']} %), "
                 f"memory max {e['gpu_mem_max_mib']:.0f} MiB" if "gpu_util_mean" in e else "")]
    lines.append(f"suite wall time: {report['wall_seconds']:.0f} s")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small shape, tiny batches, 20 s of speech: the code paths in a minute")
    p.add_argument("--runs", type=int, default=None, help="timed runs per point (default 3; --quick 1)")
    p.add_argument("--e2e-minutes", type=float, default=None, help="speech for the end-to-end job (default 10; --quick 0.3)")
    p.add_argument("--shard-size", type=int, default=None, help="cuts per shard in the job (default 200; --quick 10)")
    p.add_argument("--max-batch-seconds", type=float, default=None, help="job and model-only batches (default 1600 on CUDA, 160 on CPU)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "zipscribe-bench" / "gpu_suite")
    p.add_argument("--json", type=Path, default=None, help="where to write the numbers (default <workdir>/gpu_suite.json)")
    p.add_argument("--job-timeout", type=float, default=600.0)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch here has no CUDA (use --device cpu --quick to check the code paths)")
    quick = args.quick
    args.runs = args.runs or (1 if quick else 3)
    args.shard_size = args.shard_size or (10 if quick else 200)
    args.max_batch_seconds = args.max_batch_seconds or (1600.0 if device.type == "cuda" else 160.0)
    minutes = args.e2e_minutes or (0.3 if quick else 10.0)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if device.type == "cpu":
        torch.set_num_threads(min(4, torch.get_num_threads()))

    audio_dir, utterances = po.ensure_audio(args.workdir, minutes, seed=0, jobs=4)
    speech = [po.decode_audio((audio_dir / u.name).read_bytes()).samples for u in utterances]
    texts = [u.text for u in utterances]
    shapes = ["small"] if quick else ["medium", "large"]
    models = {shape: po.ensure_model(args.workdir, shape, "calibrated", 0, texts, speech[:6])[0] for shape in shapes}
    batch_sizes = [2, 4] if quick else [8, 16, 32, 64, 128, 256]
    seconds = 2.0 if quick else 10.0
    report: dict[str, Any] = {
        "device": str(device), "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "auto_precision": resolve_precision("auto", device).reason,
        "throughput": {shape: throughput(d, device, batch_sizes, seconds, args.runs) for shape, d in models.items()},
    }
    first = models[shapes[0]]
    report["decoding"] = decoding_shares(first, device, batch_sizes[len(batch_sizes) // 2], min(seconds, 8.0),
                                         args.runs, speech)
    report["end_to_end"] = end_to_end(args, first, audio_dir, device)
    report["wall_seconds"] = time.perf_counter() - started
    out = args.json or args.workdir / "gpu_suite.json"
    out.write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"(numbers: {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
