"""
OT-CFM vs I-CFM in a few lines
==============================

Train both methods on moons -> 8gaussians with the library core, then compare how straight
their flows are (normalized path energy, docs/reference.md §3). Set OTCFM_EXAMPLE_STEPS to
change the budget.
"""

# %%
import os

import torch

from otcfm.data import toy
from otcfm.matchers import matcher
from otcfm.metrics import normalized_path_energy, wasserstein
from otcfm.models import MLP
from otcfm.sampling import integrate

STEPS = int(os.environ.get("OTCFM_EXAMPLE_STEPS", "2000"))
source, target = toy.task("moons-8gaussians")


# %%
def fit(method: str, seed: int = 0) -> MLP:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MLP(dim=2)
    fm = matcher(method, sigma=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
    for _ in range(STEPS):
        x0 = toy.sample(source, 256, generator=g)
        x1 = toy.sample(target, 256, generator=g)
        loss = fm.loss(model, x0, x1, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


# %%
g = torch.Generator().manual_seed(123)
x0, x1 = toy.sample(source, 1000, generator=g), toy.sample(target, 1000, generator=g)
w2_sq = wasserstein(x0, x1, p=2) ** 2
trajectories = {}
for method in ("otcfm", "icfm"):
    traj = integrate(fit(method), x0, method="euler", steps=100)
    trajectories[method] = traj
    npe = normalized_path_energy(traj.energy.mean().item(), w2_sq)
    print(f"{method}: W2 {wasserstein(traj.x_final, x1):.3f}  NPE {npe:.3f}")

# %%
# The paths themselves: OT-CFM's are nearly straight and do not cross; I-CFM's bend.
import matplotlib.pyplot as plt  # noqa: E402 (a cell of its own)

fig, axes = plt.subplots(1, 2, figsize=(9, 4.5), sharex=True, sharey=True)
for ax, (method, traj) in zip(axes, trajectories.items(), strict=True):
    xs = traj.xs[:, :200].numpy()
    ax.plot(xs[:, :, 0], xs[:, :, 1], color="olive", alpha=0.25, lw=0.6)
    ax.scatter(xs[0, :, 0], xs[0, :, 1], s=4, color="black", label="x0 (moons)")
    ax.scatter(xs[-1, :, 0], xs[-1, :, 1], s=4, color="tab:blue", label="x1 (model)")
    ax.set_title(f"{method}: 200 paths, {STEPS} training steps")
    ax.set_aspect("equal")
axes[0].legend(loc="upper left", fontsize=8)
fig.tight_layout()
plt.show()
