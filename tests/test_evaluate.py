"""Evaluation (ipl.evaluation, scripts/evaluate.py) and the Table-1 reproduction, on tiny
generators and randomly initialised metric networks (CPU)."""

import copy
import json
import logging
import re
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_OVERRIDES, run_script
from PIL import Image

import ipl.evaluation as E
import ipl.table1 as T
from ipl import config as config_lib
from ipl import metrics as M
from ipl.backends.stylegan2 import build_source_generator, mean_latent
from ipl.clip import load_clip
from ipl.sampling import load_adapted, render, truncation_centre, z_from_seeds
from stylegan2 import CheckpointError, save_generator

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(n=12, batch=5, is_splits=2, is_size=75, lpips_clusters=3, lpips_size=None)
WEIGHT_ENV_VARS = [w.env_var for w in M.WEIGHTS.values()]


class TinyClassifier(torch.nn.Module):
    """Stands in for Inception-v3 (images -> 10 logits): the real one costs seconds per call here."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.head = torch.nn.Linear(8, classes)

    def forward(self, x):
        return self.head(self.conv(x).relu().mean(dim=(2, 3)))


class TinyExtractor(torch.nn.Module):
    """Stands in for ArcFace IR-SE50 (images -> features)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, stride=2)

    def forward(self, x):
        return self.conv(x).tanh().flatten(1)


