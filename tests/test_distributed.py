"""Several processes (gloo, 2 ranks on the CPU): sharded evaluation and bank equal one process's; every run is owned once."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from helpers import REPO, TINY_OVERRIDES
from test_evaluate import adapted_file  # noqa: F401  (a tiny adapted generator.pt, shared)

import ipl.evaluation as E
from ipl import config as config_lib
from ipl import distributed
from ipl.backends.stylegan2 import build_bank, build_source_generator
from ipl.clip import load_clip
from ipl.distributed import World, parse_shard
from ipl.evaluation.stream import batches
from ipl.table1 import assign_runs, build_banks

# -- who owns what ---------------------------------------------------------------


@pytest.mark.parametrize("n,batch,size", [(12, 5, 2), (7, 2, 3), (3, 4, 2), (10, 1, 4)])
def test_batches_go_to_exactly_one_rank_and_are_cut_as_for_one_process(n, batch, size):
    single = batches(n, batch)
    dealt = [b for rank in range(size) for b in batches(n, batch, World(rank, size))]
    assert sorted(dealt) == single  # every batch once, the same batches as one process
    assert [i for lo, hi in single for i in range(lo, hi)] == list(range(n))


def test_every_run_is_owned_by_exactly_one_rank_or_job():
    runs = [f"run{i}" for i in range(7)]
    for size in (1, 2, 3, 8):
        owned = [run for rank in range(size) for run in assign_runs(runs, World(rank, size))]
        assert sorted(owned) == runs
        shards = [run for i in range(size) for run in assign_runs(runs, parse_shard(f"{i}/{size}"))]
        assert shards == owned or sorted(shards) == runs
    assert parse_shard("1/4") == World(1, 4, joined=False) and not parse_shard("1/4").active
    for bad in ("4/4", "-1/2", "a/b", "3"):
        with pytest.raises(config_lib.ConfigError, match="--shard"):
            parse_shard(bad)


# -- two gloo ranks ---------------------------------------------------------------


@pytest.fixture
def one_thread():
    """The ranks run one thread each; so does the single-process reference (the same kernels)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def networks():
    from test_evaluate import TinyClassifier, TinyExtractor, pixel_distance

    from ipl import metrics as M

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return E.MetricNetworks(
            inception=TinyClassifier().eval(), sifid_stem=M.InceptionStem(), hed=M.HED().eval(),
            arcface=TinyExtractor().eval(), lpips=pixel_distance, clip=load_clip("tiny"),
        )  # fmt: skip


SETTINGS = dict(metrics=E.METRICS, n=13, batch=3, is_splits=2, is_size=75, lpips_clusters=3, lpips_size=None)


def references(root):
    import numpy as np
    from PIL import Image

    refs = root / "refs"
    refs.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name, size in (("a.png", 40), ("b.png", 48)):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        if not (refs / name).exists():  # written once: ranks reading them while another rewrites would race
            Image.fromarray(pixels).save(refs / name)
    return E.load_references(refs)


def _rank(rank, size, port, job, root):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    world, device = distributed.init("cpu")
    result = job(world, root)
    if world.is_main:
        torch.save(result, root / "result.pt")
    distributed.close(world)


def run_ranks(job, root, size=2):
    mp.spawn(_rank, args=(size, free_port(), job, root), nprocs=size, join=True)
    return torch.load(root / "result.pt", weights_only=False)


def evaluation(world, root):
    return E.evaluate_checkpoint(
        root / "generator.pt", networks(), E.EvalSettings(**SETTINGS), device="cpu", references=references(root), world=world, progress=False
    )


def test_sharded_evaluation_gives_the_single_process_metrics_json(adapted_file, tmp_path, one_thread):
    import shutil

    shutil.copy(adapted_file["path"], tmp_path / "generator.pt")
    single = evaluation(distributed.SINGLE, tmp_path)
    sharded = run_ranks(evaluation, tmp_path)
    assert sharded["world_size"] == 2 and single["world_size"] == 1
    assert sharded["metrics"] == single["metrics"]  # every metric, IS to LPIPS clusters, exactly
    assert set(single["metrics"]) >= {"is", "sifid_R1", "sifid_R2", "scs", "id", "lpips_diversity", "clip_diversity", "clip_score"}


def bank_job(world, root):
    config = config_lib.load_config(None, TINY_OVERRIDES)
    generator, _ = build_source_generator(config.generator, "cpu")
    clip_model = load_clip("tiny")
    bank = build_bank(root / "bank.pt", {"k": 1}, generator, clip_model, steps=7, batch=3, seed=5, save_every=4, progress=False, world=world)
    return {"w": bank.w, "features": bank.features}


def test_sharded_bank_is_the_single_process_bank(tmp_path, one_thread):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single = bank_job(distributed.SINGLE, tmp_path / "one")
    sharded = run_ranks(bank_job, tmp_path / "two")
    assert torch.equal(single["w"], sharded["w"]) and torch.equal(single["features"], sharded["features"])
    on_disk = torch.load(tmp_path / "two" / "bank.pt", weights_only=True)
    assert torch.equal(on_disk["features"], single["features"]) and on_disk["w"].shape == (21, 16)


def test_evaluate_script_under_torchrun_writes_the_single_process_record(adapted_file, tmp_path):
    # The offline metrics (ID on tiny-CLIP features, CLIP score); every flag survives torchrun, --num-images too.
    args = ["--adapted", str(adapted_file["path"]), "--metrics", "id,clip", "--id-net", "clip", "--clip-model", "tiny",
            "--num-images", "10", "--batch", "3", "--device", "cpu", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"), *args, "--out", str(tmp_path / "one")], capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(REPO / "scripts" / "evaluate.py"), *args, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert a["metrics"] == b["metrics"] and (a["world_size"], b["world_size"]) == (1, 2)
    assert two.stdout.count("written:") == 1  # rank 0 alone writes and prints


def bank_configs(root):
    """Two IPL runs of one tiny source (different targets: one bank) and a NADA run (no Stage 1, no bank)."""
    base = [*TINY_OVERRIDES, f"cache_dir={root / 'cache'}"]
    return [
        config_lib.load_config(None, [*base, "prompt.target_class=tolkien elf"]),
        config_lib.load_config(None, [*base, "prompt.target_class=werewolf"]),
        config_lib.load_config(None, [*base, "prompt.scheme=manual"]),
    ]


def sweep_banks_job(world, root):
    build_banks(bank_configs(root), "cpu", world, progress=False)
    return {p.name: torch.load(p, weights_only=True) for p in sorted((root / "cache" / "banks").glob("bank-*.pt"))}


def test_the_sweep_builds_each_bank_once_sharded_as_one_process_does(tmp_path, one_thread, monkeypatch):
    import ipl.backends.stylegan2 as sg2

    built = []

    def counted(config, device):
        built.append(config.prompt.target_class)
        return sg2.backend.StyleGAN2Backend(config, device)

    monkeypatch.setattr(sg2, "StyleGAN2Backend", counted)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single = sweep_banks_job(distributed.SINGLE, tmp_path / "one")
    assert built == ["tolkien elf"]  # the second run of the same source reuses the loaded models
    sharded = run_ranks(sweep_banks_job, tmp_path / "two")
    assert list(single) == list(sharded) and len(single) == 1
    (name,) = single
    assert torch.equal(single[name]["w"], sharded[name]["w"]) and torch.equal(single[name]["features"], sharded[name]["features"])
    assert single[name]["w"].shape[0] == 6 * 4  # stage1.iterations x stage1.batch
