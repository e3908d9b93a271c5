"""Tests for otcfm.sampling: convergence orders against exact solutions, NFE, energy, contract."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from otcfm.sampling import ADAPTIVE_SOLVERS, FIXED_STEP_SOLVERS, SOLVERS, Trajectory, integrate

ORDERS = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
STAGES = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


# --------------------------------------------------------------------------- test fields
class Linear(torch.nn.Module):
    """v(x, t) = A x for x (B, d); exact flow x(t) = expm(t A) x0."""

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__()
        self.A = A

    def forward(self, x, t):
        return x @ self.A.T.to(x.dtype)


class CosGrowth(torch.nn.Module):
    """v(x, t) = cos(t) x: time dependent, exact x(t) = x0 exp(sin t - sin t0)."""

    def forward(self, x, t):
        return torch.cos(t)[:, None].to(x.dtype) * x


class Recorder(torch.nn.Module):
    """v = -x; records every (t, x) it is called with."""

    def __init__(self) -> None:
        super().__init__()
        self.ts: list[torch.Tensor] = []
        self.x_dtypes: list[torch.dtype] = []

    def forward(self, x, t):
        self.ts.append(t.clone())
        self.x_dtypes.append(x.dtype)
        return -x


def rotation(omega: float, a: float = 0.0) -> torch.Tensor:
    return torch.tensor([[a, -omega], [omega, a]], dtype=torch.float64)


def x0_2d(n: int = 8, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=torch.float64).to(dtype)


def global_error(method: str, steps: int, model, x0, exact) -> float:
    traj = integrate(model, x0, method=method, steps=steps, save="ends", energy=False)
    return float((traj.x_final - exact).abs().max())


# --------------------------------------------------------------------------- orders
@pytest.mark.parametrize("method", FIXED_STEP_SOLVERS)
def test_order_of_convergence_linear_system(method):
    A = rotation(2.0, a=-0.3)
    x0 = x0_2d()
    exact = x0 @ torch.linalg.matrix_exp(A).T
    n = 8 if method == "rk4" else 32
    e1 = global_error(method, n, Linear(A), x0, exact)
    e2 = global_error(method, 2 * n, Linear(A), x0, exact)
    order = math.log2(e1 / e2)
    assert abs(order - ORDERS[method]) < 0.3, (method, e1, e2, order)


@pytest.mark.parametrize("method", FIXED_STEP_SOLVERS)
def test_order_of_convergence_time_dependent(method):
    # the field depends on t, so wrong stage times would break the order
    x0 = x0_2d()
    t0, t1 = 0.2, 1.7  # (on [0.5, 2.5] the midpoint error constant nearly cancels)
    exact = x0 * math.exp(math.sin(t1) - math.sin(t0))

    def err(steps):
        traj = integrate(CosGrowth(), x0, method=method, steps=steps, t0=t0, t1=t1,
                         save="ends", energy=False)
        return float((traj.x_final - exact).abs().max())

    n = 8 if method == "rk4" else 32
    order = math.log2(err(n) / err(2 * n))
    assert abs(order - ORDERS[method]) < 0.3, (method, order)


ADAPTIVE_TOL = {"dopri5": 1e-7, "dopri8": 1e-7, "bosh3": 1e-6, "adaptive_heun": 1e-5}


@pytest.mark.parametrize("method", ADAPTIVE_SOLVERS)
def test_adaptive_error_within_tolerance_scale(method):
    x0 = x0_2d()
    tol = ADAPTIVE_TOL[method]
    A = rotation(1.5, a=-0.5)
    exact = x0 @ torch.linalg.matrix_exp(A).T
    for save in ("ends", "all"):  # final state is a step in both cases
        traj = integrate(Linear(A), x0, method=method, atol=tol, rtol=tol, save=save,
                         energy=False)
        err = float((traj.x_final - exact).abs().max())
        scale = tol * (1.0 + float(exact.abs().max()))
        assert err < 100 * scale, (method, err)
        if method == "dopri5":
            assert err < 20 * scale


def test_adaptive_tighter_tolerance_is_more_accurate():
    x0 = x0_2d()
    A = rotation(3.0)
    exact = x0 @ torch.linalg.matrix_exp(A).T
    errs, nfes = [], []
    for tol in (1e-4, 1e-8):
        traj = integrate(Linear(A), x0, method="dopri5", atol=tol, rtol=tol, energy=False)
        errs.append(float((traj.x_final - exact).abs().max()))
        nfes.append(traj.nfe)
    assert errs[1] < 1e-2 * errs[0]
    assert nfes[1] > nfes[0]


# --------------------------------------------------------------------------- NFE
class Counter(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        return torch.sin(x) + t[:, None].to(x.dtype)


@pytest.mark.parametrize("method", FIXED_STEP_SOLVERS)
@pytest.mark.parametrize("steps", [1, 7, 20])
def test_nfe_fixed_step_exact(method, steps):
    model = Counter()
    traj = integrate(model, x0_2d(dtype=torch.float32), method=method, steps=steps)
    assert traj.nfe == steps * STAGES[method] == model.calls
    assert traj.xs.shape[0] == steps + 1


@pytest.mark.parametrize("method", ADAPTIVE_SOLVERS)
@pytest.mark.parametrize("energy", [True, False])
def test_nfe_adaptive_counts_every_call(method, energy):
    model = Counter()
    traj = integrate(model, x0_2d(dtype=torch.float32), method=method, atol=1e-5, rtol=1e-5,
                     energy=energy)
    assert traj.nfe == model.calls
    assert traj.nfe > 2


def test_nfe_adaptive_independent_of_saved_times():
    x0 = x0_2d(dtype=torch.float32)
    ends = integrate(Counter(), x0, method="dopri5", save="ends")
    every = integrate(Counter(), x0, method="dopri5", save="all", steps=50)
    assert ends.nfe == every.nfe
    assert torch.allclose(ends.x_final, every.x_final, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- time handling
@pytest.mark.parametrize("method", SOLVERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_sees_per_sample_float32_times(method, dtype):
    model = Recorder()
    x0 = x0_2d(n=5, dtype=dtype)
    integrate(model, x0, method=method, steps=4, atol=1e-3, rtol=1e-3)
    assert model.ts, "model never called"
    for t in model.ts:
        assert t.shape == (5,)
        assert t.dtype == torch.float32
        assert bool((t == t[0]).all())
    assert all(d == dtype for d in model.x_dtypes)


def test_euler_calls_model_at_grid_times_forward_and_reverse():
    model = Recorder()
    integrate(model, x0_2d(), method="euler", steps=4, t0=0.0, t1=1.0)
    seen = [float(t[0]) for t in model.ts]
    assert seen == pytest.approx([0.0, 0.25, 0.5, 0.75], abs=1e-12)
    model = Recorder()
    integrate(model, x0_2d(), method="euler", steps=4, t0=1.0, t1=0.0)
    seen = [float(t[0]) for t in model.ts]
    assert seen == pytest.approx([1.0, 0.75, 0.5, 0.25], abs=1e-12)


@pytest.mark.parametrize("method", ["euler", "heun", "rk4", "dopri5"])
def test_adaptive_and_fixed_times_stay_in_interval_reverse(method):
    model = Recorder()
    integrate(model, x0_2d(), method=method, steps=5, t0=1.0, t1=0.2)
    seen = torch.stack([t[0] for t in model.ts])
    assert float(seen.max()) <= 1.0 + 1e-12
    assert float(seen.min()) >= 0.2 - 1e-12


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_reverse_integration_undoes_forward(method):
    x0 = x0_2d(n=16)
    fwd = integrate(Counter(), x0, method=method, steps=100, atol=1e-9, rtol=1e-9)
    back = integrate(Counter(), fwd.x_final, method=method, steps=100, t0=1.0, t1=0.0,
                     atol=1e-9, rtol=1e-9)
    assert torch.allclose(back.x_final, x0, atol=1e-6, rtol=0)
    assert float(back.ts[0]) == 1.0 and float(back.ts[-1]) == 0.0


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_reverse_against_exact_solution(method):
    # x' = cos(t) x from t=2 back to t=0: x(0) = x(2) exp(sin 0 - sin 2)
    x2 = x0_2d()
    traj = integrate(CosGrowth(), x2, method=method, t0=2.0, t1=0.0, steps=200,
                     atol=1e-10, rtol=1e-10, save="ends")
    exact = x2 * math.exp(-math.sin(2.0))
    assert torch.allclose(traj.x_final, exact, atol=1e-7, rtol=0)


# --------------------------------------------------------------------------- saving
def test_save_ends_and_all():
    x0 = x0_2d()
    all_ = integrate(Counter(), x0, method="heun", steps=10)
    ends = integrate(Counter(), x0, method="heun", steps=10, save="ends")
    assert all_.xs.shape == (11, 8, 2) and ends.xs.shape == (2, 8, 2)
    assert torch.equal(all_.xs[0], x0) and torch.equal(ends.xs[0], x0)
    assert torch.equal(all_.x_final, ends.x_final)
    assert torch.allclose(all_.ts, torch.linspace(0, 1, 11), atol=1e-7, rtol=0)
    assert ends.ts.tolist() == [0.0, 1.0]
    assert all_.ts.dtype == torch.float32


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_output_times_hit_exactly(method):
    x0 = x0_2d()
    A = rotation(2.0, a=-0.2)
    times = [0.0, 0.35, 0.8, 1.3]
    traj = integrate(Linear(A), x0, method=method, steps=40, times=times, atol=1e-10, rtol=1e-10)
    assert traj.xs.shape == (4, 8, 2)
    assert traj.ts.tolist() == pytest.approx(times, abs=1e-7)
    for k, t in enumerate(times):
        exact = x0 @ torch.linalg.matrix_exp(t * A).T
        assert torch.allclose(traj.xs[k], exact, atol=1e-6, rtol=0), (k, t)


def test_fixed_step_times_merged_into_grid():
    model = Counter()
    traj = integrate(model, x0_2d(), method="euler", steps=10, times=[0.0, 0.35, 1.0])
    assert traj.nfe == 11 == model.calls  # 10 uniform steps split once at t = 0.35
    assert traj.xs.shape[0] == 3


# --------------------------------------------------------------------------- energy
class Constant(torch.nn.Module):
    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.c = c

    def forward(self, x, t):
        return self.c.to(x.dtype).expand_as(x).clone()


@pytest.mark.parametrize("method", SOLVERS)
@pytest.mark.parametrize(("t0", "t1"), [(0.0, 1.0), (0.3, 2.3), (1.0, 0.0)])
def test_energy_constant_velocity(method, t0, t1):
    c = torch.tensor([[0.6, -0.8, 2.0]])
    x0 = torch.zeros(4, 3)
    traj = integrate(Constant(c), x0, method=method, steps=7, t0=t0, t1=t1)
    expected = float((c**2).sum()) * abs(t1 - t0)
    assert traj.energy is not None
    assert traj.energy.shape == (4,) and traj.energy.dtype == torch.float32
    assert torch.allclose(traj.energy, torch.full((4,), expected), rtol=1e-5, atol=0)
    assert torch.allclose(traj.x_final, x0 + c * (t1 - t0), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("method", "steps", "rtol"),
    [("midpoint", 200, 1e-3), ("heun", 200, 1e-3), ("rk4", 50, 1e-5),
     ("dopri5", 1, 1e-4), ("dopri8", 1, 1e-4), ("bosh3", 1, 1e-3), ("adaptive_heun", 1, 1e-3)],
)
def test_energy_rotation_field(method, steps, rtol):
    # x' = omega J x keeps |x| constant: energy = |x0|^2 omega^2 T
    omega, T = 3.0, 1.5
    x0 = x0_2d(n=6)
    tol = ADAPTIVE_TOL.get(method, 1e-7)
    traj = integrate(Linear(rotation(omega)), x0, method=method, steps=steps, t1=T,
                     atol=tol, rtol=tol)
    expected = (x0**2).sum(1) * omega**2 * T
    assert torch.allclose(traj.energy.double(), expected, rtol=rtol, atol=0)


def test_energy_rotation_field_euler_discrete_sum():
    # Euler on x' = omega J x: |x_k|^2 = |x0|^2 q^k with q = 1 + (omega h)^2, so the Euler
    # energy is the geometric sum omega^2 h |x0|^2 (q^N - 1) / (q - 1); -> |x0|^2 omega^2 T
    omega, T, N = 3.0, 1.5, 300
    h = T / N
    q = 1 + (omega * h) ** 2
    x0 = x0_2d(n=6)
    traj = integrate(Linear(rotation(omega)), x0, method="euler", steps=N, t1=T)
    expected = omega**2 * h * (x0**2).sum(1) * (q**N - 1) / (q - 1)
    assert torch.allclose(traj.energy.double(), expected, rtol=1e-6, atol=0)
    continuous = (x0**2).sum(1) * omega**2 * T
    assert torch.allclose(traj.energy.double(), continuous, rtol=0.1, atol=0)


# closed forms of each scheme's quadrature of t^2 over [0, 1] with N steps
_T2_QUADRATURE = {
    "euler": lambda N: (N - 1) * (2 * N - 1) / (6 * N**2),  # left Riemann sum
    "midpoint": lambda N: 1 / 3 - 1 / (12 * N**2),
    "heun": lambda N: 1 / 3 + 1 / (6 * N**2),  # trapezoid rule
    "rk4": lambda N: 1 / 3,  # Simpson's rule is exact for t^2
}


@pytest.mark.parametrize("method", FIXED_STEP_SOLVERS)
@pytest.mark.parametrize("N", [1, 3, 50])
def test_energy_quadrature_of_time_dependent_speed(method, N):
    # v = t (1, 1, 1, 1): ||v||^2 = 4 t^2, integral over [0, 1] = 4/3
    class Ramp(torch.nn.Module):
        def forward(self, x, t):
            return t[:, None].to(x.dtype) * torch.ones_like(x)

    x0 = torch.zeros(3, 4, dtype=torch.float64)
    traj = integrate(Ramp(), x0, method=method, steps=N)
    expected = 4 * _T2_QUADRATURE[method](N)
    assert torch.allclose(traj.energy.double(), torch.full((3,), expected, dtype=torch.float64),
                          rtol=1e-6, atol=1e-12)
    if N == 50:
        assert float(traj.energy[0]) == pytest.approx(4 / 3, rel=0.04)


def test_energy_disabled():
    traj = integrate(Counter(), x0_2d(), energy=False)
    assert traj.energy is None


# --------------------------------------------------------------------------- contract
SHAPES = [(6, 1), (6, 2), (6, 3, 4, 4)]


class Decay(torch.nn.Module):
    def forward(self, x, t):
        assert t.shape == (x.shape[0],) and t.dtype == torch.float32
        return -x


@pytest.mark.parametrize("method", SOLVERS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_contract_shapes_dtypes(method, shape, dtype):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(shape, generator=g).to(dtype)
    # bf16 inputs make the field itself noisy (~4e-3 relative), so adaptive tolerances
    # below that only buy extra steps
    loose = 1e-3 if dtype == torch.bfloat16 else 1e-5
    traj = integrate(Decay(), x0, method=method, steps=10, atol=loose, rtol=loose)
    assert isinstance(traj, Trajectory)
    assert traj.xs.shape == (11, *shape)
    assert traj.xs.dtype == dtype
    assert traj.ts.shape == (11,) and traj.ts.dtype == torch.float32
    assert traj.energy.shape == (shape[0],) and traj.energy.dtype == torch.float32
    assert traj.x_final.shape == shape
    sq = x0.float().reshape(shape[0], -1).pow(2).sum(1)
    if method == "euler":  # x_k = 0.9^k x0 exactly; energy = 0.1 sum_k 0.81^k |x0|^2
        exact = x0.float() * 0.9**10
        e_exact = sq * 0.1 * (1 - 0.81**10) / (1 - 0.81)
    else:  # x(1) = x0 / e; energy of x' = -x: |x0|^2 (1 - e^-2) / 2
        exact = x0.float() * math.exp(-1.0)
        e_exact = sq * (1 - math.exp(-2)) / 2
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-3
    assert torch.allclose(traj.x_final.float(), exact, atol=tol, rtol=tol)
    # energy: quadrature error of 10 steps is O(h^2) ~ 1e-3 for midpoint / heun
    assert torch.allclose(traj.energy, e_exact, rtol=max(tol, 1e-2))


def test_bf16_state_accumulates_in_float32():
    # 1000 tiny Euler steps of x' = 1 from x = 1: a bf16 state would stall (1 + 1e-3 == 1)
    x0 = torch.ones(2, 2, dtype=torch.bfloat16)

    class One(torch.nn.Module):
        def forward(self, x, t):
            return torch.ones_like(x)

    traj = integrate(One(), x0, method="euler", steps=1000, save="ends")
    assert traj.x_final.dtype == torch.bfloat16
    assert torch.allclose(traj.x_final.float(), torch.full((2, 2), 2.0), atol=1e-2, rtol=0)


def test_float64_input_stays_float64():
    x0 = x0_2d()
    traj = integrate(CosGrowth(), x0, method="rk4", steps=5)
    assert traj.xs.dtype == torch.float64
    assert traj.ts.dtype == torch.float32


def test_trajectory_is_frozen():
    traj = integrate(Counter(), x0_2d(), steps=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        traj.nfe = 3


def test_cond_passed_per_sample():
    class Labelled(torch.nn.Module):
        def forward(self, x, t, *, y):
            return y[:, None].to(x.dtype) * torch.ones_like(x)

    x0 = torch.zeros(4, 2)
    y = torch.tensor([0, 1, 2, 3])
    traj = integrate(Labelled(), x0, method="rk4", steps=3, cond={"y": y})
    assert torch.allclose(traj.x_final, y[:, None].float().expand(4, 2), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="one row per sample"):
        integrate(Labelled(), x0, cond={"y": y[:3]})
    with pytest.raises(TypeError, match="dict"):
        integrate(Labelled(), x0, cond=[y])


def test_no_grad_by_default_and_grad_flag():
    a = torch.nn.Parameter(torch.tensor(0.7, dtype=torch.float64))

    class Scaled(torch.nn.Module):
        def forward(self, x, t):
            return a * x

    x0 = x0_2d(n=3)
    traj = integrate(Scaled(), x0, method="rk4", steps=50)
    assert not traj.x_final.requires_grad
    traj = integrate(Scaled(), x0, method="rk4", steps=50, grad=True, energy=False)
    traj.x_final.sum().backward()
    # d/da sum(x0 e^a) = sum(x0) e^a
    expected = float(x0.sum()) * math.exp(0.7)
    assert float(a.grad) == pytest.approx(expected, rel=1e-6)


def test_nonfinite_states_warn():
    class Blowup(torch.nn.Module):
        def forward(self, x, t):
            return x * x

    x0 = torch.full((2, 1), 10.0)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        integrate(Blowup(), x0, method="euler", steps=10)


# --------------------------------------------------------------------------- bad inputs
def test_bad_inputs():
    x0 = x0_2d(dtype=torch.float32)
    m = Counter()
    with pytest.raises(ValueError, match="dopri5"):
        integrate(m, x0, method="rk45")
    for steps in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            integrate(m, x0, steps=steps)
    bad = x0.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        integrate(m, bad)
    with pytest.raises(TypeError, match="floating"):
        integrate(m, torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(TypeError):
        integrate(m, [[0.0, 1.0]])
    with pytest.raises(ValueError, match="t0 and t1"):
        integrate(m, x0, t0=0.5, t1=0.5)
    with pytest.raises(ValueError, match="finite"):
        integrate(m, x0, t1=float("inf"))
    with pytest.raises(ValueError, match="save"):
        integrate(m, x0, save="some")
    with pytest.raises(ValueError, match="options"):
        integrate(m, x0, method="euler", options={"first_step": 0.1})
    with pytest.raises(ValueError, match="monotone|increasing"):
        integrate(m, x0, times=[0.0, 0.5, 0.2])
    with pytest.raises(ValueError, match="at least 2"):
        integrate(m, x0, times=[0.0])
    with pytest.raises(ValueError, match="atol"):
        integrate(m, x0, method="dopri5", atol=0.0)

    class Wrong(torch.nn.Module):
        def forward(self, x, t):
            return x[:, :1]

    with pytest.raises(ValueError, match="shape"):
        integrate(Wrong(), x0)


def test_adaptive_options_are_forwarded():
    x0 = x0_2d(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="max_num_steps"):
        integrate(Linear(rotation(50.0)), x0, method="dopri5", atol=1e-9, rtol=1e-9,
                  options={"max_num_steps": 3})
