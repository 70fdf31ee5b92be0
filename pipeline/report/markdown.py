"""``summary.md``: a readable digest of a WER report (the Parquet files hold everything), and
the one-line headline the jobs print."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from .history import format_verdicts
from .tables import DURATION_EDGES, GROUP_HEADER, Report, dataset_label, edge_label, pct
from .wer import format_alignment

__all__ = ["headline_text", "render_markdown"]


def _md(value: Any) -> str:
    text = "-" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    rows = list(rows)
    if not rows:
        return ["(none)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md(v) for v in row) + " |" for row in rows]
    return lines


def _group_row(g: dict[str, Any], label: str) -> list[Any]:
    return [label, g["utterances"], g["scored"], g["failed"], g["no_reference"], g["empty_reference"],
            g["ref_words"], g["substitutions"], g["deletions"], g["insertions"], pct(g["wer"]),
            f"{g['audio_seconds']:.1f}"]


#: the B-WER / U-WER table's header (:func:`bias_rows`)
BIAS_HEADER = ("dataset", "B-WER", "biased words", "U-WER", "other words")


def bias_rows(report: Report) -> list[list[Any]]:
    """Per dataset and decoding whose cuts carried hotword lists: B-WER (errors on the words of a
    cut's list), its reference words, U-WER (on the other words), theirs."""
    return [[dataset_label(g["dataset"], g["decoding"]), pct(g["b_wer"]), g["biased_ref_words"], pct(g["u_wer"]),
             g["unbiased_ref_words"]] for g in report.headline() if g.get("biased_ref_words") is not None]


def render_markdown(report: Report, top: int = 20, speakers: int = 20) -> str:
    """``summary.md``: a readable digest of the report (the Parquet files hold everything)."""
    lines = [f"# WER report: run {report.run_id}", ""]
    models = sorted({(g["model_id"], g["model_sha256"]) for g in report.overall()}, key=str)
    lines.append(f"Created {report.created_at.isoformat(timespec='seconds')}; normaliser `{report.normalizer}`; "
                 + "; ".join(f"model {m or '-'} (sha256 {(s or '-')[:12]})" for m, s in models) + ".")
    lines.append("")
    for g in report.overall():
        lines.append(f"**WER {pct(g['wer'])}** over {g['scored']} scored utterances ({g['ref_words']} reference words), "
                     f"decoding `{g['decoding']}`; {g['failed']} failed, {g['no_reference']} without reference.")
    if report.verdicts:
        lines += ["", "## Regression check", "", "```", format_verdicts(report.verdicts), "```"]
    lines += ["", "## Datasets", ""]
    lines += _md_table(GROUP_HEADER, [_group_row(g, dataset_label(g["dataset"], g["decoding"])) for g in report.headline()])
    biased = bias_rows(report)
    if biased:
        lines += ["", "## Hotwords: B-WER / U-WER (Le et al. 2021)", ""]
        lines += _md_table(BIAS_HEADER, biased)
    lines += ["", f"## By duration (buckets [lo, hi) s, edges {', '.join(edge_label(e) for e in DURATION_EDGES)})", ""]
    lines += _md_table(GROUP_HEADER, [_group_row(g, f"{dataset_label(g['dataset'], g['decoding'])} {g['group_value']}")
                                      for g in report.groups("duration_bucket", any_dataset=True)])
    spk = [g for g in report.groups("speaker", any_dataset=True) if g["scored"]]
    spk.sort(key=lambda g: (-(g["wer"] or 0.0), -g["ref_words"], g["group_value"]))
    lines += ["", f"## Speakers (worst {min(speakers, len(spk))} of {len(spk)} by WER)", ""]
    lines += _md_table(GROUP_HEADER, [_group_row(g, f"{dataset_label(g['dataset'], g['decoding'])} {g['group_value']}")
                                      for g in spk[:speakers]])
    for dataset, decoding in report.error_sets():
        lines += ["", f"## Errors: {dataset_label(dataset, decoding)}", ""]
        subs, dels, ins, words = (report.top_errors(dataset, decoding, kind, top)
                                  for kind in ("substitution", "deletion", "insertion", "word"))
        lines += [f"Most frequent substitutions (ref -> hyp), top {len(subs)}:", ""]
        lines += _md_table(("count", "ref", "hyp"), [(e["count"], e["ref_word"], e["hyp_word"]) for e in subs])
        lines += ["", f"Most frequent deletions, top {len(dels)}:", ""]
        lines += _md_table(("count", "ref"), [(e["count"], e["ref_word"]) for e in dels])
        lines += ["", f"Most frequent insertions, top {len(ins)}:", ""]
        lines += _md_table(("count", "hyp"), [(e["count"], e["hyp_word"]) for e in ins])
        lines += ["", f"Per-word statistics, top {len(words)} by errors:", ""]
        lines += _md_table(("word", "errors", "correct", "in ref", "in hyp", "substituted", "substituted in", "deleted",
                            "inserted"),
                           [(e["ref_word"], e["count"], e["correct"], e["ref_count"], e["hyp_count"], e["substituted"],
                             e["substituted_in"], e["deleted"], e["inserted"]) for e in words])
    lines += ["", f"## Worst utterances (top {len(report.worst)} by errors)", "",
              "Alignment of the normalised texts: `(ref->hyp)` substitution, `(ref->*)` deletion, `(*->hyp)` insertion.", ""]
    for w in report.worst:
        lines += [f"- `{_md(w.cut_id)}` ({dataset_label(w.dataset, w.decoding)}, speaker {w.speaker or '-'}, "
                  f"{w.errors} errors / {w.ref_words} words, WER {pct(w.wer)})",
                  f"  - `{_md(format_alignment(w.alignment)) or '(empty)'}`"]
    return "\n".join(lines) + "\n"


def headline_text(report: Report) -> str:
    """One line per decoding: ``WER 12.34% over 100 scored utterances (...)``."""
    return "\n".join(
        f"WER {pct(g['wer'])} over {g['scored']} scored utterances ({g['ref_words']} reference words; "
        f"{g['failed']} failed, {g['no_reference']} without reference), decoding {g['decoding']}"
        for g in report.overall()
    )
