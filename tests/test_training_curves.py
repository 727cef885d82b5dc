"""Training curves: TensorBoard event files (and W&B calls) that show what stats.jsonl records."""

import json
import os
import sys
import types

import numpy as np
import pytest
from helpers import tiny_config, tiny_diffae_config

from ipl import config as config_lib
from ipl.pipeline import Session
from ipl.sampling import read_png

if os.environ.get("IPL_REQUIRE_DEMO", "") in ("", "0"):  # CI installs the demo extra, tensorboard with it
    pytest.importorskip("tensorboard", reason="the tensorboard package (pip install -e '.[demo]') reads the event files back")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def events(folder):
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def stats(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_curves_equal_stats(tb, records):
    """Every number of every stats.jsonl record is the TensorBoard scalar of the same tag and step."""
    names = {k for r in records for k, v in r.items() if k not in ("step", "time") and isinstance(v, (int, float))}
    assert {"lr", "sec_per_iter"} <= names <= set(tb.Tags()["scalars"])
    for name in names:
        logged = {e.step: e.value for e in tb.Scalars(name)}
        expected = {r["step"]: r[name] for r in records}
        assert sorted(logged) == sorted(expected), name
        for step, value in expected.items():
            assert logged[step] == np.float32(value), (name, step)  # TensorBoard keeps float32


def test_tensorboard_logs_every_stage_of_a_stylegan2_run_as_stats_jsonl_records_it(tmp_path):
    config = tiny_config(tmp_path, "output.tensorboard=true")
    session = Session(config, progress=False)
    session.adapt()
    run = session.run_dir
    for stage in ("stage1", "stage2"):
        assert_curves_equal_stats(events(run / "tb" / stage), stats(run / f"stats_{stage}.jsonl"))
    tb = events(run / "tb" / "stage2")
    assert tb.Scalars("lr")[0].value == np.float32(config.stage2.lr * config.stage2.lr_ratio)
    # The sample grids, at the steps samples/ has them, are the same pictures.
    images = {e.step: e for e in tb.Images("samples")}
    assert sorted(images) == [2, 4]
    png = read_png(run / "samples" / "step_000004.png")
    assert (images[4].height, images[4].width) == png.shape[:2]
    from io import BytesIO

    from PIL import Image

    assert (np.asarray(Image.open(BytesIO(images[4].encoded_image_string)).convert("RGB")) == png).all()


def test_tensorboard_logs_a_diffae_run_and_its_learning_rate_schedule(tmp_path):
    config = tiny_diffae_config(tmp_path, "output.tensorboard=true", "stage2.log_every=1")
    session = Session(config, progress=False)
    session.adapt()
    run = session.run_dir
    records = stats(run / "stats_stage2.jsonl")
    assert_curves_equal_stats(events(run / "tb" / "stage2"), records)
    # StepLR multiplies the rate by gamma after each epoch of n_train steps.
    dc, n = config.diffusionclip, config.data.n_train
    assert [r["lr"] for r in records] == pytest.approx([dc.lr * dc.lr_gamma ** (i // n) for i in range(len(records))])
    assert sorted(e.step for e in events(run / "tb" / "stage2").Images("samples")) == [3, 6]


def test_switching_curves_on_does_not_refuse_resume_and_a_resumed_stage_replaces_the_lost_steps(tmp_path, monkeypatch):
    # Stage 1 is interrupted in its fifth step: its checkpoint is at step 3, its
    # stats went to step 4. A resume with TensorBoard on is accepted and logs 4 and 6.
    from ipl.stages import stage1

    def interrupt(step, values, checkpoint):
        if step == 4:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(stage1, "check_finite", interrupt)
        with pytest.raises(KeyboardInterrupt):
            Session(tiny_config(tmp_path), progress=False).stage1()
    assert [r["step"] for r in stats(tmp_path / "run" / "stats_stage1.jsonl")] == [2, 4]
    resumed = tiny_config(tmp_path, "output.tensorboard=true")
    session = Session(resumed, progress=False)
    session.stage1(resume=True)
    tb = events(session.run_dir / "tb" / "stage1")
    assert [e.step for e in tb.Scalars("total")] == [4, 6]  # steps <= 3 were logged without TensorBoard
    assert_curves_equal_stats(tb, [r for r in stats(session.run_dir / "stats_stage1.jsonl") if r["step"] > 3])


def test_a_purged_resume_keeps_one_value_per_step(tmp_path):
    from ipl.runtime import open_stats

    config = tiny_config(tmp_path, "output.tensorboard=true")
    run = tmp_path / "run"
    log = open_stats(config, run, "stage1")
    for step in (2, 4, 6):
        log.write(step, total=float(step))
    log.close()
    log = open_stats(config, run, "stage1", start=4)  # the checkpoint was at 4: step 6 is written again
    log.write(6, total=60.0)
    log.close()
    assert [(e.step, e.value) for e in events(run / "tb" / "stage1").Scalars("total")] == [(2, 2.0), (4, 4.0), (6, 60.0)]
    assert [r["total"] for r in stats(run / "stats_stage1.jsonl")] == [2.0, 4.0, 60.0]


def test_wandb_gets_the_same_values_one_run_per_stage(tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def log(self, values, step):
            calls.append(("log", step, values))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw)) or FakeRun()
    fake.Image = lambda array: ("image", array.shape)
    fake.api = types.SimpleNamespace(api_key="k")
    monkeypatch.setitem(sys.modules, "wandb", fake)
    config = tiny_config(tmp_path, "output.wandb=true")
    session = Session(config, progress=False)
    session.adapt()
    inits = [c[1] for c in calls if c[0] == "init"]
    assert [kw["job_type"] for kw in inits] == ["stage1", "stage2"] and inits[0]["config"] == config_lib.to_dict(config)
    assert inits[0]["id"] != inits[1]["id"] and inits[0]["resume"] == "allow"
    stage2 = stats(session.run_dir / "stats_stage2.jsonl")
    logged = [c for c in calls if c[0] == "log" and "loss" in c[2]]
    assert [(step, values["loss"], values["lr"]) for _, step, values in logged] == [(r["step"], r["loss"], r["lr"]) for r in stage2]
    assert [c[1] for c in calls if c[0] == "log" and "samples" in c[2]] == [2, 4]
    assert [c[0] for c in calls].count("finish") == 2


def test_curves_without_their_package_are_refused_before_the_run(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb fails
    config = tiny_config(tmp_path, "output.wandb=true")
    with pytest.raises(config_lib.ConfigError, match="output.wandb: true needs the wandb package"):
        Session(config, progress=False)
    assert not (tmp_path / "run" / "config.yaml").exists()
