"""The evaluation's printed report: the paper's Table 4 rows, this checkpoint, the baselines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from eval.protocol import (
    PAPER_TABLE4,
    PPL_NOTE,
    differences_markdown,
    paper_differences_markdown,
)
from eval.significance import (
    BOOTSTRAP_RESAMPLES,
    Comparison,
    aligned,
    baseline_column,
    has_per_context,
    mean_std,
    paired_bootstrap,
    read_contexts,
    reference_metric,
    welch,
)

HEAD = [
    "Model", "PPL", "ELBO-PPL", "KL", "AU", "MI", "Zhao BLEU-3 P / R",
    "Zhao BLEU-4 P / R", "sacreBLEU-4 P / R", "A-bow P / R", "E-bow P / R", "degenerate",
]  # fmt: skip


def _fmt(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _pair(m: dict, key: str) -> str:
    return f"{_fmt(m.get(key + '_p'))} / {_fmt(m.get(key + '_r'))}"


# The paper protocol's table: Table 4's columns (its BLEU-4 beside our BLEU-4 P / R).
PAPER_HEAD = [
    "Model", "PPL", "ELBO-PPL", "KL", "BLEU-1 P / R", "BLEU-2 P / R", "BLEU-3 P / R",
    "BLEU-4 P / R", "A-bow P / R", "E-bow P / R", "degenerate",
]  # fmt: skip


def protocol_name(result: dict) -> str:
    """``"paper"`` for a ``--protocol paper`` result, else ``"project"`` (the rules of a
    project result are under "protocol", those of a paper result under "protocol_rules")."""
    return "paper" if result.get("protocol") == "paper" else "project"


def protocol_rules(result: dict) -> dict:
    return result["protocol_rules"] if protocol_name(result) == "paper" else result["protocol"]


def fine_tuned_from(result: dict) -> str | None:
    """The checkpoint a result's model was fine-tuned from (its training's ``init_from``), or
    None: the paper is compared only with models before any fine-tuning."""
    metadata = protocol_rules(result).get("model", {}).get("checkpoint_metadata") or {}
    return (metadata.get("train_config") or {}).get("init_from")


def beside_table4(results: list[dict]) -> bool:
    """Table 4's rows go beside paper-protocol results of models that were not fine-tuned."""
    return all(protocol_name(r) == "paper" and not fine_tuned_from(r) for r in results)


FINE_TUNED_NOTE = (
    "Fine-tuned from {}: not shown beside the paper's Table 4, which is compared only with "
    "models before any fine-tuning."
)


def metrics_row(name: str, m: dict) -> str:
    """One table row of a result's ``metrics`` (or a baseline's)."""
    degenerate = m.get("degenerate_rate")
    au = m.get("active_units")
    row = [name, _fmt(m.get("ppl")), _fmt(m.get("elbo_ppl")), _fmt(m.get("kl"))]
    row += ["–" if au is None else str(au), _fmt(m.get("mutual_info"))]
    row += [_pair(m, "zhao_bleu3"), _pair(m, "zhao_bleu4"), _pair(m, "bleu4")]
    row += [_pair(m, "a_bow"), _pair(m, "e_bow")]
    row += ["–" if degenerate is None else f"{100 * degenerate:.1f}%"]
    return "| " + " | ".join(row) + " |"


def paper_metrics_row(name: str, m: dict) -> str:
    """One row of the paper protocol's table."""
    degenerate = m.get("degenerate_rate")
    row = [name, _fmt(m.get("ppl")), _fmt(m.get("elbo_ppl")), _fmt(m.get("kl"))]
    row += [_pair(m, f"bleu{n}") for n in range(1, 5)]
    row += [_pair(m, "a_bow"), _pair(m, "e_bow")]
    row += ["–" if degenerate is None else f"{100 * degenerate:.1f}%"]
    return "| " + " | ".join(row) + " |"


def table_header(paper: bool = False) -> list[str]:
    head = PAPER_HEAD if paper else HEAD
    return [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]


