"""``report.html``: one self-contained page a person opens in a browser.

Contents: the run's headline WER per dataset and decoding, the regression verdicts of an
evaluation, plots (WER by duration bucket, WER by speaker, and -- when history is given --
WER over time per dataset and decoding, and beside it the sets' RTFx, GPU-hours and cost per
audio hour over time), the table of groups, the most frequent errors, and
the worst utterances with a word alignment view (substitutions, deletions and insertions
coloured). Plots are drawn with matplotlib (object API, no pyplot state) and embedded as inline
SVG; CSS is inline; there is no script and nothing is fetched, so the file works offline and
as an e-mail attachment. Every text from the data is HTML-escaped.
"""

from __future__ import annotations

import html
import io
from typing import Any, Iterable, Optional, Sequence

from .markdown import BIAS_HEADER, bias_rows
from .tables import DURATION_BUCKETS, DURATION_EDGES, GROUP_HEADER, UNKNOWN_BUCKET, Report, dataset_label, pct

__all__ = ["render_html"]

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
MAX_SPEAKERS_PLOTTED = 30

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 4px; }
h2 { font-size: 1.25em; margin-top: 32px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta { color: #555; font-size: 0.9em; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 10px 16px; min-width: 180px; background: #f7f9fc; }
.card .wer { font-size: 2em; font-weight: 700; }
.card .label { font-weight: 600; }
.card .sub { color: #555; font-size: 0.85em; }
.card.REGRESSION, .card.NO-REFERENCE { border-color: #c62828; background: #fdecea; }
.card.PASS, .card.FIRST { border-color: #2e7d32; }
.card.ACCEPTED { border-color: #ef6c00; background: #fff3e0; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; }
td.l, th.l { text-align: left; }
tr.REGRESSION td, tr.NO-REFERENCE td { background: #fdecea; }
tr.ACCEPTED td { background: #fff3e0; }
.status-REGRESSION, .status-NO-REFERENCE { color: #c62828; font-weight: 700; }
.status-PASS, .status-FIRST { color: #2e7d32; font-weight: 700; }
.status-ACCEPTED { color: #ef6c00; font-weight: 700; }
.plot svg { max-width: 100%; height: auto; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; }
.utt { border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; margin: 10px 0; }
.utt .head { font-size: 0.9em; color: #444; margin-bottom: 6px; }
.align { line-height: 2.4; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.95em; }
.w { padding: 1px 3px; margin: 0 1px; border-radius: 3px; }
.S { background: #fff3cd; }
.S .ref { color: #b71c1c; text-decoration: line-through; }
.S .hyp { color: #1b5e20; }
.D { background: #fdecea; color: #b71c1c; text-decoration: line-through; }
.I { background: #e8f5e9; color: #1b5e20; text-decoration: underline; }
.texts { font-size: 0.85em; color: #555; }
.legend span { margin-right: 12px; }
details summary { cursor: pointer; color: #1f4e9c; }
"""


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value), quote=True)


# -- plots -----------------------------------------------------------------------------


def _svg(fig: Any, salt: str) -> str:
    """A matplotlib figure as an inline ``<svg>`` element (text kept as text, ids unique per plot)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    fig.set_layout_engine("constrained")
    return fig


def _legend_below(fig: Any, ax: Any, entries: int) -> None:
    """The legend outside the axes, under the figure: it never covers the data."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(entries, 2), fontsize=8, frameon=False)


def _no_data(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes, color="#777")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_duration(report: Report) -> str:
    """Grouped bars: WER per duration bucket, one colour per (dataset, decoding)."""
    groups = [g for g in report.groups("duration_bucket", any_dataset=True) if g["wer"] is not None]
    sets = sorted({(g["dataset"], g["decoding"]) for g in groups}, key=lambda k: (k[1] or "", k[0] or ""))
    buckets = [b for b in DURATION_BUCKETS + (UNKNOWN_BUCKET,) if any(g["group_value"] == b for g in groups)]
    fig = _figure(5.6, 3.4)
    ax = fig.add_subplot()
    if not groups:
        _no_data(ax, "scored utterances")
    else:
        width = 0.8 / len(sets)
        for k, key in enumerate(sets):
            values = {g["group_value"]: g for g in groups if (g["dataset"], g["decoding"]) == key}
            xs = [i + (k - (len(sets) - 1) / 2) * width for i, b in enumerate(buckets) if b in values]
            ys = [100 * values[b]["wer"] for b in buckets if b in values]
            bars = ax.bar(xs, ys, width=width * 0.95, color=PALETTE[k % len(PALETTE)], label=dataset_label(*key))
            counts = [values[b]["scored"] for b in buckets if b in values]
            ax.bar_label(bars, labels=[f"n={n}" for n in counts], fontsize=7, padding=1)
        ax.set_xticks(range(len(buckets)), buckets)
        ax.set_ylabel("WER (%)")
        ax.set_xlabel("cut duration (s)")
        ax.set_ylim(0, max([1.0] + [100 * g["wer"] for g in groups]) * 1.2)  # room for the n= labels above the bars
        _legend_below(fig, ax, len(sets))
        ax.grid(axis="y", alpha=0.3)
    ax.set_title("WER by duration bucket")
    return _svg(fig, "duration")


def plot_speakers(report: Report) -> str:
    """Horizontal bars: WER of the worst speakers (up to :data:`MAX_SPEAKERS_PLOTTED`)."""
    groups = [g for g in report.groups("speaker", any_dataset=True) if g["wer"] is not None]
    groups.sort(key=lambda g: (-(g["wer"] or 0.0), -g["ref_words"], g["group_value"]))
    shown = groups[:MAX_SPEAKERS_PLOTTED]
    sets = sorted({(g["dataset"], g["decoding"]) for g in groups}, key=lambda k: (k[1] or "", k[0] or ""))
    fig = _figure(5.6, max(2.4, 0.9 + 0.26 * len(shown)))
    ax = fig.add_subplot()
    if not shown:
        _no_data(ax, "scored speakers")
    else:
        labels = [f"{g['group_value']} ({g['dataset'] or '-'})" if len(sets) > 1 else g["group_value"] for g in shown]
        colors = [PALETTE[sets.index((g["dataset"], g["decoding"])) % len(PALETTE)] for g in shown]
        ys = list(range(len(shown)))[::-1]
        ax.barh(ys, [100 * g["wer"] for g in shown], color=colors)
        ax.set_yticks(ys, labels, fontsize=8)
        ax.set_xlabel("WER (%)")
        ax.grid(axis="x", alpha=0.3)
    title = "WER by speaker" + (f" (worst {len(shown)} of {len(groups)})" if len(groups) > len(shown) else "")
    ax.set_title(title)
    return _svg(fig, "speakers")


def plot_history(history: Any) -> str:
    """Lines: WER over time (run creation time), one line per (dataset, decoding)."""
    rows = [r for r in history.to_pylist() if r["wer"] is not None]
    sets = sorted({(r["dataset"], r["decoding"]) for r in rows}, key=lambda k: (k[1] or "", k[0] or ""))
    fig = _figure(5.6, 3.4)
    ax = fig.add_subplot()
    if not rows:
        _no_data(ax, "history")
    else:
        import matplotlib.dates as mdates

        for k, key in enumerate(sets):
            mine = sorted((r for r in rows if (r["dataset"], r["decoding"]) == key), key=lambda r: r["created_at"])
            xs = [r["created_at"].replace(tzinfo=None) for r in mine]
            ys = [100 * r["wer"] for r in mine]
            ax.plot(xs, ys, marker="o", color=PALETTE[k % len(PALETTE)], label=dataset_label(*key))
            failed = [(x, y) for x, y, r in zip(xs, ys, mine) if r["gate"] == "fail"]
            if failed:
                ax.scatter([x for x, _ in failed], [y for _, y in failed], s=90, facecolors="none", edgecolors="#c62828",
                           linewidths=2, zorder=3)
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.set_ylabel("WER (%)")
        ax.set_xlabel("run time (UTC); red ring = gate failed")
        _legend_below(fig, ax, len(sets))
        ax.grid(alpha=0.3)
    ax.set_title("WER over time")
    return _svg(fig, "history")


def has_speed_history(history: Any) -> bool:
    """Whether history rows carry speed or cost (rows of older runs have neither)."""
    return any(r.get(k) is not None for r in history.to_pylist() for k in ("rtfx", "gpu_hours", "cost_per_audio_hour_usd"))


def plot_history_speed(history: Any) -> str:
    """Three panels over time, one line per dataset (a set's decodings share its run): end-to-end
    RTFx, the GPU-hours its run held (CPU core-hours when no run held a GPU), and the cost per
    audio hour."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in history.to_pylist():
        rows.setdefault((r["run_id"], r["dataset"]), r)  # one per run and set: its decodings repeat the values
    sets = sorted({r["dataset"] for r in rows.values()}, key=lambda d: d or "")
    gpu = any((r.get("gpu_hours") or 0) > 0 for r in rows.values())
    panels = (("rtfx", "RTFx"), ("gpu_hours", "GPU-hours") if gpu else ("cpu_core_hours", "CPU core-hours"),
              ("cost_per_audio_hour_usd", "USD per audio hour"))
    fig = _figure(5.6, 5.4)
    axes = fig.subplots(3, 1, sharex=True)
    import matplotlib.dates as mdates

    for ax, (column, label) in zip(axes, panels):
        for k, dataset in enumerate(sets):
            mine = sorted((r for r in rows.values() if r["dataset"] == dataset and r.get(column) is not None),
                          key=lambda r: r["created_at"])
            ax.plot([r["created_at"].replace(tzinfo=None) for r in mine], [r[column] for r in mine], marker="o",
                    color=PALETTE[k % len(PALETTE)], label=dataset or "-")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    locator = mdates.AutoDateLocator()
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes[-1].set_xlabel("run time (UTC)")
    _legend_below(fig, axes[0], len(sets))
    axes[0].set_title("Speed and cost over time")
    return _svg(fig, "history-speed")


# -- HTML pieces -----------------------------------------------------------------------


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 1,
           row_classes: Optional[Sequence[str]] = None, also_left: Sequence[int] = ()) -> str:
    """A table; the first ``left`` columns (and those in ``also_left``) are left-aligned text."""
    lefts = set(range(left)) | set(also_left)
    out = ["<table><thead><tr>"]
    out += [f'<th class="{"l" if i in lefts else ""}">{_e(h)}</th>' for i, h in enumerate(header)]
    out.append("</tr></thead><tbody>")
    for n, row in enumerate(rows):
        cls = f' class="{_e(row_classes[n])}"' if row_classes else ""
        out.append(f"<tr{cls}>" + "".join(f'<td class="{"l" if i in lefts else ""}">{_e(v)}</td>' for i, v in enumerate(row))
                   + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _group_rows(groups: Sequence[dict[str, Any]], label: Any) -> list[list[Any]]:
    return [[label(g), g["utterances"], g["scored"], g["failed"], g["no_reference"], g["empty_reference"], g["ref_words"],
             g["substitutions"], g["deletions"], g["insertions"], pct(g["wer"]), f"{g['audio_seconds']:.1f}"]
            for g in groups]


def _alignment_html(alignment: Sequence[Any]) -> str:
    parts = []
    for a in alignment:
        if a.op == "C":
            parts.append(f'<span class="w">{_e(a.ref)}</span>')
        elif a.op == "S":
            parts.append(f'<span class="w S" title="substitution"><span class="ref">{_e(a.ref)}</span>'
                         f'&rarr;<span class="hyp">{_e(a.hyp)}</span></span>')
        elif a.op == "D":
            parts.append(f'<span class="w D" title="deletion">{_e(a.ref)}</span>')
        else:
            parts.append(f'<span class="w I" title="insertion">{_e(a.hyp)}</span>')
    return " ".join(parts) or "<em>(empty)</em>"


#: matplotlib settings of every plot: text from the data (speakers, datasets) is literal: no
#: mathtext (a speaker named ``x $\\foo$ y`` is not TeX), no LaTeX
LITERAL_TEXT = {"text.parse_math": False, "text.usetex": False}


def render_html(report: Report, top_errors: int = 15) -> str:
    """The whole page as a string."""
    import matplotlib

    with matplotlib.rc_context(LITERAL_TEXT):
        return _render_html(report, top_errors)


def _render_html(report: Report, top_errors: int) -> str:
    verdicts = {(v.dataset, v.decoding): v for v in report.verdicts}
    body: list[str] = []
    body.append(f"<h1>WER report: run {_e(report.run_id)}</h1>")
    models = sorted({(g["model_id"], g["model_sha256"]) for g in report.overall()}, key=str)
    body.append(f'<p class="meta">Created {_e(report.created_at.isoformat(timespec="seconds"))} &middot; normaliser '
                f'<code>{_e(report.normalizer)}</code> &middot; '
                + "; ".join(f"model {_e(m)} (sha256 {_e((s or '-')[:12])})" for m, s in models) + "</p>")

    body.append('<div class="cards" id="headline">')
    headline = report.headline()
    for g in report.overall():
        mine = [d for d in headline if d["decoding"] == g["decoding"]]
        # one dataset: its card (with its verdict, when gated) or the "all" card, never both saying the same
        if len(mine) == 1 and verdicts.get((mine[0]["group_value"], g["decoding"])) is not None:
            continue
        body.append(f'<div class="card"><div class="label">all [{_e(g["decoding"])}]</div><div class="wer">{pct(g["wer"])}</div>'
                    f'<div class="sub">{g["scored"]} scored, {g["ref_words"]} words, {g["failed"]} failed</div></div>')
    for g in headline:
        v = verdicts.get((g["group_value"], g["decoding"]))
        if v is None and sum(d["decoding"] == g["decoding"] for d in headline) == 1:
            continue  # the "all" card above is this dataset's
        cls = v.status if v else ""
        status = f'<div class="sub status-{_e(cls)}">{_e(v.status)}</div>' if v else ""
        body.append(f'<div class="card {_e(cls)}"><div class="label">{_e(dataset_label(g["dataset"], g["decoding"]))}</div>'
                    f'<div class="wer">{pct(g["wer"])}</div>{status}'
                    f'<div class="sub">{g["scored"]} scored, {g["ref_words"]} words, {g["failed"]} failed, '
                    f'{g["no_reference"]} no ref</div></div>')
    body.append("</div>")

    if report.verdicts:
        body.append('<h2 id="verdicts">Regression check</h2>')
        rows = [[v.dataset, v.decoding, v.status, pct(v.wer), pct(v.baseline_wer),
                 "-" if v.delta_points is None else f"{v.delta_points:+.2f}",
                 "-" if v.rtfx_delta_pct is None else f"{v.rtfx_delta_pct:+.1f}%", v.baseline_run_id, v.reason]
                for v in report.verdicts]
        body.append(_table(("dataset", "decoding", "verdict", "WER", "baseline WER", "delta (points)", "RTFx change",
                            "baseline run", "details"), rows, left=3, row_classes=[v.status for v in report.verdicts],
                           also_left=(7, 8)))

    body.append('<h2 id="plots">Plots</h2><div class="plots">')
    body.append(f'<div class="plot">{plot_duration(report)}</div>')
    body.append(f'<div class="plot">{plot_speakers(report)}</div>')
    if report.history is not None and report.history.num_rows:
        body.append(f'<div class="plot">{plot_history(report.history)}</div>')
        if has_speed_history(report.history):
            body.append(f'<div class="plot">{plot_history_speed(report.history)}</div>')
    body.append("</div>")

    body.append('<h2 id="groups">Groups</h2>')
    body.append(f'<p class="meta">WER = (sub + del + ins) / ref words over scored utterances (status ok, with a '
                f'reference). Failed cuts and cuts without reference are counted, not scored. Duration buckets are '
                f'[lo, hi) seconds with edges {", ".join(f"{e:g}" for e in DURATION_EDGES)}.</p>')
    body.append(_table(GROUP_HEADER, _group_rows(report.overall(), lambda g: f"all [{g['decoding']}]")
                       + _group_rows(report.headline(), lambda g: dataset_label(g["dataset"], g["decoding"]))))
    biased = bias_rows(report)
    if biased:
        body.append("<h3>Hotwords: B-WER / U-WER</h3>")
        body.append('<p class="meta">B-WER: errors on the reference words that are words of the cut\'s hotword '
                    'list (substitutions and deletions by the reference word, insertions by the inserted word), per '
                    'those words; U-WER: the same for every other word (Le et al. 2021).</p>')
        body.append(_table(BIAS_HEADER, biased))
    body.append("<h3>By duration</h3>")
    body.append(_table(GROUP_HEADER, _group_rows(report.groups("duration_bucket", any_dataset=True),
                                                 lambda g: f"{dataset_label(g['dataset'], g['decoding'])} {g['group_value']}")))
    speakers = report.groups("speaker", any_dataset=True)
    body.append(f"<details><summary>By speaker ({len(speakers)})</summary>")
    body.append(_table(GROUP_HEADER, _group_rows(speakers, lambda g: f"{dataset_label(g['dataset'], g['decoding'])} {g['group_value']}")))
    body.append("</details>")

    body.append('<h2 id="errors">Most frequent errors</h2>')
    sets = report.error_sets()
    if not sets:
        body.append("<p>No errors.</p>")
    for key in sets:
        body.append(f"<h3>{_e(dataset_label(*key))}</h3><div class=\"plots\">")
        subs, dels, ins, words = (report.top_errors(*key, kind, top_errors)
                                  for kind in ("substitution", "deletion", "insertion", "word"))
        body.append("<div><b>Substitutions</b>" + _table(("ref", "hyp", "count"), [(e["ref_word"], e["hyp_word"], e["count"]) for e in subs], left=2) + "</div>")
        body.append("<div><b>Deletions</b>" + _table(("ref", "count"), [(e["ref_word"], e["count"]) for e in dels]) + "</div>")
        body.append("<div><b>Insertions</b>" + _table(("hyp", "count"), [(e["hyp_word"], e["count"]) for e in ins]) + "</div>")
        body.append("<div><b>Per word</b>" + _table(("word", "errors", "correct", "in ref", "in hyp"),
                                                    [(e["ref_word"], e["count"], e["correct"], e["ref_count"], e["hyp_count"]) for e in words]) + "</div>")
        body.append("</div>")

    body.append(f'<h2 id="worst">Worst utterances (top {len(report.worst)} by errors)</h2>')
    body.append('<p class="legend"><span class="w">correct</span><span class="w S"><span class="ref">ref</span>&rarr;'
                '<span class="hyp">hyp</span></span> substitution <span class="w D">ref</span> deletion '
                '<span class="w I">hyp</span> insertion (normalised texts)</p>')
    for w in report.worst:
        body.append(f'<div class="utt"><div class="head"><b>{_e(w.cut_id)}</b> &middot; {_e(dataset_label(w.dataset, w.decoding))} '
                    f'&middot; speaker {_e(w.speaker)} &middot; {"-" if w.duration is None else f"{w.duration:.2f} s"} '
                    f'&middot; {w.errors} errors / {w.ref_words} words ({pct(w.wer)})</div>'
                    f'<div class="align">{_alignment_html(w.alignment)}</div>'
                    f'<div class="texts">REF: {_e(w.reference)}<br>HYP: {_e(w.text)}</div></div>')
    if not report.worst:
        body.append("<p>No utterance has errors.</p>")

    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>WER report {_e(report.run_id)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
