"""Speed of the paper's CIFAR-10 training step: steps/s, the coupling's share, peak memory.

The step is the image recipe's: ``otcfm.train.ImageObjective`` in the engine with the UNet
preset ``cifar10`` (35.7 M parameters), AdamW lr 2e-4 with warmup, EMA 0.9999, gradient
clipping at 1, batch 128, bf16 autocast on CUDA, for I-CFM and OT-CFM (exact and approximate
plans on the flattened 3,072-d images). Each method is timed over ``--steps`` steps after
``--warmup-steps`` untimed ones; the coupling's share is the time inside the coupling call over
the step time; peak memory is ``torch.cuda.max_memory_allocated`` (CUDA only).

Images: CIFAR-10 read from ``--data cifar10:DIR`` (the python batches; nothing is
downloaded). Without it the images are uniform noise of CIFAR-10's shape and the record says
so: step time and memory do not depend on what the pixels are, the loss values do.

Sized to finish in under 5 minutes on one GPU (the default 30 timed steps per method);
``--device cpu --preset digits --steps 2`` is the smoke test's run. Writes ``--out`` (JSON).

Usage (on a GPU machine):
    python benchmarks/cifar_step.py --data cifar10:/path/to/data --out cifar_step.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import torch

from otcfm.data.images import ImageSet, load_images
from otcfm.matchers import matcher
from otcfm.models import UNet
from otcfm.train import Engine, ImageObjective, LoopSettings

METHODS = {  # label -> (preset, coupling spec or None for the preset's)
    "icfm": ("icfm", None),
    "otcfm-exact": ("otcfm", "exact"),
    "otcfm-approx": ("otcfm", "approx"),
}
SHAPES = {"cifar10": (3, 32, 32), "digits": (1, 8, 8), "fashion-mnist": (1, 28, 28)}


def images(spec: str | None, shape: tuple[int, ...], n: int) -> tuple[ImageSet, str]:
    if spec:
        return load_images(spec, split="train"), spec
    g = torch.Generator().manual_seed(0)
    noise = torch.rand((n, *shape), generator=g) * 2 - 1
    return ImageSet(noise, None, (), "noise"), "uniform noise of the preset's shape"


def time_method(label: str, data: ImageSet, preset: str, *, batch: int, steps: int,
                warmup: int, device: torch.device) -> dict:
    name, spec = METHODS[label]
    fm = matcher(name, coupling=spec) if spec else matcher(name)
    obj = ImageObjective(data, fm, batch_size=batch, seed=0, n_val=min(500, len(data) // 10),
                         device=device)
    net = UNet.preset(preset, generator=torch.Generator().manual_seed(0)).to(device)
    settings = LoopSettings(steps=warmup + steps, lr=2e-4, warmup=5000, grad_clip=1.0,
                            ema_decay=0.9999, bf16=device.type == "cuda")
    engine = Engine(obj, net, settings, device=device)
    for _ in range(warmup):
        engine.train_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    obj.coupling_log()  # start the coupling's clock with the timed steps
    start = time.perf_counter()
    for _ in range(steps):
        engine.train_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    logged = obj.coupling_log()
    return {
        "method": label, "preset": preset, "batch_size": batch, "steps": steps,
        "seconds": seconds, "steps_per_second": steps / seconds,
        "coupling_share": logged["coupling_share"],
        "peak_memory_mib": (torch.cuda.max_memory_allocated(device) / 2**20
                            if device.type == "cuda" else None),
        "parameters": sum(p.numel() for p in net.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/cifar_step.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="cifar10:DIR (default: noise of its shape)")
    p.add_argument("--preset", default="cifar10", choices=tuple(SHAPES))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    device = torch.device(args.device)
    data, source = images(args.data, SHAPES[args.preset], max(4 * args.batch_size, 1000))
    if data.shape != SHAPES[args.preset]:
        p.error(f"--data images have shape {data.shape}; preset {args.preset} takes "
                f"{SHAPES[args.preset]}")
    rows = []
    for label in methods:
        row = time_method(label, data, args.preset, batch=args.batch_size, steps=args.steps,
                          warmup=args.warmup_steps, device=device)
        rows.append(row)
        print(f"{label}: {row['steps_per_second']:.2f} steps/s, coupling "
              f"{100 * row['coupling_share']:.1f}% of the step", flush=True)
    record = {
        "command": " ".join(["python benchmarks/cifar_step.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__,
                    "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                               else platform.processor() or platform.machine())},
        "images": source, "bf16": device.type == "cuda", "records": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
