"""Couplings refuse batches whose cost matrix and solver workspace would not fit in memory,
before allocating anything; the free memory is mocked, the estimates are checked against the
peak memory of real calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from otcfm.couplings import (
    COUPLINGS,
    ApproxOT,
    Coupling,
    CouplingMemoryError,
    EntropicOT,
    ExactOT,
    MemoryNeed,
    PartialOT,
    UnbalancedOT,
    _base,
    available_memory,
    check_memory,
)

GB = 10**9


def mock_free(monkeypatch, cpu: float, cuda: float | None = None) -> list[str]:
    """Free memory of ``cpu`` (and ``cuda``) bytes; returns the devices asked about."""
    asked: list[str] = []

    def free(device="cpu"):
        kind = torch.device(device).type
        asked.append(kind)
        return int(cpu if kind == "cpu" else cuda)

    monkeypatch.setattr(_base, "available_memory", free)
    return asked


def points(n, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) + 1


@pytest.mark.parametrize(
    "make, hint",
    [
        (ExactOT, "--coupling approx"),
        (lambda: ExactOT(sampling="plan"), "--coupling approx"),
        (lambda: EntropicOT(reg=0.5), None),
        (lambda: ApproxOT(backend="torch"), None),
        (lambda: PartialOT(mass=0.9), None),
    ],
)
def test_a_batch_too_large_is_refused_before_any_work(monkeypatch, make, hint):
    coupling = make()
    n = 8000  # 64M cost entries: well above the checking threshold
    need = coupling.memory_need(n, n, dim=2)
    assert need.device + need.host > 0.5 * GB
    mock_free(monkeypatch, cpu=0.4 * GB)

    def never(*args, **kwargs):
        raise AssertionError("the coupling started working")

    monkeypatch.setattr(type(coupling), "pair", never)
    monkeypatch.setattr(_base, "sq_cost", never)
    x0, x1 = points(n)
    with pytest.raises(CouplingMemoryError) as caught:
        coupling(x0, x1)
    err = caught.value
    assert isinstance(err, MemoryError) and isinstance(err, ValueError)
    text = str(err)
    assert f"{n} x {n} points needs about {(need.device + need.host) / GB:.3g} GB" in text
    assert "0.4 GB is available" in text and "couplings.ot_batch, --ot-batch" in text
    assert "\n" not in text
    assert (hint in text) if hint else ("--coupling approx" not in text)


def test_small_batches_never_ask_for_the_free_memory(monkeypatch):
    def refuse(device="cpu"):
        raise AssertionError("asked")

    monkeypatch.setattr(_base, "available_memory", refuse)
    x0, x1 = points(256)
    for coupling in (ExactOT(), EntropicOT(reg=0.5), ApproxOT(backend="torch"),
                     COUPLINGS.get("independent")):
        assert coupling(x0, x1).x0.shape == (256, 2)


class Fixed(Coupling):
    """A coupling that only declares its memory need."""

    name = "fixed"

    def __init__(self, device: int, host: int) -> None:
        self.need = MemoryNeed(device=device, host=host)

    def memory_need(self, n0, n1, *, dim=0, device="cpu"):
        return self.need

    def pair(self, x0, x1, *, generator=None):  # pragma: no cover - never called here
        raise AssertionError


def test_check_memory_adds_up_the_host_and_device_parts(monkeypatch):
    asked = mock_free(monkeypatch, cpu=3 * GB, cuda=1 * GB)
    # on a CPU both parts are CPU memory: 2 + 0.9 fits in 3 GB, twice over it does not
    check_memory(Fixed(2 * GB, int(0.9 * GB)), 10, 10)
    with pytest.raises(CouplingMemoryError, match="10 x 10 points \\(2 at once\\) needs about "
                                                  "5.8 GB of CPU memory"):
        check_memory(Fixed(2 * GB, int(0.9 * GB)), 10, 10, copies=2)
    # on CUDA the device part is GPU memory
    with pytest.raises(CouplingMemoryError, match="needs about 2 GB of GPU memory.* 1 GB is"):
        check_memory(Fixed(2 * GB, 0), 10, 10, device="cuda")
    check_memory(Fixed(int(0.9 * GB), int(2.5 * GB)), 10, 10, device="cuda")
    with pytest.raises(CouplingMemoryError, match="3.5 GB of CPU memory"):
        check_memory(Fixed(int(0.9 * GB), int(3.5 * GB)), 10, 10, device="cuda")
    asked.clear()
    check_memory(Fixed(10, 10), 10, 10)  # under the threshold: no question asked
    assert asked == []


def test_unknown_free_memory_is_not_an_error(monkeypatch):
    monkeypatch.setattr(_base, "available_memory", lambda device="cpu": None)
    check_memory(Fixed(100 * GB, 100 * GB), 10, 10)


def test_every_estimate_covers_at_least_the_cost_matrix():
    n = 1000
    for name in COUPLINGS.names():
        kwargs = {"entropic": {"reg": 0.5}, "unbalanced": {"reg": 0.5, "reg_m": 1.0}}
        coupling = COUPLINGS.get(name, **kwargs.get(name, {}))
        need = coupling.memory_need(n, n, dim=2)
        total = need.device + need.host
        if name == "independent":
            assert total == 0
        else:
            assert total >= 4 * n * n, name
    f64 = ExactOT(cost_dtype=torch.float64).memory_need(n, n, dim=2)
    f32 = ExactOT().memory_need(n, n, dim=2)
    assert f64.device == 2 * f32.device == 8 * n * n
    big = 4096  # the unbalanced iterations keep more
    unbalanced = UnbalancedOT(0.5, 1.0).memory_need(big, big).device
    assert unbalanced > EntropicOT(0.5).memory_need(big, big).device


PEAK = """
import json, sys, warnings
import torch
from otcfm.couplings import coupling
warnings.simplefilter("ignore")
torch.set_num_threads(1)
spec, n = sys.argv[1], int(sys.argv[2])
g = torch.Generator().manual_seed(0)
x0, x1 = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g) + 1
c = coupling(spec)
c(x0[:300], x1[:300], generator=g)  # load the solver's libraries first (the same solver)


