"""Small image classifiers whose features score generated images on a CPU.

The Fréchet distance of the paper's image table is FID: Inception-v3 features of CIFAR-10
images. For the CPU benchmarks on digits and Fashion-MNIST, Inception is the wrong network
(trained on 299x299 natural images) and too slow, so the features come from a small
convolutional classifier trained here on the same data set, by this module, from a fixed seed.
Its numbers are "FD (digits features)" or "FD (Fashion-MNIST features)", never FID; the
classifier also gives the class accuracy of class-conditional samples.

Train and commit a network (the weights are small: about 60 k parameters)::

    python -m otcfm.experiments.feature_nets --dataset digits

writes ``src/otcfm/experiments/feature_nets/digits.pt`` (plain tensors, read with
``weights_only=True``) and ``digits.json`` (the record: command, steps, seed, held-out
accuracy, SHA-256 of the weights). :func:`load_feature_net` checks the weights against the
record before use.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from otcfm.data.images import ImageSet, load_images
from otcfm.metrics import frechet_distance

__all__ = [
    "FEATURE_DIM", "FEATURE_NAMES", "FeatureNet", "FeatureScorer", "accuracy",
    "feature_distance", "features", "load_feature_net", "scorer_for", "train_feature_net",
]

#: size of the feature vector (the classifier's penultimate layer)
FEATURE_DIM = 64
#: where the committed networks and their records live (package data)
STORE = Path(__file__).resolve().parent / "feature_nets"
#: the data sets a network is trained for, and the image spec each is read from
DATASETS = {"digits": "digits", "fashion-mnist": "fashion-mnist"}


class FeatureNet(nn.Module):
    """Small convolutional classifier whose penultimate layer gives the features.

    conv 3x3 (32) -> conv 3x3 stride 2 (64) -> conv 3x3 stride 2 (64), ReLU after each ->
    global average pool -> Linear(64, 64) + ReLU (the features) -> Linear(64, classes).

    Works for any image size of at least 4x4 (8x8 digits, 28x28 Fashion-MNIST). Parameters are
    drawn from ``generator`` (PyTorch's default fan-in bounds), so a seed fixes the network.
    """

    def __init__(self, channels: int = 1, num_classes: int = 10,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.channels, self.num_classes = int(channels), int(num_classes)
        self.convs = nn.ModuleList([
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),
        ])
        self.hidden = nn.Linear(64, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, num_classes)
        if generator is not None:
            with torch.no_grad():
                for p in self.parameters():
                    fan_in = p.shape[1] * p[0][0].numel() if p.dim() > 1 else p.shape[0]
                    bound = 1.0 / math.sqrt(fan_in)
                    p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)

    def features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images in [-1, 1] -> (B, FEATURE_DIM) features."""
        h = x
        for conv in self.convs:
            h = F.relu(conv(h))
        return F.relu(self.hidden(h.mean(dim=(2, 3))))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (B, num_classes)."""
        return self.head(self.features(x))


def _split(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """A fixed 90 / 10 split of n images into training and held-out indices."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, n // 10)
    return perm[n_test:], perm[:n_test]


@torch.no_grad()
def accuracy(net: FeatureNet, images: Tensor, labels: Tensor, batch_size: int = 1024) -> float:
    """The share of ``images`` that ``net`` puts in their class ``labels``."""
    net.eval()
    right = 0
    for k in range(0, images.shape[0], batch_size):
        right += int((net(images[k:k + batch_size]).argmax(1) == labels[k:k + batch_size]).sum())
    return right / images.shape[0]


@torch.no_grad()
def features(net: FeatureNet, images: Tensor, batch_size: int = 1024) -> Tensor:
    """(N, FEATURE_DIM) float64 features of ``images`` (N, C, H, W) in [-1, 1]."""
    net.eval()
    return torch.cat([net.features(images[k:k + batch_size]).double()
                      for k in range(0, images.shape[0], batch_size)])


def feature_distance(net: FeatureNet, samples: Tensor, reference: Tensor) -> float:
    """Fréchet distance between the features of ``samples`` and ``reference`` under ``net``.

    The Fréchet distance (squared, as FID reports it) between the feature distributions
    of ``samples`` and ``reference`` under ``net``: "FD (digits features)", never FID.
    """
    return frechet_distance(features(net, samples), features(net, reference))


def train_feature_net(data: ImageSet, *, steps: int = 2000, batch_size: int = 128,
                      lr: float = 2e-3, seed: int = 0) -> tuple[FeatureNet, dict[str, Any]]:
    """Train a :class:`FeatureNet` on 90% of ``data``; return it and its record.

    Train a :class:`FeatureNet` on 90% of ``data`` (Adam, cross-entropy, batches drawn from
    one generator seeded with ``seed``); returns it and its record (held-out accuracy).
    """
    if data.labels is None:
        raise ValueError(f"{data.name}: a feature network needs class labels")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    g = torch.Generator().manual_seed(seed)
    train, held = _split(len(data), seed)
    net = FeatureNet(data.shape[0], data.num_classes, generator=g)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    start = time.perf_counter()
    net.train()
    for _ in range(steps):
        idx = train[torch.randint(train.shape[0], (batch_size,), generator=g)]
        loss = F.cross_entropy(net(data.images[idx]), data.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    record = {
        "dataset": data.name, "steps": steps, "batch_size": batch_size, "lr": lr,
        "seed": seed, "n_train": int(train.shape[0]), "n_heldout": int(held.shape[0]),
        "heldout_accuracy": accuracy(net, data.images[held], data.labels[held]),
        "train_seconds": time.perf_counter() - start,
    }
    return net.eval(), record


def _digest(state: dict[str, Tensor]) -> str:
    """SHA-256 of the weights themselves, independent of the file layout.

    SHA-256 of the weights themselves (names, shapes, float32 bytes in key order), so the
    check does not depend on how a torch version lays out its files.
    """
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to(torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def load_feature_net(dataset: str, store: Path = STORE) -> tuple[FeatureNet, dict[str, Any]]:
    """Load the committed network of ``dataset`` and its record, checked by SHA-256.

    The committed network of ``dataset`` and its record; the weights must match the
    record's SHA-256 (a changed file is refused).
    """
    if dataset not in DATASETS:
        raise ValueError(f"no feature network for {dataset!r}; known: {', '.join(DATASETS)}")
    weights, record_path = store / f"{dataset}.pt", store / f"{dataset}.json"
    if not weights.is_file() or not record_path.is_file():
        raise FileNotFoundError(
            f"no feature network for {dataset} in {store}: train it with `python -m "
            f"otcfm.experiments.feature_nets --dataset {dataset}`"
        )
    record = json.loads(record_path.read_text())
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if _digest(state) != record["sha256"]:
        raise ValueError(f"{weights} does not match the SHA-256 of its record {record_path}")
    net = FeatureNet(record["channels"], record["num_classes"])
    net.load_state_dict(state)
    return net.eval().requires_grad_(False), record


#: how each data set's features are named where their Fréchet distance is reported
FEATURE_NAMES = {"digits": "digits features", "fashion-mnist": "Fashion-MNIST features"}


class FeatureScorer:
    """The committed network of a data set as the scorer of ``otcfm evaluate``.

    ``name``, ``distance(samples, reference)`` (:func:`feature_distance`) and ``accuracy(samples,
    labels)`` (:func:`accuracy`).
    """

    def __init__(self, dataset: str) -> None:
        self.net, self.record = load_feature_net(dataset)
        self.name = FEATURE_NAMES[dataset]

    def distance(self, samples: Tensor, reference: Tensor) -> float:
        """Fréchet distance between the features of ``samples`` and ``reference`` (images)."""
        return feature_distance(self.net, samples, reference)

    def accuracy(self, samples: Tensor, labels: Tensor) -> float:
        """Fraction of ``samples`` that the network classifies as their ``labels``."""
        return accuracy(self.net, samples, labels)


def scorer_for(spec: str) -> FeatureScorer | None:
    """The :class:`FeatureScorer` of an image spec's data set, or None.

    The :class:`FeatureScorer` of an image spec's data set (``fashion-mnist:DIR`` ->
    Fashion-MNIST's), or None when no network was trained for it (MNIST, CIFAR-10, a
    folder).
    """
    dataset = spec.partition(":")[0]
    return FeatureScorer(dataset) if dataset in DATASETS else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m otcfm.experiments.feature_nets",
                                description="Train and store a feature network for the image "
                                "benchmarks (committed under src/otcfm/experiments/feature_nets/).")
    p.add_argument("--dataset", choices=tuple(DATASETS), required=True)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=STORE, help="folder (default: the package's)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one thread: the same weights on every run of this machine
    data = load_images(DATASETS[args.dataset], split="train")
    net, record = train_feature_net(data, steps=args.steps, seed=args.seed)
    state = net.state_dict()
    record.update(
        channels=net.channels, num_classes=net.num_classes, classes=list(data.classes),
        sha256=_digest(state), command=" ".join(["python -m otcfm.experiments.feature_nets",
                                                 *(argv if argv is not None else sys.argv[1:])]),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}"
                f", torch {torch.__version__}, 1 thread",
    )
    args.out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (args.out / f"{args.dataset}.pt").write_bytes(buffer.getvalue())
    (args.out / f"{args.dataset}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{args.dataset}: held-out accuracy {record['heldout_accuracy']:.4f} after "
          f"{args.steps} steps ({record['train_seconds']:.0f} s); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
