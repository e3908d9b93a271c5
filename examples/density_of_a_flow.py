"""
The density of a trained flow
=============================

A CFM model is a continuous normalizing flow, so it has a density: ``log_likelihood``
integrates points back from t = 1 to t = 0 together with the divergence of the field and adds
the source's log-density (docs/reference.md §1). Here an OT-CFM flow from N(0, I) to the
8 Gaussians is trained briefly, its log-density is drawn on a grid next to the true one of the
target (``toy.log_prob``), and the test NLL of both is compared: the gap estimates
KL(target || model). Set OTCFM_EXAMPLE_STEPS to change the budget.
"""

# %%
import os

import torch

from otcfm.data import toy
from otcfm.likelihood import log_likelihood
from otcfm.matchers import matcher
from otcfm.models import MLP

STEPS = int(os.environ.get("OTCFM_EXAMPLE_STEPS", "3000"))
g = torch.Generator().manual_seed(0)
torch.manual_seed(0)
model = MLP(dim=2)
fm = matcher("otcfm", sigma=0.1)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
for _ in range(STEPS):
    x0 = toy.sample("gaussian", 256, generator=g)
    x1 = toy.sample("8gaussians", 256, generator=g)
    loss = fm.loss(model, x0, x1, generator=g)
    opt.zero_grad()
    loss.backward()
    opt.step()

# %%
# Test NLL (nats per point) of the flow and of the target's own density on the same points.
x = toy.sample("8gaussians", 500, generator=g)
with torch.no_grad():
    target_nll = -toy.log_prob("8gaussians", x).mean().item()
flow = log_likelihood(model, x, atol=1e-4, rtol=1e-4)
print(f"flow NLL {-flow.logp.mean():.3f}, target's own {target_nll:.3f}, NFE {flow.nfe}")

# %%
# The two densities on a grid: the flow's (exact divergence, dopri5) and the true one.
import matplotlib.pyplot as plt  # noqa: E402 (a cell of its own)

side = torch.linspace(-8, 8, 61)
grid = torch.cartesian_prod(side, side)
logp_flow = log_likelihood(model, grid, atol=1e-4, rtol=1e-4).logp.reshape(61, 61)
with torch.no_grad():
    logp_true = toy.log_prob("8gaussians", grid).reshape(61, 61)
fig, axes = plt.subplots(1, 2, figsize=(9, 4.5), sharex=True, sharey=True)
for ax, (title, logp) in zip(axes, {"flow": logp_flow, "target": logp_true}.items(),
                             strict=True):
    ax.pcolormesh(side, side, logp.exp().T.detach(), shading="auto", cmap="viridis")
    ax.set_title(f"{title} density ({STEPS} training steps)" if title == "flow"
                 else "true density")
    ax.set_aspect("equal")
fig.tight_layout()
plt.show()