def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
                if line.startswith(key + ":"))


with open("/proc/self/clear_refs", "w") as fh:  # the peak (VmHWM) starts again from here
    fh.write("5")
base = status("VmRSS")
c(x0, x1, generator=g)
peak = status("VmHWM")
need = c.memory_need(n, n, dim=2)
print(json.dumps({"grew": peak - base, "need": need.device + need.host}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="peak memory from /proc/self (Linux)")
@pytest.mark.parametrize("spec", ["exact", "entropic:reg=0.5"])
def test_estimates_match_the_peak_memory_of_a_real_call(spec):
    """The oracle: the growth of the process's peak resident memory during one call at
    B = 1536 (2.4M cost entries, about 100 MB) is within [1/2, 3/2] of the estimate.

    glibc's adaptive mmap threshold would otherwise keep some freed (n, n) matrices on the
    heap, so that the peak varied by up to three of them between identical runs; a fixed
    threshold returns every freed matrix, and the peak is that of the live tensors."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, "-c", PEAK, spec, "1536"], capture_output=True,
                          text=True, timeout=300, check=True, env=env)
    got = json.loads(done.stdout)
    assert 0.5 * got["need"] <= got["grew"] <= 1.5 * got["need"], got


def test_available_memory_on_this_machine():
    free = available_memory("cpu")
    if sys.platform != "linux":
        pytest.skip("read from /proc/meminfo on Linux")
    with open("/proc/meminfo") as fh:
        total = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemTotal:"))
    assert 0 < free <= total
    assert available_memory("meta") is None


def test_available_memory_respects_a_cgroup_limit(monkeypatch, tmp_path):
    if sys.platform != "linux":
        pytest.skip("cgroups are Linux's")
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    limit.write_text("1000000\n")
    usage.write_text("400000\n")
    monkeypatch.setattr(_base, "CGROUP_MEMORY", ((str(limit), str(usage)),))
    assert available_memory("cpu") == 600_000
    limit.write_text("max\n")  # no limit: the machine's free memory
    assert available_memory("cpu") > 600_000


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_available_memory_on_a_gpu():
    free = available_memory("cuda")
    total = torch.cuda.get_device_properties(0).total_memory
    assert 0 < free <= total
