"""The training loop: it learns, it is reproducible, and resuming equals never stopping."""

from __future__ import annotations

import csv

import pytest
import torch

from otcfm.train.config import RunConfig
from otcfm.train.evaluate import evaluate_run, load_run
from otcfm.train.loop import train


def tiny(tmp_path, name="run", steps=20, **over) -> RunConfig:
    cfg = RunConfig(name=name, out_dir=str(tmp_path)).override(
        [
            f"optim.steps={steps}",
            "optim.batch_size=64",
            "data.n_train=256",
            "data.n_val=64",
            "data.n_test=64",
            "eval.val_every=10",
            "eval.checkpoint_every=10",
            "eval.ode_steps=5",
            "model.width=16",
            "model.depth=2",
            *[f"{k}={v}" for k, v in over.items()],
        ]
    )
    return cfg


def weights(run_dir, which="latest"):
    return load_run(run_dir, which).model.state_dict()


def test_run_folder_layout(tmp_path):
    cfg = tiny(tmp_path)
    result = train(cfg, progress=False)
    assert result.steps == 20
    run = cfg.run_dir
    for rel in (
        "config.toml",
        "log.csv",
        "metrics.json",
        "checkpoints/latest.pt",
        "checkpoints/best.pt",
    ):
        assert (run / rel).is_file(), rel
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [10, 20]
    saved = RunConfig.from_toml(run / "config.toml")
    assert saved == cfg.resolve()
    assert cfg.method.sigma == -1 and saved.method.sigma == 0.1  # the otcfm preset's sigma


def test_same_seed_same_weights(tmp_path):
    a = train(tiny(tmp_path, "a"), progress=False)
    b = train(tiny(tmp_path, "b"), progress=False)
    for (k, va), vb in zip(weights(a.run_dir).items(), weights(b.run_dir).values(), strict=True):
        assert torch.equal(va, vb), k


def test_resume_equals_uninterrupted(tmp_path):
    straight = train(tiny(tmp_path, "straight", steps=20), progress=False)
    train(tiny(tmp_path, "resumed", steps=10), progress=False)
    resumed = train(tiny(tmp_path, "resumed", steps=20), resume=True, progress=False)
    assert resumed.steps == 20
    for va, vb in zip(
        weights(straight.run_dir).values(), weights(resumed.run_dir).values(), strict=True
    ):
        torch.testing.assert_close(va, vb, rtol=0, atol=0)
    rows = list(csv.DictReader((resumed.run_dir / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [10, 20]


def test_refuses_to_overwrite_and_checks_resume_config(tmp_path):
    cfg = tiny(tmp_path, steps=10)
    train(cfg, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, progress=False)
    changed = tiny(tmp_path, steps=20, **{"method.sigma": 0.3})
    with pytest.raises(ValueError, match="config differs from the one given: "
                                         "method.sigma: 0.1 -> 0.3 \\(the run's value"):
        train(changed, resume=True, progress=False)


def test_training_reduces_validation_w2(tmp_path):
    over = {"data.n_val": 256, "eval.val_every": 400, "model.width": 64}
    result = train(tiny(tmp_path, "trained", steps=800, **over), progress=False)
    untrained = train(tiny(tmp_path, "untrained", steps=1, **over), progress=False)
    w2_start, w2_end = untrained.history[0]["val_w2"], result.history[-1]["val_w2"]
    assert w2_end < 0.5 * w2_start, (w2_start, w2_end)


def test_evaluate_writes_metrics_and_plots(tmp_path):
    cfg = tiny(tmp_path, steps=10)
    train(cfg, progress=False)
    metrics = evaluate_run(cfg.run_dir, adaptive="dopri5")
    for key in ("w2", "mmd", "npe", "path_energy", "nfe", "nfe_dopri5"):
        assert key in metrics
    assert metrics["nfe"] == 5
    assert metrics["npe"] >= 0
    assert (cfg.run_dir / "plots" / "overview.png").stat().st_size > 1000
    assert (cfg.run_dir / "report.md").read_text().startswith("# Run")


def test_cosine_schedule_resumes_exactly_and_refuses_other_steps(tmp_path):
    """optim.schedule=cosine reaches the engine; stopped at a checkpoint and resumed with the
    same steps it equals the uninterrupted run; other steps would bend the planned schedule,
    so resuming with them is refused."""
    from otcfm.train.config import ConfigError

    cos = {"optim.schedule": "cosine"}
    straight = train(tiny(tmp_path, "straight", **cos), progress=False)
    half = tiny(tmp_path, "resumed", **cos)
    train(half, progress=False)
    for name in ("latest.pt", "step-000020.pt"):  # as if stopped after the checkpoint of step 10
        (half.run_dir / "checkpoints" / name).unlink()
    resumed = train(half, resume=True, progress=False)
    assert RunConfig.from_toml(resumed.run_dir / "config.toml").optim.schedule == "cosine"
    for va, vb in zip(
        weights(straight.run_dir).values(), weights(resumed.run_dir).values(), strict=True
    ):
        torch.testing.assert_close(va, vb, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"optim.steps 20 -> 30: its cosine learning-rate "):
        train(tiny(tmp_path, "resumed", steps=30, **cos), resume=True, progress=False)
    with pytest.raises(ConfigError, match="optim.schedule: unknown learning-rate schedule "
                                          "'step' \\(choose from constant, cosine\\)"):
        RunConfig().override(["optim.schedule=step"]).validate()
