"""What a run cost: the resources it held (:mod:`pipeline.run.usage`) times prices, per audio hour.

**Prices** (:class:`Prices`, USD per hour) have three kinds of keys:

* ``gpu``: per GPU-hour held. A cloud GPU is sold with its share of a host (CPUs, memory), so on
  a node type whose GPUs the run held, the GPU price covers the CPUs the run held there too;
* ``cpu``: per CPU core-hour held, on node types where the run held no GPU;
* a node type's name (``pipeline.run.usage.node_type``: the KubeRay worker group, e.g. ``gpu-l4``):
  per node-hour of that type, instead of the two above (a node type called ``gpu`` or ``cpu``, like
  ``infra/k8s``'s worker group ``gpu``, is priced by the resource kinds: the names are the kinds').

They come from ``--price KIND=USD_PER_HOUR`` (repeatable), over a prices file (``--prices FILE``,
local or ``s3://``), else over ``infra/prices.yaml``, whose figures are examples of on-demand
prices with their date, not a quote. A file is YAML::

    as_of: "2026-06"            # when the prices were read (shown with every cost)
    prices: {gpu: 1.006, cpu: 0.0408, gpu-l4: 0.8048}
    instances: {...}            # optional: what the figures stand for (documentation only)

**Cost per audio hour** = (sum over node types of the priced hours) / hours of audio transcribed
by the run (shards skipped because an earlier run did them cost nothing now and count in
neither). A node type that held resources no price covers is named in ``unpriced`` and the run
has no total (a partial sum would read as a cheap run).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .usage import ResourceUsage

__all__ = ["Cost", "DEFAULT_PRICES_FILE", "Prices", "compute_cost", "load_prices", "parse_price", "resolve_prices"]

#: the example prices a run uses when given none (see the module docstring)
DEFAULT_PRICES_FILE = Path(__file__).resolve().parents[2] / "infra" / "prices.yaml"
RESOURCE_KINDS = ("gpu", "cpu")
_KIND = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass(frozen=True)
class Prices:
    """USD per hour by kind (``gpu``, ``cpu`` or a node type's name), where they came from, and
    their date; checked when made (kinds are names, prices finite and not negative)."""

    rates: Mapping[str, float]
    source: str = "--price"
    as_of: str = ""

    def __post_init__(self) -> None:
        for kind, usd in self.rates.items():
            if not _KIND.fullmatch(str(kind)):
                raise ValueError(f"price kind {kind!r} is not 'gpu', 'cpu' or a node type name")
            if not isinstance(usd, (int, float)) or isinstance(usd, bool) or not math.isfinite(usd) or usd < 0:
                raise ValueError(f"price of {kind!r} must be a number of USD per hour >= 0, got {usd!r}")
        object.__setattr__(self, "rates", {str(k): float(v) for k, v in sorted(self.rates.items())})

    def describe(self) -> str:
        """``infra/prices.yaml (as of 2026-06): gpu $1.006/GPU-h, cpu $0.0408/core-h``."""
        units = {"gpu": "GPU-h", "cpu": "core-h"}
        rates = ", ".join(f"{k} ${v:g}/{units.get(k, 'node-h')}" for k, v in self.rates.items())
        return f"{self.source}" + (f" (as of {self.as_of})" if self.as_of else "") + f": {rates or 'none'}"


def parse_price(text: str) -> tuple[str, float]:
    """``"gpu=1.2"`` -> ``("gpu", 1.2)`` (the argparse type of ``--price``)."""
    import argparse

    kind, sep, value = str(text).partition("=")
    try:
        usd = float(value)
        Prices({kind: usd})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected KIND=USD_PER_HOUR (KIND: gpu, cpu or a node type), got {text!r}"
            + ("" if not sep else f": {exc}")) from None
    return kind, usd


def load_prices(uri: str) -> Prices:
    """A prices file (local or ``s3://``; the format is in the module docstring); ValueError
    when it is not one."""
    import yaml

    from pipeline.io import storage

    try:
        doc = yaml.safe_load(storage.read_bytes(uri).decode("utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"prices file {uri} is not YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("prices"), dict):
        raise ValueError(f"prices file {uri} has no 'prices:' mapping of KIND: USD_PER_HOUR")
    try:
        return Prices(doc["prices"], source=uri, as_of=str(doc.get("as_of") or ""))
    except ValueError as exc:
        raise ValueError(f"prices file {uri}: {exc}") from None


def resolve_prices(given: Sequence[tuple[str, float]] = (), file: Optional[str] = None) -> Optional[Prices]:
    """The run's prices: ``given`` (``--price``) over ``file`` (``--prices``) or, without one,
    over :data:`DEFAULT_PRICES_FILE` when it exists; ``None`` when there are none at all."""
    base: Optional[Prices] = None
    if file:
        base = load_prices(file)
    elif DEFAULT_PRICES_FILE.is_file():
        base = load_prices(str(DEFAULT_PRICES_FILE))
        base = Prices(base.rates, source="infra/prices.yaml (examples)", as_of=base.as_of)
    if not given:
        return base
    rates = dict(base.rates if base else {})
    rates.update(dict(given))
    source = "--price" + (f" over {base.source}" if base else "")
    return Prices(rates, source=source, as_of=base.as_of if base else "")


@dataclass(frozen=True)
class Cost:
    """A run's cost (see the module docstring)."""

    total_usd: Optional[float]
    per_audio_hour_usd: Optional[float]
    audio_hours: float  # audio transcribed by the run (not shards an earlier run did)
    #: per node type: ``usd`` and how (``"0.50 GPU-h x $1.006"``)
    by_node_type: dict[str, dict[str, Any]] = field(default_factory=dict)
    unpriced: tuple[str, ...] = ()  # node types that held resources no price covers
    prices: str = ""  # Prices.describe()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute_cost(usage: ResourceUsage, prices: Prices, audio_hours: float) -> Cost:
    """The cost of ``usage`` at ``prices`` and per hour of ``audio_hours`` transcribed."""
    rates = prices.rates
    parts: dict[str, dict[str, Any]] = {}
    unpriced = []
    for name, t in usage.by_node_type.items():
        if name in rates and name not in RESOURCE_KINDS:
            usd, how = t.node_hours * rates[name], f"{t.node_hours:.4g} node-h x ${rates[name]:g}"
        elif t.gpu_hours > 0 and "gpu" in rates:
            usd, how = t.gpu_hours * rates["gpu"], f"{t.gpu_hours:.4g} GPU-h x ${rates['gpu']:g} (with the node's CPUs)"
        elif t.gpu_hours == 0 and "cpu" in rates:
            usd, how = t.cpu_core_hours * rates["cpu"], f"{t.cpu_core_hours:.4g} core-h x ${rates['cpu']:g}"
        else:
            unpriced.append(name)
            continue
        parts[name] = {"usd": usd, "how": how}
    total = None if unpriced else sum(p["usd"] for p in parts.values())
    per_hour = total / audio_hours if total is not None and audio_hours > 0 else None
    return Cost(total_usd=total, per_audio_hour_usd=per_hour, audio_hours=audio_hours, by_node_type=parts,
                unpriced=tuple(unpriced), prices=prices.describe())
