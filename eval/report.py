"""The evaluation's printed report: the paper's Table 4 rows, this checkpoint, the baselines."""

from __future__ import annotations

from eval.protocol import PAPER_TABLE4, PPL_NOTE, differences_markdown

HEAD = [
    "Model", "PPL", "ELBO-PPL", "KL", "BLEU-4 (paper)", "Zhao BLEU-3 P / R",
    "Zhao BLEU-4 P / R", "sacreBLEU-4 P / R", "A-bow P / R", "E-bow P / R", "degenerate",
]  # fmt: skip


def _fmt(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _pair(m: dict, key: str) -> str:
    return f"{_fmt(m.get(key + '_p'))} / {_fmt(m.get(key + '_r'))}"


def metrics_row(name: str, m: dict) -> str:
    """One table row of a result's ``metrics`` (or a baseline's)."""
    degenerate = m.get("degenerate_rate")
    row = [name, _fmt(m.get("ppl")), _fmt(m.get("elbo_ppl")), _fmt(m.get("kl")), "–"]
    row += [_pair(m, "zhao_bleu3"), _pair(m, "zhao_bleu4"), _pair(m, "bleu4")]
    row += [_pair(m, "a_bow"), _pair(m, "e_bow")]
    row += ["–" if degenerate is None else f"{100 * degenerate:.1f}%"]
    return "| " + " | ".join(row) + " |"


def table_header() -> list[str]:
    return [
        "| " + " | ".join(HEAD) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(HEAD) - 1)) + "|",
    ]


def paper_rows() -> list[str]:
    rows = []
    for name, (ppl, kl, bleu4, ap, ar, ep, er) in PAPER_TABLE4.items():
        row = [f"{name} (paper)", _fmt(ppl), "–", _fmt(kl), _fmt(bleu4), "–", "–", "–"]
        row += [f"{_fmt(ap)} / {_fmt(ar)}", f"{_fmt(ep)} / {_fmt(er)}", "–"]
        rows.append("| " + " | ".join(row) + " |")
    return rows


def subset_note(result: dict) -> str | None:
    """Says so when the run covered only part of the data (``--limit``)."""
    if result["examples"] < result.get("examples_available", result["examples"]):
        return (
            f"**Subset: {result['examples']} of {result['examples_available']} examples "
            f"(--limit); not comparable with the full split.**"
        )
    return None


def markdown_table(result: dict) -> str:
    """This checkpoint's row and its baselines next to the paper's Table 4, plus every metric."""
    m = result["metrics"]
    variant = result["protocol"]["model"]["variant"]
    lines = []
    note = subset_note(result)
    if note:
        lines += [note, ""]
    decoding = result["protocol"].get("decoding", {})
    if decoding and not decoding.get("plain", True):
        shown = {k: v for k, v in decoding.items() if k != "plain"}
        lines += [f"Decoding {shown}: not the plain protocol of the paper's table.", ""]
    lines += table_header() + paper_rows()
    lines.append(metrics_row(f"**this checkpoint ({variant})**", m))
    for name, baseline in result.get("baselines", {}).items():
        lines.append(metrics_row(f"baseline: {name}", baseline))
    lines += ["", PPL_NOTE, "", "Differences from the paper:", differences_markdown(), ""]
    lines += [
        f"{result['split']}: {result['examples']} examples, {result['samples_per_context']} samples "
        f"per context, seed {result['seed']}, {result['runtime_s']:.1f} s",
        "",
        "| metric | value |",
        "|---|---:|",
    ]
    for k, v in m.items():
        lines.append(f"| {k} | {v if isinstance(v, int) or v is None else f'{v:.4f}'} |")
    return "\n".join(lines)


def results_table(results: dict[str, dict]) -> str:
    """One table of several results (name -> result JSON) beside the paper's rows, with the
    baseline rows of the first result; what docs/results.md and the README show."""
    lines = table_header() + paper_rows()
    for name, result in results.items():
        note = " (subset)" if subset_note(result) else ""
        lines.append(metrics_row(f"**{name}**{note}", result["metrics"]))
    first = next(iter(results.values()), {})
    for name, baseline in first.get("baselines", {}).items():
        lines.append(metrics_row(f"baseline: {name}", baseline))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(
        prog="python -m eval.report",
        description="Print one markdown table of several evaluation results "
        "(python -m eval.switchboard JSON files), next to the paper's Table 4.",
    )
    parser.add_argument("results", nargs="+", help="result JSON files; a row each")
    args = parser.parse_args(argv)
    try:
        results = {Path(p).stem: json.loads(Path(p).read_text()) for p in args.results}
    except (OSError, ValueError) as e:
        parser.exit(2, f"python -m eval.report: {e}\n")
    print(results_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