def pixel_distance(x, y):
    """Stands in for LPIPS: a per-pair distance (B,)."""
    return ((x - y) ** 2).mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def networks():
    """Metric networks: HED, the SIFID stem and CLIP with their real architectures
    (random weights); small stand-ins where the real network would take seconds."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return E.MetricNetworks(
            inception=TinyClassifier().eval(),
            sifid_stem=M.InceptionStem(),
            hed=M.HED().eval(),
            arcface=TinyExtractor().eval(),
            lpips=pixel_distance,
            clip=load_clip("tiny"),
        )


@pytest.fixture(scope="module")
def adapted_file(tmp_path_factory):
    """A tiny 'adapted' generator.pt as Stage 2 writes it (run config, meta), and its source."""
    root = tmp_path_factory.mktemp("eval")
    config = config_lib.load_config(None, TINY_OVERRIDES)
    source, _ = build_source_generator(config.generator, "cpu")
    adapted = copy.deepcopy(source)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if not name.startswith("style."):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    meta = {"source_class": "human", "target_class": "tolkien elf"}
    path = save_generator(root / "generator.pt", adapted, meta=meta, config=config_lib.to_dict(config), step=4)
    refs = root / "refs"
    refs.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("b.png", 40), ("a.png", 48), ("c.jpg", 36)):  # R1..R3 in name order: a, b, c
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(refs / name)
    return {"path": path, "source": source, "adapted": adapted, "refs": refs}


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """No weight file anywhere: empty pretrained folder and torch.hub cache, no env overrides."""
    monkeypatch.setenv("IPL_PRETRAINED_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for var in WEIGHT_ENV_VARS:
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------------------
# One pass over the images


def test_fan_out_gives_every_consumer_the_whole_stream_in_order():
    produced = []

    def items():
        for i in range(7):
            produced.append(i)
            yield i

    out = E.fan_out(items(), {"list": list, "sum": sum, "first": lambda s: next(iter(s))})
    assert out == {"list": list(range(7)), "sum": 21, "first": 0}
    assert produced == list(range(7))  # one pass, even with a consumer that stops early


def test_fan_out_raises_a_consumer_error_and_stops_the_stream():
    produced = []

    def items():
        for i in range(1000):
            produced.append(i)
            yield i

    def failing(stream):
        for i in stream:
            if i == 3:
                raise ValueError("metric failed at item 3")

    with pytest.raises(ValueError, match="item 3"):
        E.fan_out(items(), {"ok": list, "bad": failing}, depth=2)
    assert len(produced) < 20
    assert not [t for t in threading.enumerate() if t.name.startswith("metric-")]


def test_image_pairs_stream_batches_of_the_same_seeds(adapted_file):
    source, adapted = adapted_file["source"], adapted_file["adapted"]
    pairs = E.image_pairs(adapted, range(7), source=source, batch=3, quantize=True)
    batches = list(pairs)
    assert [a.shape[0] for _, a in batches] == [3, 3, 1]
    z = z_from_seeds([3, 4, 5], 16)
    torch.testing.assert_close(batches[1][0], E.quantize_images(render(source, z, chunk=3)))
    torch.testing.assert_close(batches[1][1], E.quantize_images(render(adapted, z, chunk=3)))
    # 8-bit levels: (x + 1) * 127.5 is an integer.
    levels = (batches[0][1] + 1) * 127.5
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------
# Metrics


def test_metrics_json_equals_the_metric_functions_called_directly(adapted_file, networks, tmp_path):
    settings = E.EvalSettings(metrics=E.METRICS, **SMALL)
    references = E.load_references(adapted_file["refs"])
    assert list(references) == ["a.png", "b.png", "c.jpg"]
    record = E.evaluate_checkpoint(adapted_file["path"], networks, settings, device="cpu", references=references, progress=False)
    path = E.write_record(record, tmp_path)
    got = json.loads(path.read_text())["metrics"]

    # The same images, rendered and quantised independently, then every metric at once.
    adapted, info = load_adapted(adapted_file["path"], "cpu")
    source = adapted_file["source"]
    centre, _ = truncation_centre(info, None, source)
    z = z_from_seeds(range(12), 16)
    src = E.quantize_images(render(source, z, 0.7, centre, chunk=5))
    adp = E.quantize_images(render(adapted, z, 0.7, centre, chunk=5))
    clip = networks.clip
    lpips = M.compute_intra_cluster_lpips(networks.lpips, adp, num_clusters=3, image_size=None)
    expected = {
        "is": M.compute_inception_score(networks.inception, adp, splits=2, image_size=75)[0],
        "scs": M.compute_scs(networks.hed, src, adp),
        "id": M.compute_id(networks.arcface, src, adp),
        "lpips_diversity": lpips.mean,
        "clip_diversity": M.compute_clip_diversity(clip.encode_images, adp),
        "clip_score": M.compute_clip_score(clip.encode_images, adp, clip.encode_text(["tolkien elf"])[0]),
    }
    sifid = M.compute_sifid(networks.sifid_stem, adp, list(references.values()))
    expected.update({f"sifid_R{i + 1}": v for i, v in enumerate(sifid)})
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert got["lpips_cluster_sizes"] == list(lpips.cluster_sizes)
    assert sum(got["lpips_cluster_sizes"]) == 12 - 3  # the first 3 images are the centres

    assert record["target_text"] == "tolkien elf"  # from meta.target_class
    assert record["references"] == {"R1": "a.png", "R2": "b.png", "R3": "c.jpg"}
    assert record["settings"]["n"] == 12 and record["seeds"] == [0, 11]
    table = (tmp_path / "metrics.md").read_text()
    assert "| human → tolkien elf | " + f"{got['is']:.3f} | {got['scs']:.3f} | {got['id']:.3f} | {got['sifid_R1']:.3f}" in table


def test_a_generator_compared_with_itself_has_scs_and_id_of_one(adapted_file, networks):
    adapted = adapted_file["adapted"]
    settings = E.EvalSettings(metrics=("scs", "id"), **SMALL)
    out = E.evaluate_generators(adapted, networks, settings, source=adapted, truncation_latent=mean_latent(adapted), progress=False)
    assert out["scs"] == pytest.approx(1.0) and out["id"] == pytest.approx(1.0)
    assert set(out) == {"scs", "id"}


def test_id_with_clip_features_needs_no_arcface(adapted_file, networks):
    only_clip = E.MetricNetworks(clip=networks.clip)
    settings = E.EvalSettings(metrics=("id",), id_net="clip", **SMALL)
    centre = mean_latent(adapted_file["source"])
    out = E.evaluate_generators(adapted_file["adapted"], only_clip, settings, source=adapted_file["source"], truncation_latent=centre, progress=False)
    z = z_from_seeds(range(12), 16)
    src, adp = (E.quantize_images(render(g, z, 0.7, centre, chunk=5)) for g in (adapted_file["source"], adapted_file["adapted"]))
    assert out["id"] == pytest.approx(M.compute_id(networks.clip.encode_images, src, adp), rel=1e-5)


def test_only_the_requested_metrics_need_weights(no_weights):
    assert E.required_networks(E.EvalSettings(metrics=("is",))) == {"inception"}
    assert E.required_networks(E.EvalSettings(metrics=("id",), id_net="clip")) == {"clip"}
    assert E.required_networks(E.EvalSettings(metrics=("diversity",))) == {"lpips", "clip"}
    with pytest.raises(M.MissingWeightsError) as e:
        E.load_metric_networks(E.required_networks(E.EvalSettings(metrics=("scs",))), "cpu")
    assert "network-bsds500.pytorch" in str(e.value) and "inception" not in str(e.value)
    # Every missing file is named at once.
    with pytest.raises(M.MissingWeightsError) as e:
        E.load_metric_networks(E.required_networks(E.EvalSettings(metrics=("is", "id"))), "cpu")
    assert "inception_v3_google" in str(e.value) and "model_ir_se50.pth" in str(e.value)


def test_missing_weights_exit_cleanly_before_rendering(adapted_file, no_weights, monkeypatch, capsys):
    monkeypatch.setattr(E, "evaluate_checkpoint", lambda *a, **k: pytest.fail("rendered without weights"))
    code, _, err = run_script("evaluate.py", ["--adapted", adapted_file["path"], "--metrics", "scs,id", "--device", "cpu"], monkeypatch, capsys)
    assert code == 2
    assert err.startswith("error:") and "network-bsds500.pytorch" in err and "model_ir_se50.pth" in err
    assert "Traceback" not in err


def test_evaluate_script_writes_metrics_json_and_the_table(adapted_file, tmp_path, monkeypatch, capsys):
    # The metrics whose weights exist offline: ID on CLIP features and the CLIP score, with the tiny CLIP.
    args = ["--adapted", adapted_file["path"], "--metrics", "id,clip", "--id-net", "clip", "--clip-model", "tiny",
            "--n", "6", "--batch", "4", "--device", "cpu", "--out", tmp_path, "--no-progress"]  # fmt: skip
    code, out, err = run_script("evaluate.py", args, monkeypatch, capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert set(record["metrics"]) == {"id", "clip_score"} and record["source"]["spec"] == "recorded"
    assert record["settings"]["n"] == 6 and record["target_text"] == "tolkien elf"
    assert f"| human → tolkien elf | – | – | {record['metrics']['id']:.3f} |" in out
    assert (tmp_path / "metrics.md").read_text().splitlines()[2] in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--metrics", "is,fid"], "unknown metrics"),
        (["--metrics", "sifid"], "--refs"),
        (["--n", "5"], "IS uses 10 splits"),
    ],
)
def test_evaluate_script_rejects_bad_arguments(adapted_file, monkeypatch, capsys, args, message):
    code, _, err = run_script("evaluate.py", ["--adapted", adapted_file["path"], *args], monkeypatch, capsys)
    assert code == 2 and message in err


def test_metrics_without_their_inputs_are_clear_errors(adapted_file, networks):
    adapted = adapted_file["adapted"]
    with pytest.raises(E.EvaluationError, match="source generator"):
        E.evaluate_generators(adapted, networks, E.EvalSettings(metrics=("scs",), **SMALL), progress=False)
    with pytest.raises(E.EvaluationError, match="reference images"):
        E.evaluate_generators(adapted, networks, E.EvalSettings(metrics=("sifid",), **SMALL), progress=False)
    with pytest.raises(E.EvaluationError, match="not loaded: inception"):
        E.evaluate_generators(adapted, E.MetricNetworks(), E.EvalSettings(metrics=("is",), **SMALL), progress=False)


# ---------------------------------------------------------------------------
# Tables


def test_table_has_the_paper_layout_plus_our_columns():
    table = E.metrics_table([("photo → disney", {"is": 3.0891, "scs": 0.5, "sifid_R1": 1.0, "sifid_R2": 2.0, "sifid_R3": 3.25, "clip_score": 0.25})])
    header, rule, row = table.strip().split("\n")
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "Source→Target", "IS", "SCS", "ID", "SIFID R1", "SIFID R2", "SIFID R3", "LPIPS div.", "CLIP div.", "CLIP score",
    ]  # fmt: skip
    assert rule.count("---") == 10
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "photo → disney", "3.089", "0.500", "–", "1.000", "2.000", "3.250", "–", "–", "0.250",
    ]  # fmt: skip


def _reference_table(fixtures):
    """Table 1 as transcribed by hand: {'FFHQ Photo→Disney': [IS NADA, IS IPL, SCS.., ID..]}."""
    rows = {}
    for line in (fixtures / "paper" / "table1_reference.md").read_text().splitlines():
        m = re.match(r"\| ((?:FFHQ|AFHQ) [^|]+?) \| ([\d. |]+)\|$", line)
        if m:
            rows[m.group(1).replace("->", "→")] = [float(x) for x in m.group(2).split("|")]
    return rows


def _paper_sifid(fixtures):
    """Table 1's rows in the paper's extracted text: {'Photo→Disney': [12 numbers]}."""
    rows = {}
    for line in (fixtures / "paper" / "table1_paper_text.tsv").read_text().splitlines():
        cells = [c.strip() for c in line.split("\t")]
        task = next((c for c in cells if "→" in c), None)
        numbers = [c for c in cells if re.fullmatch(r"\d+\.\d{3}", c)]
        if task and len(numbers) == 12 and task not in rows:
            rows[task] = [float(x) for x in numbers]
    return rows


def test_paper_numbers_match_the_reference_and_the_paper_text(fixtures):
    reference, paper = _reference_table(fixtures), _paper_sifid(fixtures)
    assert len(reference) == 10 and len(paper) == 10
    for key, (dataset, task, is_, scs, id_, sifid_nada, sifid_ipl) in T.PAPER_TABLE1.items():
        assert reference[f"{dataset} {task}"] == [*is_, *scs, *id_], key
        assert paper[task] == [*is_, *scs, *id_, *sifid_nada, *sifid_ipl], key
    assert T.paper_metrics("ffhq_elf", "ipl") == {"is": 2.778, "scs": 0.491, "id": 0.772, "sifid_R1": 0.690, "sifid_R2": 0.637, "sifid_R3": 0.701}
    assert T.paper_metrics("tiny", "ipl") is None
    table1 = [p.stem for p in (REPO / "configs").glob("*.yaml") if not p.stem.startswith(("tiny", "diffae_", "ddpm_", "diffusionclip_"))]  # Fig. 5 configs are not Table 1's
    assert sorted(T.PAPER_TABLE1) == sorted(table1)


def test_table1_keeps_the_lambda_with_the_better_is_and_reports_differences(fixtures):
    runs = T.plan_table1(["ffhq_disney"], E.EvalSettings(), runs_root="r")
    records = {
        "ffhq_disney_nada": {"metrics": {"is": 2.5, "scs": 0.4, "id": 0.7}},
        "ffhq_disney_ipl_lambda1": {"metrics": {"is": 2.9, "scs": 0.45, "id": 0.8}},
        "ffhq_disney_ipl_lambda10": {"metrics": {"is": 3.1, "scs": 0.41, "id": 0.75}},
    }
    summary = T.summarize_table1(runs, records)
    row = summary["ffhq_disney"]
    assert row["ipl_lambda"] == "10" and row["ipl"] == records["ffhq_disney_ipl_lambda10"]["metrics"]
    md = T.table1_markdown(summary)
    paper_is = _reference_table(fixtures)["FFHQ Photo→Disney"][:2]
    diff_section = md.split("## Ours − paper")[1].split("##")[0]
    assert f"| FFHQ Photo→Disney | {2.5 - paper_is[0]:+.3f} | {3.1 - paper_is[1]:+.3f} |" in diff_section
    ours_section = md.split("## Ours\n")[1].split("##")[0]
    assert ours_section.strip().splitlines()[-1].endswith("| 10 |")  # the lambda kept


# ---------------------------------------------------------------------------
# Table 1 reproduction


def test_dry_run_plans_every_run_without_weights_or_network(tmp_path, monkeypatch, capsys):
    def forbidden(*args, **kwargs):
        raise AssertionError("the dry run loaded weights or used the network")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.setattr(T, "run_table1", forbidden)
    monkeypatch.setattr(E, "load_metric_networks", forbidden)
    monkeypatch.setattr("ipl.clip.load_clip", forbidden)
    monkeypatch.setattr("ipl.pipeline.Session", forbidden)
    monkeypatch.setattr(M, "resolve_weights", forbidden)
    root = tmp_path / "runs"
    code, out, err = run_script("reproduce_table1.py", ["--dry-run", "--runs-root", root], monkeypatch, capsys)
    assert code == 0, err
    assert not root.exists()

    runs = re.findall(r"^\[(\d+)/30\] (\w+): (NADA|IPL).*? -> (\S+) ", out, flags=re.M)
    assert len(runs) == 30
    dirs = {d for *_, d in runs}
    assert len(dirs) == 30
    for key in T.PAPER_TABLE1:
        for suffix in ("nada", "ipl_lambda1", "ipl_lambda10"):
            assert str(root / f"{key}_{suffix}") in dirs
    blocks = out.split("\n[")
    for block in blocks:
        if ": NADA" in block:
            assert "--set prompt.scheme=manual" in block and "lambda_domain" not in block.split("evaluate:")[0]
        elif "lambda=10" in block:
            assert "--set prompt.scheme=adaptive --set stage1.lambda_domain=10" in block
        assert "evaluate: python scripts/evaluate.py" in block and "--metrics is,scs,id,diversity,clip" in block
    assert out.count("(ID: arcface)") == 21 and out.count("(ID: clip)") == 9  # 7 face and 3 dog domains
    assert "keep the IPL lambda with the best IS" in out


def test_plan_adds_sifid_with_references_and_names_missing_folders(tmp_path):
    (tmp_path / "refs" / "ffhq_elf").mkdir(parents=True)
    runs = T.plan_table1(["ffhq_elf"], E.EvalSettings(), runs_root=tmp_path, refs_root=tmp_path / "refs", lambdas=(1,))
    assert [r.name for r in runs] == ["ffhq_elf_nada", "ffhq_elf_ipl_lambda1"]
    assert all(r.settings.metrics == ("is", "sifid", "scs", "id", "diversity", "clip") for r in runs)
    with pytest.raises(config_lib.ConfigError, match=r"refs/ffhq_disney"):
        T.plan_table1(["ffhq_disney"], E.EvalSettings(), runs_root=tmp_path, refs_root=tmp_path / "refs")


@pytest.mark.slow  # three tiny Stage 1 + 2 runs: 3-20 s on a shared CPU
def test_reproduction_runs_end_to_end_and_resumes_without_redoing_work(tmp_path, networks, caplog):
    overrides = TINY_OVERRIDES + [f"cache_dir={tmp_path / 'cache'}", "stage1.iterations=3", "stage2.iterations=2"]
    settings = E.EvalSettings(metrics=("is", "scs", "id", "diversity", "clip"), **SMALL)
    root = tmp_path / "runs"
    runs = T.plan_table1([str(REPO / "configs" / "tiny.yaml")], settings, runs_root=root, overrides=overrides)
    loads = []

    def load_networks(names):
        loads.append(set(names))
        return networks

    with caplog.at_level(logging.WARNING):
        summary = T.run_table1(runs, device=torch.device("cpu"), load_networks=load_networks, runs_root=root, progress=False)
    assert loads == [{"inception", "hed", "clip", "lpips"}]  # once; the random source is no face: ID on CLIP features
    assert "mapping networks" not in caplog.text  # the recorded source is the one each run was adapted from

    records = {}
    for run in runs:
        ckpt = torch.load(run.run_dir / "generator.pt", weights_only=True)
        expected_scheme = "manual" if run.method == "nada" else "adaptive"
        assert ckpt["config"]["prompt"]["scheme"] == expected_scheme
        assert (run.run_dir / "mapper.pt").exists() == (run.method == "ipl")  # Stage 1 for IPL only
        if run.method == "ipl":
            assert ckpt["config"]["stage1"]["lambda_domain"] == run.lambda_domain
        records[run.name] = json.loads((run.run_dir / "metrics.json").read_text())["metrics"]
    row = summary["tiny"]
    assert row["nada"] == records["tiny_nada"]
    best = max((records[f"tiny_ipl_lambda{lam}"]["is"], lam) for lam in ("1", "10"))[1]
    assert row["ipl_lambda"] == best and row["ipl"] == records[f"tiny_ipl_lambda{best}"]
    assert json.loads((root / "table1.json").read_text())["tiny"]["ipl_lambda"] == best
    md = (root / "table1.md").read_text()
    assert "| tiny: human→tolkien elf | " + f"{row['nada']['is']:.3f} | {row['ipl']['is']:.3f} |" in md

    # Run again: every generator and every evaluation is reused.
    def no_work(*args):
        raise AssertionError("finished work was redone")

    again = T.run_table1(runs, device=torch.device("cpu"), load_networks=no_work, runs_root=root, progress=False, adapt=no_work)
    assert again["tiny"]["ipl_lambda"] == best and again["tiny"]["nada"] == json.loads(json.dumps(row["nada"]))

    # Two independent jobs (--shard 0/2, 1/2) split the runs; the job that finds every run done writes the tables.
    from ipl.distributed import parse_shard

    (runs[1].run_dir / "metrics.json").unlink()
    (root / "table1.md").unlink()
    evaluated = []

    def counting_networks(names):
        evaluated.append(names)
        return networks

    first = T.run_table1(runs, device=torch.device("cpu"), load_networks=counting_networks, runs_root=root, progress=False, adapt=no_work, world=parse_shard("0/2"))
    assert first is None and not (root / "table1.md").exists() and evaluated == []  # run 1 is job 1's
    second = T.run_table1(runs, device=torch.device("cpu"), load_networks=counting_networks, runs_root=root, progress=False, adapt=no_work, world=parse_shard("1/2"))
    assert len(evaluated) == 1 and (runs[1].run_dir / "metrics.json").exists()
    assert second["tiny"]["ipl_lambda"] == best and (root / "table1.md").exists()

    # Other evaluation settings: evaluated again, never retrained.
    runs_n = T.plan_table1([str(REPO / "configs" / "tiny.yaml")], E.EvalSettings(**{**SMALL, "n": 13}, metrics=("is",)), runs_root=root, overrides=overrides)
    T.run_table1(runs_n, device=torch.device("cpu"), load_networks=lambda names: networks, runs_root=root, progress=False, adapt=no_work)
    assert json.loads((runs[0].run_dir / "metrics.json").read_text())["settings"]["n"] == 13

    # Another configuration in the same run directories is refused.
    changed = T.plan_table1([str(REPO / "configs" / "tiny.yaml")], settings, runs_root=root, overrides=overrides + ["stage2.lr=0.001"])
    with pytest.raises(CheckpointError, match="stage2.lr"):
        T.run_table1(changed, device=torch.device("cpu"), load_networks=no_work, runs_root=root, progress=False, adapt=no_work)


def test_a_diffipl_run_is_scored_on_held_out_images_reconstructed_and_edited(networks, tmp_path):
    from helpers import REPO, save_tiny_diffae_run

    from ipl.backends.diffae.editing import load_editor
    from ipl.images import image_tensor, list_images

    path, config, source, adapted = save_tiny_diffae_run(tmp_path)
    folder = REPO / "assets" / "demo_images"
    settings = E.EvalSettings(metrics=("is", "scs", "clip"), n=10, batch=4)
    record = E.evaluate_checkpoint(path, networks, settings, device="cpu", images=folder, progress=False)
    assert record["kind"] == "diffae" and record["images"]["count"] == 10 and record["target_text"] == "wall painting"
    # By hand: each image inverted by the source, rendered by both models, 8-bit, then the metric functions.
    dc = config.diffusionclip
    src, adp = [], []
    with torch.no_grad():
        for f in list_images(folder)[:10]:
            x0 = image_tensor(f, source.img_size)
            z = source.encode(x0)
            x_t = source.invert(x0, z, dc.t_0, dc.n_inv_step)
            src.append(source.generate(x_t, z, dc.t_0, dc.n_test_step))
            adp.append(adapted.generate(x_t, z, dc.t_0, dc.n_test_step))
    src, adp = E.quantize_images(torch.cat(src)), E.quantize_images(torch.cat(adp))
    assert record["metrics"]["scs"] == pytest.approx(M.compute_scs(networks.hed, [src], [adp]), rel=1e-4)
    is_mean, _ = M.compute_inception_score(networks.inception, [adp], splits=10)
    assert record["metrics"]["is"] == pytest.approx(is_mean, rel=1e-4)
    # The held-out folder must hold the images asked for; a StyleGAN2 file takes no --images.
    with pytest.raises(E.EvaluationError, match="holds 12 images, fewer than --num-images 13"):
        E.evaluate_checkpoint(path, networks, E.EvalSettings(metrics=("is",), n=13), device="cpu", images=folder, progress=False)
    with pytest.raises(E.EvaluationError, match="without data.test_images: pass the held-out images"):
        E.evaluate_checkpoint(path, networks, settings, device="cpu", progress=False)
    editor, _ = load_editor(path, "cpu")
    assert editor.t_0 == dc.t_0


def test_a_ddpm_run_is_scored_on_held_out_images_reconstructed_and_edited(networks, tmp_path):
    from helpers import REPO, save_tiny_ddpm_run

    from ipl.backends.editing import load_editor
    from ipl.images import image_tensor, list_images

    path, config, source, adapted = save_tiny_ddpm_run(tmp_path)
    folder = REPO / "assets" / "demo_images"
    settings = E.EvalSettings(metrics=("is", "scs", "clip"), n=6, batch=4, is_splits=2)
    record = E.evaluate_checkpoint(path, networks, settings, device="cpu", images=folder, progress=False)
    assert record["kind"] == "ddpm" and record["images"]["count"] == 6 and record["target_text"] == "wall painting"
    # By hand, with DiffusionCLIP's walks written out: x_{t_0} of each image by the source, rendered by both, 8-bit.
    dc = config.diffusionclip
    alphas_cumprod = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))

    def walk(net, x, seq, pairs):
        for t, t_next in pairs:
            a, a_next = float(alphas_cumprod[t]), 1.0 if t_next < 0 else float(alphas_cumprod[t_next])
            eps = net(x, torch.full((x.shape[0],), t)).sample
            x = a_next**0.5 * (x - (1 - a) ** 0.5 * eps) / a**0.5 + (1 - a_next) ** 0.5 * eps
        return x

    inv = [int(s) for s in np.linspace(0, 1, dc.n_inv_step) * dc.t_0]
    gen = [int(s) for s in np.linspace(0, 1, dc.n_test_step) * dc.t_0]
    back = list(zip(reversed(gen), reversed([-1] + gen[:-1])))
    with torch.no_grad():
        x0 = torch.cat([image_tensor(f, source.img_size) for f in list_images(folder)[:6]])
        x_t = walk(source.net, x0, inv, list(zip(inv[:-1], inv[1:])))
        src, adp = E.quantize_images(walk(source.net, x_t, gen, back)), E.quantize_images(walk(adapted.net, x_t, gen, back))
    assert record["metrics"]["scs"] == pytest.approx(M.compute_scs(networks.hed, [src], [adp]), rel=1e-3)
    is_mean, _ = M.compute_inception_score(networks.inception, [adp], splits=2)
    assert record["metrics"]["is"] == pytest.approx(is_mean, rel=1e-3)
    editor, run = load_editor(path, "cpu")
    assert editor.t_0 == dc.t_0 and run.generator.kind == "ddpm"
    with pytest.raises(E.EvaluationError, match="without data.test_images: pass the held-out images"):
        E.evaluate_checkpoint(path, networks, settings, device="cpu", progress=False)
