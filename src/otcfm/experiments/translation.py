"""Unpaired translation between class groups in an autoencoder's latent space.

The paper's CelebA experiment (Tong et al. 2024, §5.4, Table 5) on data that can be had here.

``otcfm bench translation --dataset fashion-mnist`` trains, per seed, one autoencoder on the
training images of every class in the pairs, then one latent flow per (pair, method) with
:func:`otcfm.translate.translate`, and scores held-out images of the source class translated
to the target class: latent MMD against held-out target codes, the distance each code moved,
and the share of decoded images that the committed feature network of the data set
(:mod:`otcfm.experiments.feature_nets`) puts in the target class. ``--dataset digits
--quick`` is the few-minute version. Writes ``OUT/translation.json`` (one record per (pair,
method, seed)), ``OUT/translation.md`` and ``OUT/translation/*.png`` (input, then each
method's translation of the same held-out images).

``otcfm translate`` is the same pipeline on a user's own labelled images (any image spec of
``otcfm train``, or CelebA with an attribute), for one pair of groups and one method.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from otcfm.data.images import ImageSet, load_images
from otcfm.experiments._machine import machine
from otcfm.train.checkpoint import write_text_atomic
from otcfm.train.datasets import stream
from otcfm.translate import (
    AutoEncoderFit,
    FlowSpec,
    class_indices,
    fit_autoencoder,
    group_images,
    load_autoencoder,
    save_autoencoder,
    translate,
)

__all__ = ["PAIRS", "PROTOCOLS", "Protocol", "main", "run_bench", "translate_main"]

#: Directed class pairs (source, target) of each data set; the reverse is run as well.
PAIRS = {
    "fashion-mnist": (("T-shirt/top", "Shirt"), ("Pullover", "Coat"), ("Sneaker", "Ankle boot")),
    "digits": (("3", "8"), ("4", "9"), ("1", "7")),
}
METHODS = ("icfm", "otcfm", "sbcfm")
SEEDS = (0, 1, 2)
GRID_COLUMNS = 12


@dataclass(frozen=True)
class Protocol:
    """Budgets of one data set.

    The autoencoder (``latent``, ``ae_width``, ``ae_steps`` of ``ae_batch``), the flows
    (``flow_steps`` of ``flow_batch``, MLP ``flow_width``), at most ``n_test`` held-out images per
    class, the held-out share of a set without a test split (``test_fraction``).
    """

    latent: int
    ae_width: int
    ae_steps: int
    ae_batch: int
    flow_steps: int
    flow_batch: int
    flow_width: int
    n_test: int
    test_fraction: float = 0.2


#: The budget of each (data set, quick) case: sizes, steps, batches and held-out counts.
PROTOCOLS = {
    ("fashion-mnist", False): Protocol(16, 32, 3_000, 128, 5_000, 256, 256, 1_000),
    ("fashion-mnist", True): Protocol(16, 32, 1_000, 128, 1_500, 256, 256, 500),
    ("digits", False): Protocol(8, 16, 2_000, 128, 3_000, 64, 128, 100),
    ("digits", True): Protocol(8, 16, 800, 128, 1_000, 64, 128, 100),
}


# --------------------------------------------------------------------------- data
def split_sets(spec: str, seed: int, test_fraction: float) -> tuple[ImageSet, ImageSet]:
    """Split a data set into training and held-out images.

    Training and held-out images: the set's own test split where it has one (IDX,
    CIFAR-10), else a random ``test_fraction`` of it drawn from ``stream(seed, "split")``.
    """
    train = load_images(spec, split="train")
    try:
        return train, load_images(spec, split="test")
    except ValueError:
        pass
    perm = torch.randperm(len(train), generator=stream(seed, "translation", "split"))
    n_test = max(1, round(test_fraction * len(train)))
    if n_test >= len(train):
        raise ValueError(f"{train.name}: too few images to hold {test_fraction:.0%} out")

    def part(idx: Tensor) -> ImageSet:
        labels = None if train.labels is None else train.labels[idx]
        return ImageSet(train.images[idx], labels, train.classes, train.name,
                        levels=train.levels)

    return part(perm[n_test:]), part(perm[:n_test])


def autoencoder_for(images: Tensor, protocol: Protocol, seed: int, folder: Path,
                    progress: bool = False) -> AutoEncoderFit:
    """Load the autoencoder saved in ``folder`` if it matches, else fit and save a new one.

    The autoencoder saved in ``folder`` when its record matches the protocol and seed,
    else a new fit (saved there).
    """
    want = {"latent": protocol.latent, "width": protocol.ae_width, "steps": protocol.ae_steps,
            "seed": seed, "n_images": int(images.shape[0])}
    if (folder / "autoencoder.json").is_file():
        fit = load_autoencoder(folder)
        if all(fit.record.get(k) == v for k, v in want.items()):
            return fit
        raise ValueError(f"{folder} holds an autoencoder of another protocol "
                         f"({ {k: fit.record.get(k) for k in want} }): use another folder")
    fit = fit_autoencoder(images, latent=protocol.latent, width=protocol.ae_width,
                          steps=protocol.ae_steps, batch_size=protocol.ae_batch, seed=seed,
                          progress=progress)
    fit.record["n_images"] = int(images.shape[0])
    save_autoencoder(fit, folder)
    return fit


def _slug(source: str, target: str) -> str:
    clean = "".join(c if c.isalnum() else "-" for c in f"{source}-to-{target}".lower())
    return "-".join(p for p in clean.split("-") if p)


def _held_out(images: Tensor, n: int) -> Tensor:
    return images[:n]


# --------------------------------------------------------------------------- the bench
def run_bench(dataset: str, *, quick: bool, seeds: tuple[int, ...], methods: tuple[str, ...],
              runs: Path, progress: bool = False) -> tuple[list[dict[str, Any]], dict]:
    """Run every (pair, method, seed) of ``dataset``.

    Every (pair, method, seed) of ``dataset``; returns the records and the seed-0
    translations of the first held-out images (for the grids).
    """
    from otcfm.experiments.feature_nets import load_feature_net

    protocol = PROTOCOLS[(dataset, quick)]
    pairs = [p for a, b in PAIRS[dataset] for p in ((a, b), (b, a))]
    classifier, _ = load_feature_net(dataset)
    records: list[dict[str, Any]] = []
    grids: dict[str, dict[str, Tensor]] = {}
    for seed in seeds:
        train, test = split_sets(dataset, seed, protocol.test_fraction)
        classes = sorted({k for pair in pairs for c in pair for k in class_indices(train, [c])})
        fit = autoencoder_for(group_images(train, classes), protocol, seed,
                              runs / dataset / f"seed{seed}" / "autoencoder", progress)
        for source, target in pairs:
            src, tgt = class_indices(train, [source]), class_indices(train, [target])
            src_test = _held_out(group_images(test, src), protocol.n_test)
            tgt_test = _held_out(group_images(test, tgt), protocol.n_test)
            folder = runs / dataset / f"seed{seed}" / _slug(source, target)
            for method in methods:
                spec = FlowSpec(method=method, steps=protocol.flow_steps,
                                batch_size=protocol.flow_batch, width=protocol.flow_width,
                                seed=seed)
                started = time.perf_counter()
                result = translate(fit, group_images(train, src), group_images(train, tgt),
                                   src_test, tgt_test, spec, folder, classifier=classifier,
                                   target_classes=tgt, progress=progress)
                summary = json.loads((result.run_dir / "metrics.json").read_text())
                records.append({
                    "dataset": dataset, "pair": f"{source} -> {target}", "method": method,
                    "seed": seed, **result.scores, "ae_val_mse": fit.val_loss,
                    "flow_train_seconds": summary["train"]["train_seconds"],
                    "seconds": time.perf_counter() - started,
                })
                print(f"{dataset} seed {seed} {source} -> {target} {method}: MMD "
                      f"{result.scores['mmd']:.4f} moved {result.scores['moved']:.3f} target "
                      f"rate {result.scores.get('target_rate', math.nan):.3f}", flush=True)
                if seed == seeds[0]:
                    key = f"{source} -> {target}"
                    grids.setdefault(key, {"input": src_test[:GRID_COLUMNS]})
                    grids[key][method] = result.images[:GRID_COLUMNS]
    return records, grids


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def _fmt(values: list[float], digits: int = 3) -> str:
    mean, se = _mean_se(values)
    return f"{mean:.{digits}f}" + ("" if math.isnan(se) else f" ± {se:.{digits}f}")


def _paired(records: list[dict[str, Any]], pair: str, a: str, b: str, key: str) -> list[float]:
    """Per-seed differences ``a - b`` of ``key`` on ``pair``, over the seeds both ran."""
    by = {(r["method"], r["seed"]): r[key] for r in records if r["pair"] == pair}
    return [by[(a, s)] - by[(b, s)] for (m, s) in by if m == a and (b, s) in by]


def _less_line(records: list[dict[str, Any]], pair: str, key: str) -> str | None:
    """Whether OT-CFM's ``key`` (moved or moved_sq) is below I-CFM's on ``pair``, with numbers.

    None when either method lacks the score (records made before it existed).
    """
    rows = [r for r in records if r["pair"] == pair]
    ot = [r[key] for r in rows if r["method"] == "otcfm" and key in r]
    ind = [r[key] for r in rows if r["method"] == "icfm" and key in r]
    if not ot or not ind:
        return None
    less = _mean_se(ot)[0] < _mean_se(ind)[0]
    if len(ot) == 1 and len(ind) == 1:  # one seed: the spread over its images
        se = {r["method"]: r[f"{key}_se"] for r in rows}
        text = (f"{ot[0]:.3f} ± {se['otcfm']:.3f} against {ind[0]:.3f} ± "
                f"{se['icfm']:.3f}, standard errors over the held-out images")
    else:
        text = f"{_fmt(ot)} against {_fmt(ind)}"
        paired = _paired(records, pair, "otcfm", "icfm", key)
        if len(paired) > 1:
            text += f"; paired by seed, OT-CFM minus I-CFM {_fmt(paired)}"
    return f"{'yes' if less else 'NO'} ({text})"


def render(report: dict[str, Any]) -> str:
    """The page, a function of the JSON record."""
    meta, records = report["meta"], report["records"]
    methods = list(dict.fromkeys(r["method"] for r in records))
    lines = [
        f"# Unpaired translation in a latent space: {meta['dataset']}",
        "",
        f"- Command: `{meta['command']}`",
        f"- Machine: {meta['machine']}; {meta['date']}; {meta['wall_seconds'] / 60:.1f} min "
        "wall for this invocation (autoencoders and flows that a previous invocation trained "
        "in the same runs folder, if any, are reused); the flows' training time summed over "
        f"the records: {sum(r.get('flow_train_seconds', 0.0) for r in records) / 60:.1f} min.",
        f"- Methods: {', '.join(methods)}. Seeds {', '.join(map(str, meta['seeds']))}; protocol: "
        + ", ".join(f"{k} {v}" for k, v in meta["protocol"].items()) + ".",
        "- Per seed one autoencoder (latent codes standardised per coordinate) on the "
        "training images of every class below; per pair and method one flow from the source "
        "class's codes to the target class's (sigma 0.1, EMA weights, 100 Euler steps). "
        "Scored on held-out images: squared MMD between translated and held-out target codes "
        "(RBF mixture of bandwidths 0.01 to 100, docs/reference.md §3), the mean distance a "
        "code moved (standardised units) and its mean square (the cost OT minimises), and the "
        "share of decoded translations the data "
        "set's committed feature network classifies as the target class. Mean ± standard "
        "error over seeds.",
        "- The paper's CelebA numbers (MMD, 128-d VAE latents, other kernel) are not "
        "comparable in value; the claim under test is the ordering: OT-CFM moves the codes "
        "less than I-CFM at a similar MMD.",
        "",
        "| pair | method | MMD | moved | moved² | target rate |",
        "|---|---|---|---|---|---|",
    ]
    for pair in dict.fromkeys(r["pair"] for r in records):
        for method in methods:
            rows = [r for r in records if r["pair"] == pair and r["method"] == method]
            if not rows:
                continue
            rate = [r["target_rate"] for r in rows if "target_rate" in r]
            square = [r["moved_sq"] for r in rows if "moved_sq" in r]
            lines.append(f"| {pair} | {method} | {_fmt([r['mmd'] for r in rows], 4)} | "
                         f"{_fmt([r['moved'] for r in rows])} | "
                         f"{_fmt(square) if len(square) == len(rows) else '-'} | "
                         f"{_fmt(rate) if rate else '-'} |")
    if {"icfm", "otcfm"} <= set(methods):
        lines += ["", "## Does OT-CFM move the codes less than I-CFM?", "",
                  "OT-CFM's flow approximates the optimal transport map for the squared "
                  "distance, so the mean squared distance moved (moved²) is the quantity it "
                  "lowers; the mean distance (moved) usually follows but need not.", ""]
        for key, label in (("moved", "distance"), ("moved_sq", "squared distance")):
            for pair in dict.fromkeys(r["pair"] for r in records):
                line = _less_line(records, pair, key)
                if line:
                    lines.append(f"- {pair}, {label}: {line}")
    figures = meta.get("figures", [])
    if figures:
        lines += ["", "## Held-out inputs and their translations (seed "
                  f"{meta['seeds'][0]}; rows: input, " + ", ".join(methods) + ")", ""]
        lines += [f"![{f['pair']}]({f['path']})" for f in figures]
    return "\n".join(lines) + "\n"


def image_rows(rows: dict[str, Tensor], path: str | Path, title: str = "") -> Path:
    """Draw rows of images one above the other, each labelled on its left.

    Rows of images one above the other, each labelled on its left (label -> images
    (N, C, H, W) in [-1, 1], N the same for every row): held-out inputs, then each method's
    translation of the same inputs. Grey images in grey, RGB in colour.
    """
    from otcfm.plots import _plt, _save, image_grid

    if not rows:
        raise ValueError("rows must hold at least one row of images")
    counts = {int(images.shape[0]) for images in rows.values()}
    if len(counts) != 1:
        raise ValueError(f"every row needs the same number of images, got {sorted(counts)}")
    plt = _plt()
    n = counts.pop()
    fig, axes = plt.subplots(len(rows), 1, figsize=(0.75 * n + 1.2, 0.85 * len(rows) + 0.4),
                             squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows.items(), strict=True):
        grid = image_grid(images, nrow=n)
        if grid.shape[0] == 1:
            ax.imshow(grid[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def write_outputs(records: list[dict[str, Any]], grids: dict, meta: dict[str, Any],
                  out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for pair, rows in grids.items():
        path = out / "translation" / f"{meta['dataset']}-{_slug(*pair.split(' -> '))}.png"
        shown = {k: rows[k] for k in ("input", *meta["methods"]) if k in rows}
        image_rows(shown, path, title=f"{meta['dataset']}: {pair}")
        figures.append({"pair": pair, "path": str(path.relative_to(out))})
    meta = {**meta, "figures": figures}
    report = {"meta": meta, "records": records}
    written = [write_text_atomic(json.dumps(report, indent=1) + "\n", out / "translation.json")]
    written.append(write_text_atomic(render(report), out / "translation.md"))
    return written + [out / f["path"] for f in figures]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    """``otcfm bench translation``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = _Parser(prog="otcfm bench translation", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=sorted(PAIRS))
    p.add_argument("--quick", action="store_true", help="smaller budgets and one seed")
    p.add_argument("--seeds", help="comma-separated seeds (default 0,1,2; --quick: 0)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated methods (default {','.join(METHODS)})")
    p.add_argument("--runs", type=Path, help="cache of runs (default runs/translation"
                   "[-quick])")
    p.add_argument("--out", type=Path, help="report folder (default: the runs folder)")
    args = p.parse_args(argv)
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else (
            (0,) if args.quick else SEEDS)
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        runs = args.runs or Path("runs/translation-quick" if args.quick else "runs/translation")
        started = time.perf_counter()
        records, grids = run_bench(args.dataset, quick=args.quick, seeds=seeds,
                                   methods=methods, runs=runs, progress=False)
        meta = {
            "command": " ".join(["otcfm bench translation", *argv]),
            "dataset": args.dataset, "quick": bool(args.quick), "seeds": list(seeds),
            "methods": list(methods),
            "protocol": asdict(PROTOCOLS[(args.dataset, args.quick)]),
            "wall_seconds": time.perf_counter() - started, "machine": machine(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }
        written = write_outputs(records, grids, meta, args.out or runs)
    except (ValueError, FileNotFoundError) as err:
        print(f"otcfm bench translation: error: {err}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(w) for w in written))
    return 0


def translate_main(argv: list[str] | None = None) -> int:
    """``otcfm translate``: one pair of groups, one method, on a user's labelled images."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = _Parser(prog="otcfm translate", description="Translate held-out images of one group "
                "of classes into another through a flow between their autoencoder codes; "
                "writes OUT/translation.json, OUT/translation.png and the runs behind them.")
    p.add_argument("--data", required=True, help="image spec (digits, fashion-mnist[:DIR], "
                   "mnist:DIR, cifar10:DIR, a folder with one subfolder per class, or "
                   "celeba:DIR with --attribute)")
    p.add_argument("--attribute", help="celeba: the attribute whose absence (0) and "
                   "presence (1) are the classes")
    p.add_argument("--from", dest="source", required=True,
                   help="comma-separated source classes (names or indices)")
    p.add_argument("--to", dest="target", required=True,
                   help="comma-separated target classes (names or indices)")
    p.add_argument("--method", default="otcfm", help="icfm, otcfm, sbcfm, ... (default otcfm)")
    p.add_argument("--latent", type=int, default=16, help="autoencoder code size (default 16)")
    p.add_argument("--ae-steps", type=int, default=3_000,
                   help="autoencoder optimizer steps (default 3000)")
    p.add_argument("--flow-steps", type=int, default=5_000,
                   help="flow optimizer steps (default 5000)")
    p.add_argument("--batch-size", type=int, default=256, help="flow batch (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the autoencoder "
                   "and the flow (default 0)")
    p.add_argument("--out", type=Path, required=True, help="folder of this translation")
    args = p.parse_args(argv)
    for flag in ("latent", "ae_steps", "flow_steps", "batch_size"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be a positive integer, "
                    f"got {getattr(args, flag)}")
    if not 0 <= args.seed < 2**63:
        p.error(f"--seed must be an integer in [0, 2^63), got {args.seed}")
    try:
        protocol = Protocol(args.latent, 32, args.ae_steps, 128, args.flow_steps,
                            args.batch_size, 256, 1_000)
        if args.data.partition(":")[0] == "celeba":
            from otcfm.data.celeba import celeba

            if not args.attribute:
                raise ValueError("celeba needs --attribute (e.g. Smiling)")
            root = args.data.partition(":")[2]
            train = celeba(root, split="train", attribute=args.attribute, limit=20_000)
            test = celeba(root, split="test", attribute=args.attribute, limit=2_000)
        else:
            if args.attribute:
                raise ValueError("--attribute applies to celeba only")
            train, test = split_sets(args.data, args.seed, protocol.test_fraction)
        src = class_indices(train, [c for c in args.source.split(",") if c])
        tgt = class_indices(train, [c for c in args.target.split(",") if c])
        if set(src) & set(tgt):
            raise ValueError("--from and --to share a class")
        fit = autoencoder_for(group_images(train, src + tgt), protocol, args.seed,
                              args.out / "autoencoder", progress=True)
        spec = FlowSpec(method=args.method, steps=args.flow_steps, batch_size=args.batch_size,
                        seed=args.seed)
        src_test = _held_out(group_images(test, src), protocol.n_test)
        result = translate(fit, group_images(train, src), group_images(train, tgt), src_test,
                           _held_out(group_images(test, tgt), protocol.n_test), spec,
                           args.out, progress=True)
    except (ValueError, FileNotFoundError) as err:
        print(f"otcfm translate: error: {err}", file=sys.stderr)
        return 2
    k = min(GRID_COLUMNS, src_test.shape[0])
    image_rows({"input": src_test[:k], args.method: result.images[:k]},
                          args.out / "translation.png",
                          title=f"{args.source} -> {args.target} ({args.method})")
    record = {"data": args.data, "from": args.source, "to": args.target,
              "method": args.method, "seed": args.seed, **result.scores,
              "autoencoder_val_mse": fit.val_loss, "run": str(result.run_dir)}
    write_text_atomic(json.dumps(record, indent=1) + "\n", args.out / "translation.json")
    print(f"MMD {result.scores['mmd']:.4f}, moved {result.scores['moved']:.3f}; wrote "
          f"{args.out / 'translation.json'} and {args.out / 'translation.png'}")
    return 0
