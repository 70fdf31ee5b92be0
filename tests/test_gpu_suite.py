"""`bench/gpu_suite.sh --device cpu --quick` runs the GPU check's code paths on the CPU, so the
script a lent GPU machine runs cannot rot between GPU sessions."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from services import REPO


@pytest.mark.needs_tools("espeak-ng")
def test_gpu_suite_quick_on_cpu(tmp_path):
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env["RAY_ADDRESS"] = "local"  # a private Ray, whatever else runs on this machine
    proc = subprocess.run(["bench/gpu_suite.sh", "--device", "cpu", "--quick", "--workdir", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "device: CPU" in out and "throughput (audio seconds per second" in out
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert report["failures"] == []
    # the shipped decoding (the demo model's config.json: beam 32, the LM fused and rescoring, 6 s
    # segments) on the small shape, as an actor runs it
    stage = report["model_stage"]
    assert stage["decoding"] == "attention-rescoring beam=32 scale=3 lm=1 fusion=0.5 bonus=2 segments<=6s"
    assert stage["rtfx"] > 0 and stage["audio_seconds"] > 0 and stage["batch_budget_seconds"] == 160.0
    assert stage["precision"] == "fp32 (auto: fp32 on CPU)" and stage["timing"] == "host clock"
    assert set(stage["stage_seconds"]) == {"features", "encoder", "decoding"} and stage["write_seconds_per_shard"] > 0
    assert f"{stage['rtfx']} x real time" in out
    assert report["syncs"] == {"search": None, "decode": None, "note": "CUDA only"}
    rows = report["throughput"]["small"]
    assert {(r["precision"], r["batch"]) for r in rows} == {(p, b) for p in ("fp32", "bf16", "fp16") for b in (2, 4)}
    assert all(r["audio_s_per_s"] > 0 and abs(sum(r["shares"].values()) - 1) < 0.2 for r in rows)
    assert {(r["precision"], r["used"]) for r in rows} == {("fp32", "fp32"), ("bf16", "bf16"), ("fp16", "fp16")}
    assert [r["method"] for r in report["decoding"]] == ["ctc-greedy", "ctc-beam", "attention-rescoring"]
    e2e = report["end_to_end"]
    assert e2e["devices"] == ["cpu"] and e2e["e2e_rtfx_steady"] > 0 and e2e["job_model_rtfx"] > 0
    assert e2e["precision"] == ["fp32 (auto: fp32 on CPU)"] and e2e["decoding"] == stage["decoding"]
    assert f"RTFx {e2e['e2e_rtfx_steady']} steady" in out


@pytest.mark.parametrize("tests_status,bench_status,expected", [(1, 0, 1), (0, 3, 3), (5, 0, 0), (1, 3, 1)])
def test_gpu_suite_script_always_reaches_the_benchmark(tmp_path, tests_status, bench_status, expected):
    """The wrapper's CUDA branch with a stand-in interpreter (``PYTHON``) whose pytest and benchmark
    end with the given statuses: failing tests never stop the benchmark, and the exit status is
    the tests' when they failed (pytest's 5, nothing collected, is not a failure), else the
    benchmark's."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\n"
                    f'if [ "$1" = "-m" ] && [ "$2" = "pytest" ]; then echo "pytest $*" >&2; exit {tests_status}; fi\n'
                    f'echo "benchmark $*"; exit {bench_status}\n')
    fake.chmod(0o755)
    proc = subprocess.run(["bench/gpu_suite.sh", "--quick"], cwd=REPO, env=dict(os.environ, PYTHON=str(fake)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == expected, proc.stdout + proc.stderr
    assert "pytest -m pytest -q -rs -p no:cacheprovider -m cuda tests/" in proc.stderr
    assert "benchmark bench/gpu_suite.py --quick" in proc.stdout
    assert ("the benchmark runs anyway" in proc.stderr) == (tests_status == 1)
