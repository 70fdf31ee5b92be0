"""The code's structure: rooms that follow the data, dependencies that point one way, no
import cycles, no test hooks in product code (read from the source with ``tests/import_graph.py``)."""

from __future__ import annotations

import re
import subprocess
import sys

from import_graph import REPO, cycles, import_graph

#: pipeline's rooms in the order the data flows; a room imports only itself and earlier rooms
ROOMS = ("io", "inputs", "output", "plan", "report", "longform", "run", "cli")


def room(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_cycles(tmp_path):
    """The checker itself: a planted cycle through a function-level import is reported."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.c import g\n")
    (pkg / "c.py").write_text("from .a import x\n")
    (pkg / "d.py").write_text("import pkg.a\n")
    assert cycles(import_graph(tmp_path, ("pkg",))) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_dependencies_point_one_way():
    graph = import_graph()
    backwards = []
    for module, targets in graph.items():
        for target in targets:
            if module.startswith("model") and not target.startswith("model"):
                backwards.append((module, target))  # model/ never needs pipeline/
            elif module.startswith("pipeline.") and target.startswith("pipeline."):
                if room(target) and room(module) and ROOMS.index(room(target)) > ROOMS.index(room(module)):
                    backwards.append((module, target))
    assert backwards == []


def test_model_imports_without_pipeline():
    modules = sorted(m for m in import_graph() if m.startswith("model"))
    code = "import sys; sys.modules['pipeline'] = None\n" + "".join(f"import {m}\n" for m in modules)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_pipeline_top_level_holds_only_its_rooms():
    top = sorted(p.name for p in (REPO / "pipeline").iterdir() if p.name != "__pycache__")
    rooms = sorted(f for f in top if (REPO / "pipeline" / f).is_dir())
    assert sorted(set(top) - set(rooms)) == ["__init__.py", "cli.py"]
    assert sorted(rooms) == sorted(r for r in ROOMS if r != "cli")
    for r in rooms:
        assert (REPO / "pipeline" / r / "__init__.py").is_file(), r


def test_no_test_hooks_in_product_code():
    """No environment switch a test could flip, and no process exit outside the one the product
    needs: a model actor whose CUDA context failed (a sticky error) ends its process so Ray
    restarts it; that exit sits in the handler of DeviceFailure, which only real device errors raise."""
    hooks = re.compile(r"ZIPSCRIBE_TEST_|os\._exit\(")
    found = [(f"{p.relative_to(REPO)}", n) for d in ("model", "pipeline", "jobs") for p in sorted((REPO / d).rglob("*.py"))
             for n, line in enumerate(p.read_text().splitlines(), 1) if hooks.search(line)]
    allowed = []
    for path, n in found:
        lines = (REPO / path).read_text().splitlines()
        if path == "pipeline/run/model_stage.py" and "os._exit(70)" in lines[n - 1] and \
                any("except DeviceFailure" in ln for ln in lines[max(0, n - 6):n]):
            allowed.append((path, n))
    assert [f for f in found if f not in allowed] == []
    assert len(allowed) <= 1


def test_one_wav_header_parser():
    """RIFF headers are parsed only in pipeline/io/wav.py (the range reader writes, not parses,
    the small WAV of a window)."""
    riff = [str(p.relative_to(REPO)) for d in ("model", "pipeline") for p in (REPO / d).rglob("*.py")
            if re.search(r"b\"RIFF\"|b'RIFF'", p.read_text()) and p.name != "wav.py"]
    assert riff == ["pipeline/io/ranges.py"]
    assert "parse_wav_header" in (REPO / "pipeline" / "io" / "ranges.py").read_text()
    assert "parse_wav_header" in (REPO / "pipeline" / "inputs" / "durations.py").read_text()
