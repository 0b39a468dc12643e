"""The latent space dimension by dimension: each BN-CVAE's gamma_i, KL and mutual information.

    python -m eval.latent_dims learned=runs/bn-cvae-learned/best fixed=runs/bn-cvae-g0.3/best \
        --split test --out docs/img/learned-gamma.png --json-out results/learned-gamma.dims.json

For each checkpoint (``label=directory``, or a directory), over the examples of a split of the
prepared corpus with the posterior in evaluation mode (running BN statistics), per latent
dimension i:

* ``gamma``: the BN scale on the posterior mean (a flat line for ``bn_gamma_mode fixed``);
* ``kl_standard``: E[KL(q(z_i|c,x) || N(0,1))] and its Eq. 6 share ``bound`` =
  (gamma_i^2 + beta_i^2) / 2 (Zhu et al. 2020; eval/latent.py);
* ``kl``: E[KL(q(z_i|c,x) || p(z_i|c))], the term of the training objective;
* ``mean_variance``: Var over examples of E_q[z_i] (active if > 0.01, eval/latent.py);
* ``mutual_info``: I(x; z_i) estimated as eval/latent.py estimates it for the whole z.

The picture shows each quantity sorted from the largest down, one line per checkpoint, and each
dimension's KL to the prior against its gamma_i; the printed table gives the totals (sum over i of KL and bound, active units, the sum of the
per-dimension MIs and the MI of the whole z).

A ``.json`` file written by ``--json-out`` stands in for its checkpoints (``label=FILE`` renames
a file's only record), so a plot can be drawn again after the checkpoints are gone:

    python -m eval.latent_dims learned=results/learned-s1.dims.json fixed=results/fixed.dims.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from eval.config import repo_relative  # noqa: E402
from eval.latent import mutual_information as whole_mi  # noqa: E402
from eval.latent import posterior_mean_variance  # noqa: E402
from model.checkpoint import CheckpointError, load_pretrained  # noqa: E402
from model.cvae import gaussian_kl  # noqa: E402
from model.files import atomic_path  # noqa: E402
from training.batching import eval_batches  # noqa: E402
from training.corpus import CorpusError  # noqa: E402
from training.prepare import load_prepared  # noqa: E402

ACTIVE = 0.01  # eval/latent.py's threshold


def per_dimension_kl(mu_q, logvar_q, mu_p=None, logvar_p=None) -> torch.Tensor:
    """[N, d] KL of each dimension (gaussian_kl over a last axis of size 1)."""
    args = [t.unsqueeze(-1) for t in (mu_q, logvar_q)]
    if mu_p is not None:
        args += [mu_p.unsqueeze(-1), logvar_p.unsqueeze(-1)]
    return gaussian_kl(*args)


@torch.no_grad()
def latent_dimensions(checkpoint: str | Path, data: str | Path, split: str, limit: int = 0,
                      seed: int = 0, progress: bool = True) -> dict:  # fmt: skip
    """Per-dimension diagnostics of ``checkpoint`` on ``split`` of the prepared corpus ``data``
    (the first ``limit`` examples' dialogs when > 0): the module docstring's quantities as lists,
    and ``totals``."""
    model, vocab = load_pretrained(checkpoint)
    corpus = load_prepared(data)
    if corpus.tokenizer != model.config.tokenizer:
        raise CorpusError(f"{data}: tokenizer {corpus.tokenizer}, the checkpoint's is "
                          f"{model.config.tokenizer}")  # fmt: skip
    dialogs = [d.turns() for d in getattr(corpus, split)]
    if limit > 0:
        kept, total = [], 0
        for d in dialogs:
            if total >= limit:
                break
            kept.append(d)
            total += len(d)
        dialogs = kept
    cfg = model.config
    columns: dict[str, list[torch.Tensor]] = {"mu": [], "logvar": [], "kl": []}
    batches = list(eval_batches(dialogs, vocab, 4, cfg.max_context, cfg.max_utt_len))
    for batch in tqdm(batches, desc=str(checkpoint), disable=not progress):
        c = model.encode_context(batch)
        mu_q, logvar_q = model.posterior(batch, c=c)
        mu_p, logvar_p = model.prior_net(c)
        columns["mu"].append(mu_q.double())
        columns["logvar"].append(logvar_q.double())
        columns["kl"].append(per_dimension_kl(mu_q.double(), logvar_q.double(),
                                              mu_p.double(), logvar_p.double()))  # fmt: skip
    mu, logvar, kl = (torch.cat(columns[k]) for k in ("mu", "logvar", "kl"))
    generator = torch.Generator().manual_seed(seed)
    mi = [whole_mi(mu[:, [i]], logvar[:, [i]], generator=generator) for i in range(mu.shape[1])]
    gamma = model.recognition.bn_gamma()
    bn = model.recognition.mu_bn
    out: dict = {
        "checkpoint": repo_relative(checkpoint),
        "variant": cfg.variant,
        "bn_gamma": cfg.bn_gamma if cfg.use_bn else None,
        "bn_gamma_mode": cfg.bn_gamma_mode if cfg.use_bn else None,
        "posterior_var_dropout": cfg.posterior_var_dropout,
        "split": split,
        "examples": int(mu.shape[0]),
        "gamma": None if gamma is None else gamma.double().tolist(),
        "beta": None if bn is None else bn.bias.double().tolist(),
        "kl_standard": per_dimension_kl(mu, logvar).mean(0).tolist(),
        "kl": kl.mean(0).tolist(),
        "mean_variance": posterior_mean_variance(mu).tolist(),
        "mutual_info": mi,
    }
    bound = None
    if gamma is not None and bn is not None:
        bound = (0.5 * (gamma.double() ** 2 + bn.bias.double() ** 2)).tolist()
    out["bound"] = bound
    out["totals"] = {
        "kl": sum(out["kl"]),
        "kl_standard": sum(out["kl_standard"]),
        "bound": None if bound is None else sum(bound),
        "active_units": sum(v > ACTIVE for v in out["mean_variance"]),
        "mutual_info_sum_of_dims": sum(mi),
        "mutual_info": whole_mi(mu, logvar, generator=torch.Generator().manual_seed(seed)),
        "gamma_min": None if gamma is None else min(out["gamma"]),
        "gamma_max": None if gamma is None else max(out["gamma"]),
    }
    return out


PANELS = (
    ("gamma", "BN scale gamma_i (sorted)"),
    ("kl_standard", "E[KL(q(z_i|c,x) || N(0,1))] (nats, sorted)"),
    ("kl", "E[KL(q(z_i|c,x) || p(z_i|c))] (nats, sorted)"),
    ("mutual_info", "I(x; z_i) (nats, sorted)"),
)


def read_records(path: Path, label: str) -> dict[str, dict]:
    """The records of a ``--json-out`` file, the only one of them renamed ``label`` if given;
    CheckpointError (one line naming the file) when it is not such a file."""
    try:
        records = json.loads(path.read_text())
        if (
            not isinstance(records, dict)
            or not records
            or not all(
                isinstance(r, dict) and "totals" in r and "split" in r for r in records.values()
            )
        ):
            raise ValueError("not a record written by --json-out")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    if label:
        if len(records) != 1:
            raise CheckpointError(f"{path}: {len(records)} records ({', '.join(records)}); "
                                  f"label=FILE renames a file's only record")  # fmt: skip
        records = {label: next(iter(records.values()))}
    return records


def plot(results: dict[str, dict], path: Path) -> None:
    """One panel per quantity, each checkpoint's values sorted from the largest down; the
    Eq. 6 per-dimension bounds, sorted the same way, dashed in the KL(q || N(0,1)) panel."""
    fig, all_axes = plt.subplots(1, len(PANELS) + 1, figsize=(5 * (len(PANELS) + 1), 4.2))
    axes, scatter = all_axes[:-1], all_axes[-1]
    for n, (label, r) in enumerate(results.items()):
        color = f"C{n}"
        for ax, (key, _) in zip(axes, PANELS, strict=True):
            values = r.get(key)
            if values is None:
                continue
            order = sorted(range(len(values)), key=lambda i: -values[i])
            ax.plot([values[i] for i in order], "-", color=color, label=label)
            if key == "kl" and r.get("gamma") is not None:  # which dimensions carry the KL
                scatter.plot(r["gamma"], values, "o", color=color, markersize=3, label=label)
            if key == "kl_standard" and r.get("bound") is not None:
                ax.plot([r["bound"][i] for i in order], "--", color=color,
                        label=f"{label}: Eq. 6 bound (γ_i² + β_i²)/2")  # fmt: skip
    for ax, (key, title) in zip(axes, PANELS, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("latent dimensions, by rank")
        ax.grid(alpha=0.3, which="both")
        if key != "gamma":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    scatter.set_title("E[KL(q(z_i|c,x) || p(z_i|c))] against gamma_i", fontsize=10)
    scatter.set_xlabel("gamma_i")
    scatter.set_yscale("log")
    scatter.grid(alpha=0.3, which="both")
    scatter.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def totals_table(results: dict[str, dict]) -> str:
    lines = [
        "| checkpoint | gamma mode | γ min / max | Σ KL(q‖p) | Σ KL(q‖N(0,I)) | Eq. 6 bound | "
        "AU | Σ_i I(x; z_i) | I(x; z) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(x) -> str:
        return "–" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)

    for label, r in results.items():
        t = r["totals"]
        lines.append(
            f"| {label} | {r['bn_gamma_mode'] or r['variant']} | "
            f"{fmt(t['gamma_min'])} / {fmt(t['gamma_max'])} | {fmt(t['kl'])} | "
            f"{fmt(t['kl_standard'])} | {fmt(t['bound'])} | {t['active_units']} | "
            f"{fmt(t['mutual_info_sum_of_dims'])} | {fmt(t['mutual_info'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.latent_dims",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "checkpoints", nargs="+",
        help="checkpoint directories or --json-out files, each as PATH or label=PATH",
    )  # fmt: skip
    parser.add_argument("--data", default="runs/data/switchboard", help="a prepared corpus")
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"))
    parser.add_argument("--limit", type=int, default=0, help="about this many examples (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MI estimate's draws")
    parser.add_argument("--out", type=Path, default=Path("docs/img/latent-dims.png"))
    parser.add_argument("--json-out", type=Path, help="also the per-dimension values as JSON")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    named = [spec.rpartition("=")[::2] for spec in args.checkpoints]  # (label or "", path)
    results: dict[str, dict] = {}
    try:
        for label, d in named:
            if d.endswith(".json"):
                results.update(read_records(Path(d), label))
            else:
                results[label or Path(d).name] = latent_dimensions(
                    d, args.data, args.split, args.limit, args.seed, progress=not args.no_progress
                )  # fmt: skip
    except (CheckpointError, CorpusError) as e:
        print(f"python -m eval.latent_dims: {e}", file=sys.stderr)
        return 2
    splits = {r["split"] for r in results.values()}
    if len(splits) > 1:
        print(f"python -m eval.latent_dims: records of different splits ({', '.join(sorted(splits))})",
              file=sys.stderr)  # fmt: skip
        return 2
    plot(results, args.out)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(results, indent=1) + "\n")
    print(totals_table(results))
    first = next(iter(results.values()))
    print(f"\n{first['split']}: {first['examples']} examples; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