def paper_rows() -> list[str]:
    """Table 4's rows; they only ever stand beside results of ``--protocol paper``."""
    rows = []
    for name, (ppl, kl, bleu4, ap, ar, ep, er) in PAPER_TABLE4.items():
        row = [f"{name} (paper)", _fmt(ppl), "–", _fmt(kl), "–", "–", "–", f"{_fmt(bleu4)}"]
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
    """This checkpoint's row and its baselines (next to the paper's Table 4 for a result of
    ``--protocol paper``, on their own otherwise), plus every metric."""
    m = result["metrics"]
    paper = protocol_name(result) == "paper"
    rules = protocol_rules(result)
    variant = rules["model"]["variant"]
    row = paper_metrics_row if paper else metrics_row
    lines = []
    note = subset_note(result)
    if note:
        lines += [note, ""]
    decoding = rules.get("decoding", {})
    if decoding and not decoding.get("plain", True):
        shown = {k: v for k, v in decoding.items() if k != "plain"}
        lines += [f"Decoding {shown}: not the plain protocol of the paper's table.", ""]
    if paper and fine_tuned_from(result):
        lines += [FINE_TUNED_NOTE.format(fine_tuned_from(result)), ""]
    lines += table_header(paper) + (paper_rows() if beside_table4([result]) else [])
    lines.append(row(f"**this checkpoint ({variant})**", m))
    for name, baseline in result.get("baselines", {}).items():
        lines.append(row(f"baseline: {name}", baseline))
    reranked = result.get("responses", {}).get("reranked")
    if reranked:
        o = reranked["options"]
        lines.append(
            row(
                f"**reranked ({o['method']}, K={reranked.get('candidates', o['candidates'])})**",
                reranked["metrics"],
            )
        )
        lines.append(row("baseline: shuffled_context (reranked)", reranked["shuffled_context"]))
    lines += ["", *responses_markdown(result)]
    if paper:
        unscored = result.get("bow_unscored_contexts", 0)
        differences = paper_differences_markdown()
        lines += ["", f"Contexts the bag-of-words scores leave out: {unscored}."]
        lines += ["", PPL_NOTE, "", "Differences from the paper's evaluation:", differences, ""]
    else:
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


def _margin(m: dict | None) -> str:
    if not m:
        return "–"
    lo, hi = m["ci95"]
    return f"{m['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def _share(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _probe(p: dict | None) -> str:
    if not p:
        return "–"
    return f"{p['distinct_per_noise']:.1f} / {p['distinct_per_context']:.1f} / " + (
        f"{100 * p['one_token_rate']:.1f}%"
    )


