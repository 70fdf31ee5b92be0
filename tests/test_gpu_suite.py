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
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "device: CPU" in out and "throughput (audio seconds per second" in out
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    rows = report["throughput"]["small"]
    assert {(r["precision"], r["batch"]) for r in rows} == {(p, b) for p in ("fp32", "bf16", "fp16") for b in (2, 4)}
    assert all(r["audio_s_per_s"] > 0 and abs(sum(r["shares"].values()) - 1) < 0.2 for r in rows)
    assert [r["method"] for r in report["decoding"]] == ["ctc-greedy", "ctc-beam", "attention-rescoring"]
    e2e = report["end_to_end"]
    assert e2e["devices"] == ["cpu"] and e2e["e2e_rtfx_steady"] > 0 and e2e["model_only_rtfx"] > 0
    assert e2e["precision"] == ["fp32 (auto: fp32 on CPU)"]
    assert f"RTFx {e2e['e2e_rtfx_steady']} steady" in out
