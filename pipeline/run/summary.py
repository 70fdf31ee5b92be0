"""The run summary: what a run did (:class:`RunSummary`, written as ``runs/<id>/summary.json``)
and its human-readable form (:func:`format_summary`, printed at the end of a job)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

__all__ = ["RunSummary", "format_summary", "hotword_lines", "resource_lines"]


@dataclass
class RunSummary:
    """What a run did: counts, audio, speed, stage times, resources; ``runs/<id>/summary.json``."""

    run_id: str
    manifest: list[str]
    output: str
    model_id: str
    model_sha256: str
    decoding: str
    started_at: str
    finished_at: str = ""
    shards_total: int = 0
    shards_done: int = 0
    shards_skipped: int = 0
    shards_failed: list[str] = field(default_factory=list)
    shard_retries: int = 0
    cuts_ok: int = 0
    cuts_error: int = 0
    long_cuts: int = 0  # cuts transcribed in windows and stitched (included in cuts_ok / cuts_error)
    long_cuts_incomplete: int = 0  # long cuts with a window in a failed shard: no row yet
    windows: int = 0
    seams_aligned: int = 0
    audio_seconds: float = 0.0
    audio_hours: float = 0.0
    model_input_seconds: float = 0.0  # audio the model saw: less than audio_seconds where pauses were cut out
    padded_seconds: float = 0.0
    padding_ratio: float = 0.0  # 1 - model input / padded model input
    wall_seconds: float = 0.0
    rtfx: float = 0.0
    model_rtfx: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    #: contextual biasing (pipeline.run.driver.hotwords_summary): the run list, its size and scores,
    #: where per-cut lists come from, which decodings bias and which cannot
    hotwords: dict[str, Any] = field(default_factory=dict)
    #: cuts decoded with a hotword list, the phrases of their lists summed, the longest list
    hotword_cuts: int = 0
    hotword_phrases: int = 0
    hotword_max_phrases: int = 0
    #: the audio stage: bytes read from storage, bytes the cuts' audio takes in its objects (a
    #: recording's segments read once: about equal; segments of one recording in many shards: more
    #: fetched), and its CPU seconds (decoding, resampling) per second of audio
    audio_bytes_fetched: int = 0
    audio_bytes_needed: float = 0.0
    audio_cpu_seconds: float = 0.0
    audio_cpu_per_audio_second: float = 0.0
    num_actors: int = 0
    resources_per_actor: dict[str, float] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)
    transcripts_uri: str = ""
    #: the frozen plan: where, reused or made now, inputs changed since, its totals
    plan: dict[str, Any] = field(default_factory=dict)
    #: how the stages were sized: actors (min, max), CPUs / GPUs per actor, audio CPUs, device
    stages: dict[str, Any] = field(default_factory=dict)
    #: the model actors that did work: worker (host:pid), node_id (Ray's), device, shards done
    actors: list[dict[str, Any]] = field(default_factory=list)
    #: the weights used: file(s) and how they were combined (icefall's --epoch/--avg/--use-averaged-model)
    model_weights: str = ""
    #: what loading the model decided on its own (e.g. full context for a causal model's training chunk list)
    model_notes: list[str] = field(default_factory=list)
    #: each decoding's label (several when --decoding was given several times; ``decoding`` joins them)
    decodings: list[str] = field(default_factory=list)
    #: the encoder's precision on the actors, and why (model.precision: --precision auto picks by device)
    precision: list[str] = field(default_factory=list)
    #: batches split in halves after an out-of-memory, and the smallest batch budget (padded seconds)
    #: an actor ended with (below --max-batch-seconds only after an out-of-memory)
    oom_splits: int = 0
    batch_budget_seconds: float = 0.0
    #: why the execution stopped early ("" when it ran to the end); the shards not done are in shards_failed
    stopped: str = ""
    #: why each failed shard failed (the first line of its error)
    shard_errors: dict[str, str] = field(default_factory=dict)
    #: device failures that ended a model actor (Ray restarted it): shard_id (None: at start-up), worker, message
    device_failures: list[dict[str, Any]] = field(default_factory=list)
    #: the resources the run held, measured from its actors' and tasks' lifetimes: node_hours, gpu_hours,
    #: cpu_core_hours, by_node_type, by_holder, waiting_seconds, stitch_seconds (pipeline.run.usage)
    resources: dict[str, Any] = field(default_factory=dict)
    #: what they cost: total_usd, per_audio_hour_usd, audio_hours, by_node_type, unpriced, prices
    #: (pipeline.run.cost); empty without prices
    cost: dict[str, Any] = field(default_factory=dict)

    def add(self, r: dict[str, Any]) -> None:
        self.cuts_ok += r["cuts_ok"]
        self.cuts_error += r["cuts_error"]
        self.windows += r.get("windows_ok", 0) + r.get("windows_error", 0)
        self.audio_seconds += r["audio_seconds"]
        self.padded_seconds += r["padded_seconds"]
        self.model_input_seconds += r.get("model_input_seconds", r["audio_seconds"])  # parts of older versions lack it
        for k, v in r["stage_seconds"].items():
            self.stage_seconds[k] = self.stage_seconds.get(k, 0.0) + v
        self.stage_seconds["load"] = self.stage_seconds.get("load", 0.0) + r.get("load_seconds", 0.0)
        self.audio_bytes_fetched += r.get("bytes_fetched", 0)  # parts of older versions lack these
        self.audio_bytes_needed += r.get("bytes_needed", 0.0)
        self.audio_cpu_seconds += r.get("load_cpu_seconds", 0.0)
        if "write_seconds" in r:  # parts of older versions lack it
            self.stage_seconds["write"] = self.stage_seconds.get("write", 0.0) + r["write_seconds"]
        self.oom_splits += r.get("oom_splits", 0)
        self.hotword_cuts += r.get("hotword_cuts", 0)  # parts of older versions lack these
        self.hotword_phrases += r.get("hotword_phrases", 0)
        self.hotword_max_phrases = max(self.hotword_max_phrases, r.get("hotword_max_phrases", 0))
        if r.get("batch_budget_seconds"):
            budgets = [b for b in (self.batch_budget_seconds, r["batch_budget_seconds"]) if b]
            self.batch_budget_seconds = min(budgets)
        if r.get("precision") and r["precision"] not in self.precision:
            self.precision.append(r["precision"])

    def finish(self, wall: float) -> None:
        self.finished_at = datetime.now(timezone.utc).isoformat()
        self.wall_seconds = round(wall, 3)
        self.audio_hours = self.audio_seconds / 3600
        self.padding_ratio = 0.0 if self.padded_seconds == 0 else 1 - self.model_input_seconds / self.padded_seconds
        self.rtfx = self.audio_seconds / wall if wall > 0 else 0.0
        self.audio_cpu_per_audio_second = self.audio_cpu_seconds / self.audio_seconds if self.audio_seconds else 0.0
        model_time = sum(self.stage_seconds.get(k, 0.0) for k in ("features", "encoder", "decoding"))
        self.model_rtfx = self.audio_seconds / model_time if model_time > 0 else 0.0


def format_summary(s: RunSummary) -> str:
    """The human-readable job summary printed at the end of a run."""
    st = s.stage_seconds
    lines = [
        f"run {s.run_id}: {s.cuts_ok} cuts ok, {s.cuts_error} errors, {s.audio_hours:.3f} h of audio in {s.wall_seconds:.1f} s",
        f"  RTFx {s.rtfx:.1f} end-to-end, {s.model_rtfx:.1f} model-only; padding ratio {s.padding_ratio:.3f}",
        "  stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(st.items())),
        *([f"  audio stage: {s.audio_bytes_fetched / 1e6:.1f} MB fetched for {s.audio_bytes_needed / 1e6:.1f} MB of audio "
           f"needed ({s.audio_bytes_fetched / s.audio_bytes_needed:.2f}x), {s.audio_cpu_per_audio_second:.4f} CPU s per "
           "audio s"] if s.audio_bytes_needed else []),
        f"  shards: {s.shards_done} done, {s.shards_skipped} skipped (resumed), {s.shard_retries} retried, "
        f"{len(s.shards_failed)} failed" + (f" (the run stopped: {s.stopped})" if s.stopped else ""),
        *[f"    failed {shard}: {error}" for shard, error in list(s.shard_errors.items())[:5]],
        *([f"  device failures: {len(s.device_failures)} actor(s) ended and were restarted; the last: "
           f"{s.device_failures[-1]['worker']}: {s.device_failures[-1]['message']}"] if s.device_failures else []),
        *([f"  plan: {s.plan['shards']} shards, {s.plan['cuts']} cuts, {s.plan['audio_hours']:.3f} h; "
           + ("reused" + (f", inputs changed since: {', '.join(s.plan['inputs_changed'])} (--replan takes them in)"
                          if s.plan["inputs_changed"] else "")
              if s.plan["reused"] else f"made in {s.plan['planning_seconds']:.1f} s")
           + f" ({s.plan['uri']})"] if s.plan else []),
        *([f"  long cuts: {s.long_cuts} stitched from {s.windows} windows ({s.seams_aligned} seams cut at an aligned word), "
           f"{s.long_cuts_incomplete} incomplete"] if s.long_cuts or s.long_cuts_incomplete else []),
        *([f"  pauses: {100 * (1 - s.model_input_seconds / s.audio_seconds):.1f} % of the audio was silence between "
           f"pieces and skipped"] if 0 < s.model_input_seconds < s.audio_seconds - 1e-6 else []),
        f"  model {s.model_id} ({s.model_sha256[:12]}), decoding {s.decoding}, {s.num_actors} actor(s) on {', '.join(s.devices) or '-'}",
        *([f"    weights: {s.model_weights}"] if s.model_weights else []),
        *([f"    precision: {', '.join(s.precision)}"] if s.precision else []),
        *([f"    memory: {s.oom_splits} batch(es) split after running out of memory; batches limited to "
           f"{s.batch_budget_seconds:.1f} padded s"] if s.oom_splits else []),
        *[f"    note: {n}" for n in s.model_notes],
        *hotword_lines(s),
        *[f"    {a['worker']} on node {a['node_id']} ({a['device']}): {a['shards']} shard(s)" for a in s.actors],
        *resource_lines(s),
        f"  transcripts: {s.transcripts_uri}",
    ]
    if s.cuts_ok + s.cuts_error == 0:
        lines.append("  (the manifest held no cuts)")
    return "\n".join(lines)


def hotword_lines(s: RunSummary) -> list[str]:
    """The summary's line on contextual biasing: the run list, the cuts decoded with a list and its
    size, which decodings biased (none when no cut had a list)."""
    h = s.hotwords
    if not (h.get("run_phrases") or s.hotword_cuts):
        return []
    run = (f"run list {h.get('run_list')} ({h.get('run_phrases', 0)} phrases, scores "
           f"{', '.join(f'{x:g}' for x in h.get('run_scores', ())) or '-'})" if h.get("run_phrases") else "no run list")
    mean = s.hotword_phrases / s.hotword_cuts if s.hotword_cuts else 0.0
    line = (f"    hotwords: {run}, merged with each cut's custom['hotwords']; {s.hotword_cuts} cut(s) decoded with a "
            f"list ({mean:.1f} phrases on average, at most {s.hotword_max_phrases}); default "
            f"{h.get('default_score', 0.0):g} per token; biased: {', '.join(h.get('biased_decodings', ())) or '-'}")
    if h.get("unbiased_decodings"):
        line += f"; cannot bias (decoded without lists): {', '.join(h['unbiased_decodings'])}"
    return [line]


def resource_lines(s: RunSummary) -> list[str]:
    """The summary's lines on the resources the run held and their cost (none when not measured)."""
    r, c = s.resources, s.cost
    if not r:
        return []
    lines = [f"  resources held: {r['node_hours']:.4f} node-h, {r['gpu_hours']:.4f} GPU-h, {r['cpu_core_hours']:.4f} "
             f"core-h (actors' and tasks' lifetimes); idle waiting for nodes {r['waiting_seconds']:.1f} s, "
             f"stitching {r['stitch_seconds']:.1f} s"]
    lines += [f"    {name}: {t['nodes']} node(s), {t['node_hours']:.4f} node-h, {t['gpu_hours']:.4f} GPU-h, "
              f"{t['cpu_core_hours']:.4f} core-h" for name, t in r["by_node_type"].items()]
    lines += [f"    note: {n}" for n in r.get("notes", ())]
    if c:
        if c["total_usd"] is None:
            lines.append(f"  cost: unknown, no price for node type(s) {', '.join(c['unpriced'])} (--price)")
        else:
            per = "-" if c["per_audio_hour_usd"] is None else f"${c['per_audio_hour_usd']:.4g}"
            lines.append(f"  cost: ${c['total_usd']:.4g} for {c['audio_hours']:.4f} h of audio transcribed = {per} per "
                         f"audio hour")
        lines.append(f"    prices: {c['prices']}")
    return lines