def responses_markdown(result: dict) -> list[str]:
    """The responses' own measures, plain and reranked side by side: margins over the
    shuffled-context and random-response rows (95% paired bootstrap CI), distinct-n, one-token
    and degenerate shares, requests with all samples distinct, the context-dependence probe."""
    r = result.get("responses")
    if not r:
        return []
    rows = [("plain", result["metrics"], r, r["all_distinct"])]
    if r.get("reranked"):
        x = r["reranked"]
        rows.append((f"reranked ({x['options']['method']})", x["metrics"], x, x["all_distinct"]))
    probe = r.get("context_dependence") or {}
    lines = [
        "| samples | Zhao BLEU-3 R − shuffled context | − random responses | distinct-1 / 2 "
        "(inter) | one-token | degenerate | all distinct | probe: distinct per noise / per "
        f"context / one-token ({probe.get('contexts', '?')} contexts, "
        f"{probe.get('noises', '?')} noises) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m, rec, distinct in rows:
        margins = rec["margins"]
        lines.append(
            f"| {name} | {_margin(margins.get('zhao_bleu3_r vs shuffled_context'))} | "
            f"{_margin(margins.get('zhao_bleu3_r vs random_responses'))} | "
            f"{_fmt(m.get('inter_distinct1'), 3)} / {_fmt(m.get('inter_distinct2'), 3)} | "
            f"{_share(m.get('one_token_rate'))} | {_share(m.get('degenerate_rate'))} | "
            f"{100 * distinct:.1f}% | {_probe(rec.get('context_dependence'))} |"
        )
    human = result.get("baselines", {}).get("random_responses", {}).get("one_token_rate")
    if human is not None:
        lines += ["", f"One-token share of the random human responses (baseline row): "
                  f"{100 * human:.1f}%."]  # fmt: skip
    return lines


def results_table(results: dict[str, dict]) -> str:
    """One table of several results (name -> result JSON) of one protocol, with the baseline
    rows of the first result; the paper's Table 4 rows only for ``--protocol paper`` results."""
    protocols = {protocol_name(r) for r in results.values()}
    if len(protocols) > 1:
        raise ValueError("results of the paper and the project protocol go in separate tables")
    paper = protocols == {"paper"}
    row = paper_metrics_row if paper else metrics_row
    table4 = beside_table4(list(results.values()))
    lines = table_header(paper) + (paper_rows() if table4 else [])
    for name, result in results.items():
        note = " (subset)" if subset_note(result) else ""
        lines.append(row(f"**{name}**{note}", result["metrics"]))
    first = next(iter(results.values()), {})
    for name, baseline in first.get("baselines", {}).items():
        lines.append(row(f"baseline: {name}", baseline))
    return "\n".join(lines)


SPREAD_KEYS = (
    "ppl", "elbo_ppl", "kl", "zhao_bleu3_p", "zhao_bleu3_r", "zhao_bleu4_p", "zhao_bleu4_r",
    "bleu4_p", "bleu4_r",
    "a_bow_p", "a_bow_r", "e_bow_p", "e_bow_r", "degenerate_rate",
)  # fmt: skip


def spread_table(results: dict[str, dict]) -> str:
    """Per metric, the range (max - min) over results of one model trained with different seeds:
    a difference between two models smaller than this is not called a win."""
    lines = ["| metric | " + " | ".join(results) + " | spread (max − min) |"]
    lines.append("|---|" + "---:|" * (len(results) + 1))
    for key in SPREAD_KEYS:
        values = [r["metrics"].get(key) for r in results.values()]
        if any(v is None for v in values):
            continue
        scale = 100 if key == "degenerate_rate" else 1
        cells = [f"{scale * v:.2f}" for v in values] + [
            f"{scale * (max(values) - min(values)):.2f}"
        ]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SEED_KEYS = (
    "ppl", "elbo_ppl", "kl", "active_units", "mutual_info",
    "bleu1_p", "bleu1_r", "bleu2_p", "bleu2_r", "bleu3_p", "bleu3_r", "bleu4_p", "bleu4_r",
    "zhao_bleu3_p", "zhao_bleu3_r", "zhao_bleu4_p", "zhao_bleu4_r",
    "a_bow_p", "a_bow_r", "e_bow_p", "e_bow_r", "g_bow_p", "g_bow_r",
    "intra_distinct1", "intra_distinct2", "inter_distinct1", "inter_distinct2",
    "degenerate_rate",
)  # fmt: skip


def _seed_values(results: list[dict], key: str) -> list[float] | None:
    values = [r["metrics"].get(key) for r in results]
    return None if any(v is None for v in values) else [float(v) for v in values]


def seeds_table(groups: dict[str, list[dict]]) -> str:
    """Per metric, each model's mean ± std (sample std) over its results (one per seed)."""
    names = list(groups)
    lines = [
        "| metric | "
        + " | ".join(f"{n} ({len(groups[n])} seed{'s' * (len(groups[n]) != 1)})" for n in names)
        + " |"
    ]
    lines.append("|---|" + "---:|" * len(names))
    for key in SEED_KEYS:
        cells = []
        for name in names:
            values = _seed_values(groups[name], key)
            if values is None:
                cells.append("–")
                continue
            scale = 100 if key == "degenerate_rate" else 1
            mean, std = mean_std([scale * v for v in values])
            cells.append(f"{mean:.2f} ± {std:.2f}")
        if any(c != "–" for c in cells):
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(
    a: list[dict],
    b: list[dict],
    contexts_a: list[dict | None],
    contexts_b: list[dict | None],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> list[Comparison]:
    """Every metric of SEED_KEYS that both have: A - B, Welch's p over seeds, and the paired
    bootstrap CI over the contexts all of A's and B's results scored (when every result has
    its per-context scores)."""
    runs_a = runs_b = None
    scored = [c for c in (*contexts_a, *contexts_b) if c is not None]
    if len(scored) == len(contexts_a) + len(contexts_b):  # every result has them
        columns = aligned(scored)
        runs_a, runs_b = columns[: len(a)], columns[len(a) :]
    out = []
    for key in SEED_KEYS:
        va, vb = _seed_values(a, key), _seed_values(b, key)
        if va is None or vb is None:
            continue
        ci = None
        if runs_a is not None and runs_b is not None and has_per_context(key, runs_a + runs_b):
            _, low, high = paired_bootstrap(key, runs_a, runs_b, resamples, seed)
            ci = (low, high)
        out.append(Comparison(key, mean_std(va)[0] - mean_std(vb)[0], welch(va, vb), ci))
    return out


def baseline_table(
    contexts: dict[str, list[dict | None]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    row: str = "random_responses",
) -> str | None:
    """Each group against the baseline ``row`` (random test responses) on the reference
    metrics: the row's value, and the group's margin over it (its seeds' mean) with the 95%
    paired bootstrap CI over the contexts. The row's per-context scores come from any result
    that carries them (they do not depend on the model); None when none does. A margin is a
    claim when its CI excludes 0 (the row has no training seeds, so no Welch test)."""
    prefix = baseline_column(row, "")
    source = next(
        (c for cs in contexts.values() for c in cs
         if c is not None and any(k.startswith(prefix) for k in c["scores"])),
        None,
    )  # fmt: skip
    if source is None:
        return None
    cells: dict[str, dict[str, str]] = {}
    values: dict[str, float] = {}
    for name, group in contexts.items():
        scored = [c for c in group if c is not None]
        if len(scored) < len(group):
            continue
        base_run, *runs = aligned([source, *scored])
        for metric in SEED_KEYS:
            column = baseline_column(row, metric)
            if not reference_metric(metric) or column not in base_run:
                continue
            if not has_per_context(metric, runs):
                continue
            base = {metric: base_run[column]}
            diff, low, high = paired_bootstrap(metric, runs, [base], resamples, seed)
            side = "above" if low > 0 else "below" if high < 0 else "level"
            values.setdefault(metric, float(np.nanmean(base_run[column])))
            cells.setdefault(metric, {})[name] = f"{diff:+.2f} [{low:.2f}, {high:.2f}] {side}"
    if not cells:
        return None
    names = [n for n in contexts if any(n in c for c in cells.values())]
    lines = [
        f"**Against the baseline row {row}** (margin, 95% CI over contexts, side)",
        "",
        f"| metric | {row} | " + " | ".join(f"{n} − {row}" for n in names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for metric, by_name in cells.items():
        lines.append(f"| {metric} | {values[metric]:.2f} | "
                     + " | ".join(by_name.get(n, "–") for n in names) + " |")  # fmt: skip
    return "\n".join(lines)


def comparison_table(name_a: str, name_b: str, comparisons: list[Comparison]) -> str:
    """A against B, metric by metric: the difference of the seed means, Welch's p, the 95%
    bootstrap CI of A - B over contexts, and the verdict (a win needs p < 0.05 and a CI that
    excludes 0)."""
    lines = [f"**{name_a} − {name_b}**", "",
             "| metric | A − B | Welch p (seeds) | 95% CI (contexts) | verdict |",
             "|---|---:|---:|---:|---|"]  # fmt: skip
    for c in comparisons:
        scale = 100 if c.metric == "degenerate_rate" else 1
        p = "–" if c.p != c.p else f"{c.p:.3g}" if c.p >= 1e-3 else f"{c.p:.1e}"  # NaN: no test
        ci = "–" if c.ci is None else f"[{scale * c.ci[0]:.2f}, {scale * c.ci[1]:.2f}]"
        lines.append(f"| {c.metric} | {scale * c.difference:+.2f} | {p} | {ci} | "
                     f"{c.verdict(name_a, name_b)} |")  # fmt: skip
    return "\n".join(lines)


def groups_report(
    paths: dict[str, list[str]], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> str:
    """The seeds table of the groups (name -> result files, one per seed) and every pair's
    comparison table."""
    groups = {n: [json.loads(Path(p).read_text()) for p in ps] for n, ps in paths.items()}
    # (the paper protocol scores a subset of the project's contexts: mixed, they would pair)
    if len({protocol_name(r) for rs in groups.values() for r in rs}) > 1:
        raise ValueError("results of the paper and the project protocol go in separate reports")
    contexts = {n: [read_contexts(p) for p in ps] for n, ps in paths.items()}
    parts = [seeds_table(groups)]
    names = list(groups)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            comparisons = compare(groups[a], groups[b], contexts[a], contexts[b], resamples, seed)
            parts.append(comparison_table(a, b, comparisons))
    against_baseline = baseline_table(contexts, resamples, seed)
    if against_baseline is not None:
        parts.append(against_baseline)
    missing = [
        p for n, ps in paths.items() for p, c in zip(ps, contexts[n], strict=True) if c is None
    ]
    if missing:
        parts.append(
            "No per-context scores (no bootstrap CI, so no claim) for: " + ", ".join(missing)
        )
    parts.append(
        f"Welch: scipy.stats.ttest_ind(equal_var=False) over the seeds' values. CI: paired "
        f"bootstrap over the test contexts ({resamples} resamples, seed {seed}), percentile "
        "95% interval of A − B, each model's value averaged over its seeds. A model is better "
        'only when p < 0.05 and the CI excludes 0; otherwise level ("seeds only": no '
        "per-context scores, so never better or worse). degenerate_rate in %."
    )
    return "\n\n".join(parts)


def read_samples(result: dict) -> dict[int, dict]:
    """A result's samples file (``--samples-out X.samples.jsonl``) by example position."""
    path = Path(result["config"].get("samples_out") or "")
    if path.suffix != ".jsonl" or not path.is_file():
        raise ValueError(f"{path}: no JSON-lines samples file (evaluate with --samples-out "
                         f"X.samples.jsonl)")  # fmt: skip
    with path.open(encoding="utf-8") as f:
        return {r["example"]: r for r in map(json.loads, f)}


def samples_markdown(results: dict[str, dict], count: int, shown: int = 3, context: int = 3) -> str:
    """``count`` examples spread evenly over the split, with each model's first ``shown``
    samples for the same context (all results must cover the same split)."""
    samples = {name: read_samples(result) for name, result in results.items()}
    common = sorted(set.intersection(*(set(s) for s in samples.values())))
    picks = sorted({common[i * len(common) // count] for i in range(count)}) if common else []
    lines = []
    for position in picks:
        first = next(iter(samples.values()))[position]
        lines += [f"**Example {position}** (dialog {first['dialog']}, turn {first['turn']})", ""]
        turns = first["context"][-context:]
        if len(first["context"]) > context:
            lines.append("> …  ")
        lines += [f"> {speaker}: {text}  " for speaker, text in turns] or ["> (start of dialog)  "]
        lines += [f"> **reference {first['responder']}:** {first['reference']}", ""]
        for name, by_position in samples.items():
            drawn = by_position[position]["samples"][:shown]
            lines.append(f"- {name}: " + " · ".join(d or "(empty)" for d in drawn))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m eval.report",
        description="Print one markdown table of several evaluation results "
        "(python -m eval.switchboard JSON files), next to the paper's Table 4.",
    )
    parser.add_argument("results", nargs="*", help="result JSON files; a row each")
    parser.add_argument(
        "--group",
        nargs="+",
        action="append",
        default=[],
        metavar=("NAME", "RESULT"),
        help="instead of the table: a model and its results, one per training seed (repeat "
        "for each model); prints mean ± std per metric and, for every pair of models, Welch's "
        "p over seeds and a paired bootstrap CI over test contexts",
    )
    parser.add_argument("--bootstrap-resamples", type=int, default=BOOTSTRAP_RESAMPLES)
    parser.add_argument("--bootstrap-seed", type=int, default=0)
    parser.add_argument(
        "--spread", action="store_true",
        help="instead of the table: the range of each metric over the results (one model, "
        "several seeds)",
    )  # fmt: skip
    parser.add_argument(
        "--samples", type=int, default=0, metavar="N",
        help="also N examples with each model's first samples for the same context (needs each "
        "result's --samples-out X.samples.jsonl file)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.group:
        if any(len(g) < 2 for g in args.group):
            parser.error("--group needs a name and at least one result file")
        try:
            paths = {g[0]: g[1:] for g in args.group}
            print(groups_report(paths, args.bootstrap_resamples, args.bootstrap_seed))
        except (OSError, ValueError, KeyError) as e:
            parser.exit(2, f"python -m eval.report: {e}\n")
        return 0
    if not args.results:
        parser.error("give result files, or --group")
    try:
        results = {Path(p).stem: json.loads(Path(p).read_text()) for p in args.results}
        print(spread_table(results) if args.spread else results_table(results))
        if args.samples:
            print("\n" + samples_markdown(results, args.samples))
    except (OSError, ValueError, KeyError) as e:
        parser.exit(2, f"python -m eval.report: {e}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
