"""Resources held and cost per audio hour, computed by hand: the union of holds per node, GPU- and
core-hours, restarted actors, node types, the pricing rules and where prices come from."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import pytest

from pipeline.run.cost import Prices, compute_cost, load_prices, parse_price, resolve_prices
from pipeline.run.usage import Held, actor_intervals, measure, node_type, union_seconds
from services import REPO

H = 3600.0


def test_union_counts_overlaps_once_and_gaps_not_at_all():
    assert union_seconds([]) == 0
    assert union_seconds([(0, 10), (5, 20), (30, 40), (40, 45), (50, 50)]) == 35  # [0,20] + [30,45]
    assert union_seconds([(10, 20), (0, 100)]) == 100


def test_measure_by_node_type_and_holder():
    holds = [
        Held("model actor", "n1", 0, 2 * H, cpus=1, gpus=1),
        Held("audio task", "n1", H, 3 * H, cpus=0.5),  # overlaps the actor: the node counts once
        Held("model actor", "n2", 0, H, cpus=1, gpus=0.5),  # half a GPU
        Held("planning task", "n3", 0, 0.5 * H, cpus=2),
        Held("ledger", "n3", 0, 10 * H),  # holds nothing: counts nowhere
    ]
    usage = measure(holds, {"n1": "gpu", "n2": "gpu", "n3": "cpu4"}, waiting_seconds=12.0, stitch_seconds=3.0)
    gpu, cpu = usage.by_node_type["gpu"], usage.by_node_type["cpu4"]
    assert (gpu.nodes, gpu.node_hours, gpu.gpu_hours, gpu.cpu_core_hours) == (2, 4.0, 2.5, 4.0)
    assert (cpu.nodes, cpu.node_hours, cpu.gpu_hours, cpu.cpu_core_hours) == (1, 0.5, 0.0, 1.0)
    assert (usage.node_hours, usage.gpu_hours, usage.cpu_core_hours) == (4.5, 2.5, 5.0)
    assert usage.by_holder["model actor"] == {"holds": 2, "gpu_hours": 2.5, "cpu_core_hours": 3.0}
    assert "ledger" not in usage.by_holder and (usage.waiting_seconds, usage.stitch_seconds) == (12.0, 3.0)
    assert measure([Held("audio task", "gone", 0, H, cpus=1)], {}).by_node_type["unknown"].cpu_core_hours == 1.0


def test_actor_processes_end_where_ray_says_else_at_the_next_process_or_now():
    starts = [{"actor_id": "a", "node_id": "n1", "start": 100.0, "cpus": 1, "gpus": 1},
              {"actor_id": "a", "node_id": "n2", "start": 160.0, "cpus": 1, "gpus": 1},  # restarted on another node
              {"actor_id": "b", "node_id": "n1", "start": 110.0, "cpus": 1, "gpus": 0},
              {"actor_id": "c", "node_id": "n1", "start": 120.0, "cpus": 1, "gpus": 0}]
    held = actor_intervals(starts, [None, 200.0, None, 130.0], now=250.0)
    assert [(h.node_id, h.start, h.end) for h in held] == [("n1", 100, 160), ("n2", 160, 200), ("n1", 110, 250),
                                                            ("n1", 120, 130)]


def test_node_types():
    assert node_type({"Labels": {"ray.io/node-group": "gpu-l4"}, "Resources": {"CPU": 8, "GPU": 1}}) == "gpu-l4"
    assert node_type({"Resources": {"CPU": 0, "node:__internal_head__": 1}}) == "head"
    assert node_type({"Resources": {"CPU": 2, "GPU": 1}}) == "gpu1-cpu2"
    assert node_type({"Labels": {"ray.io/accelerator-type": "L4"}, "Resources": {"CPU": 8, "GPU": 1}}) == "L4x1-cpu8"
    assert node_type({"Resources": {"CPU": 4}}) == "cpu4"


def test_process_start_time_is_when_the_process_started():
    """A child reports its own start: between the parent's clock before and after it spawned it
    (to /proc's 10 ms ticks), not when it got round to asking (after importing the pipeline)."""
    code = "import time; from pipeline.run.usage import process_started_at as p; print(p(), time.time())"
    before = time.time()
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    spawned = time.time()
    started, asked = map(float, child.communicate(timeout=120)[0].split())
    assert before - 0.02 <= started <= spawned + 0.02 and asked > started


def test_cost_rules():
    holds = [Held("model actor", "g1", 0, 2 * H, cpus=1, gpus=1), Held("audio task", "g1", 0, 2 * H, cpus=3),
             Held("audio task", "c1", 0, H, cpus=4), Held("model actor", "p1", 0, H, cpus=8, gpus=8)]
    usage = measure(holds, {"g1": "gpu", "c1": "cpu", "p1": "p5"})  # "gpu", "cpu": priced by resource, not node-h
    prices = Prices({"gpu": 1.0, "cpu": 0.05, "p5": 55.0})
    cost = compute_cost(usage, prices, audio_hours=100.0)
    # gpu: 2 GPU-h x $1 (its node's 8 core-h come with it); cpu: 4 core-h x $0.05; p5: 1 node-h x $55
    assert {k: v["usd"] for k, v in cost.by_node_type.items()} == {"gpu": 2.0, "cpu": pytest.approx(0.2), "p5": 55.0}
    assert cost.total_usd == pytest.approx(57.2) and cost.per_audio_hour_usd == pytest.approx(0.572)
    assert "2 GPU-h x $1" in cost.by_node_type["gpu"]["how"]
    partial = compute_cost(usage, Prices({"cpu": 0.05}), audio_hours=100.0)
    assert partial.unpriced == ("gpu", "p5") and partial.total_usd is None and partial.per_audio_hour_usd is None
    assert compute_cost(usage, prices, audio_hours=0.0).per_audio_hour_usd is None  # nothing transcribed now


def test_prices_from_flags_files_and_the_examples(tmp_path):
    assert parse_price("gpu=1.25") == ("gpu", 1.25)
    for bad in ("gpu", "gpu=x", "=1", "gpu=-1", "gpu=nan", "a b=1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_price(bad)
    examples = resolve_prices()
    assert examples.source.startswith("infra/prices.yaml") and examples.as_of and {"gpu", "cpu"} <= set(examples.rates)
    mine = tmp_path / "prices.yaml"
    mine.write_text("as_of: '2026-12-01'\nprices: {gpu: 2.0, spot-l4: 0.3}\n")
    got = resolve_prices([("gpu", 1.5)], str(mine))
    assert got.rates == {"gpu": 1.5, "spot-l4": 0.3} and got.as_of == "2026-12-01" and "over" in got.source
    (tmp_path / "bad.yaml").write_text("gpu: 1\n")
    with pytest.raises(ValueError, match="no 'prices:' mapping"):
        load_prices(str(tmp_path / "bad.yaml"))
    (tmp_path / "neg.yaml").write_text("prices: {gpu: -2}\n")
    with pytest.raises(ValueError, match=">= 0"):
        load_prices(str(tmp_path / "neg.yaml"))


def test_a_bad_price_is_one_line_and_exit_2(tmp_path):
    args = [sys.executable, "jobs/transcribe.py", "--manifest", "m.jsonl", "--model", "m", "--output", str(tmp_path)]
    bad_flag = subprocess.run(args + ["--price", "gpu=free"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad_flag.returncode == 2 and "expected KIND=USD_PER_HOUR" in bad_flag.stderr
    (tmp_path / "p.yaml").write_text("prices: [1, 2]\n")
    bad_file = subprocess.run(args + ["--prices", str(tmp_path / "p.yaml")], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
    assert bad_file.returncode == 2 and "error: prices file" in bad_file.stderr, bad_file.stderr[-2000:]
    assert "Traceback" not in bad_file.stderr
