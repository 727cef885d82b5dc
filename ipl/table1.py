"""The reproduction of the paper's Table 1: the plan, the runs, and our numbers beside the paper's.

For each config, NADA (prompt scheme ``manual``) and IPL (``adaptive``) with
every lambda of the paper's protocol ({1, 10}; the one with the better IS is
kept), each trained by :class:`ipl.pipeline.Session` into its own run
directory and evaluated there by :mod:`ipl.evaluation`; then our numbers
beside the paper's (:data:`PAPER_TABLE1`). Finished work (a
``generator.pt`` of the same configuration, a ``metrics.json`` of the same
settings and weights) is skipped, so an interrupted reproduction is re-run
with the same command. This module sits above both training and evaluation;
neither imports it.
"""

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


from .evaluation.checkpoint import RECORD_FORMAT, evaluate_checkpoint
from .evaluation.report import _fmt, write_record
from .evaluation.settings import (
    FACE_SOURCES,
    ID_NETWORKS,
    EvalSettings,
    EvaluationError,
    required_networks,
)
from .evaluation.stream import REFERENCE_SUFFIXES, load_references
from .distributed import SINGLE, barrier
from .sampling import RECORDED_SOURCE

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# The paper's numbers

METHODS = ("nada", "ipl")



# Table 1 of the paper: IS, SCS, ID and SIFID (R1, R2, R3) of NADA and IPL.
# SIFID's six columns are read as NADA's three, then IPL's, the order of the
# other metrics' columns.
PAPER_TABLE1 = {
    "ffhq_disney": ("FFHQ", "Photo→Disney", (2.721, 3.089), (0.407, 0.448), (0.782, 0.801), (2.776, 3.136, 3.670), (2.517, 2.930, 3.497)),
    "ffhq_anime": ("FFHQ", "Photo→Anime painting", (2.450, 3.051), (0.324, 0.518), (0.666, 0.776), (2.956, 1.811, 1.242), (2.845, 1.595, 1.021)),
    "ffhq_wall_painting": ("FFHQ", "Photo→Wall painting", (2.183, 2.676), (0.439, 0.487), (0.594, 0.637), (1.944, 1.220, 1.331), (1.930, 1.183, 1.274)),
    "ffhq_ukiyoe": ("FFHQ", "Photo→Ukiyo-e", (2.205, 2.974), (0.420, 0.506), (0.775, 0.632), (1.954, 1.990, 1.326), (1.165, 1.255, 0.878)),
    "ffhq_pixar": ("FFHQ", "Human→Pixar character", (2.703, 2.785), (0.379, 0.461), (0.757, 0.853), (0.793, 0.932, 0.865), (0.638, 0.821, 1.092)),
    "ffhq_elf": ("FFHQ", "Human→Tolkien elf", (2.479, 2.778), (0.416, 0.491), (0.711, 0.772), (0.632, 1.495, 1.452), (0.690, 0.637, 0.701)),
    "ffhq_werewolf": ("FFHQ", "Human→Werewolf", (2.619, 2.809), (0.399, 0.417), (0.642, 0.747), (1.969, 1.846, 1.967), (1.734, 1.688, 1.911)),
    "afhqdog_cartoon": ("AFHQ", "Photo→Cartoon", (6.505, 8.658), (0.407, 0.563), (0.925, 0.941), (2.708, 2.672, 3.870), (2.517, 2.477, 3.278)),
    "afhqdog_pointillism": ("AFHQ", "Photo→Pointillism", (5.419, 6.913), (0.224, 0.542), (0.775, 0.881), (7.081, 5.288, 7.142), (4.818, 3.089, 4.074)),
    "afhqdog_cubism": ("AFHQ", "Photo→Cubism", (4.165, 6.450), (0.386, 0.463), (0.934, 0.943), (2.779, 2.938, 3.199), (2.431, 2.956, 2.284)),
}


def paper_metrics(config_key, method):
    """The paper's numbers for one row and method, keyed as our metrics dicts (None if not a Table-1 row)."""
    row = PAPER_TABLE1.get(config_key)
    if row is None:
        return None
    i = METHODS.index(method)
    _, _, is_, scs, id_, sifid_nada, sifid_ipl = row
    sifid = (sifid_nada, sifid_ipl)[i]
    return {"is": is_[i], "scs": scs[i], "id": id_[i], **{f"sifid_R{r + 1}": v for r, v in enumerate(sifid)}}


def row_label(config_key, config=None):
    if config_key in PAPER_TABLE1:
        dataset, task = PAPER_TABLE1[config_key][:2]
        return f"{dataset} {task}"
    if config is not None:
        return f"{config_key}: {config.prompt.source_class}→{config.prompt.target_class}"
    return config_key


# ---------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Table1Run:
    """One adaptation run of the reproduction and its evaluation."""

    config_key: str  # e.g. "ffhq_disney"
    config_path: Path
    method: str  # "nada" | "ipl"
    lambda_domain: Optional[float]  # IPL's lambda (None for NADA)
    run_dir: Path
    overrides: tuple  # --set overrides, in order (the user's first)
    settings: EvalSettings  # its evaluation
    references: Optional[Path] = None  # SIFID reference folder

    @property
    def name(self):
        return self.run_dir.name

    def adapt_command(self):
        sets = " ".join(f"--set {_quote(o)}" for o in self.overrides)
        return f"python scripts/adapt.py --config {self.config_path} {sets}"

    def evaluate_command(self, device="auto"):
        s = self.settings
        parts = [
            "python scripts/evaluate.py",
            f"--adapted {self.run_dir / 'generator.pt'}",
            f"--source {RECORDED_SOURCE}",
            f"--metrics {','.join(s.metrics)}",
            f"--num-images {s.n} --seed-start {s.seed_start} --batch {s.batch} --truncation {s.truncation}",
            f"--id-net {s.id_net}",
            f"--out {self.run_dir}",
            f"--device {device}",
        ]
        if self.references is not None:
            parts.insert(4, f"--refs {self.references}")
        return " ".join(parts)


def _quote(text):
    return f"'{text}'" if any(c in text for c in " '\"") else text


def _format_lambda(value):
    return f"{value:g}"


def resolve_config_path(name, configs_dir=None):
    """A config name (``ffhq_disney``) or a YAML path -> ``(key, path)``."""
    from .config import ConfigError

    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path.stem, path
    folder = Path(configs_dir) if configs_dir else Path(__file__).resolve().parents[1] / "configs"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise ConfigError(f"no config named {name!r} in {folder} (known: {known}); or pass a YAML path")
    try:  # shorter commands in the plan when run from the repository
        path = path.relative_to(Path.cwd())
    except ValueError:
        pass
    return name, path


def id_network_for(config, dog_id="clip"):
    """ArcFace for face sources; for others (AFHQ dogs) the paper's TransFG has no
    released weights, so ``dog_id`` decides: ``"clip"`` features, or ``"none"`` (no ID)."""
    return "arcface" if config.generator.checkpoint in FACE_SOURCES else dog_id


def plan_table1(configs, settings, *, runs_root="runs/table1", lambdas=(1.0, 10.0), overrides=(), refs_root=None, dog_id="clip", configs_dir=None):
    """Every run of the reproduction, in order; reads the YAML files only.

    Args:
        configs: Config names or YAML paths (default in the script: the ten
            of :data:`PAPER_TABLE1`).
        settings: Base :class:`EvalSettings`; per run, ID uses
            :func:`id_network_for` and SIFID is added when ``refs_root`` is
            given (``refs_root/<config>/`` holds that domain's references).
        lambdas: IPL's lambda sweep ({1, 10} in the paper).
        overrides: ``--set`` overrides applied to every run.
    """
    from .config import ConfigError, load_config

    if dog_id not in ID_NETWORKS + ("none",):
        raise EvaluationError(f"dog_id must be 'clip' or 'none', got {dog_id!r}")
    runs, missing_refs = [], []
    for name in configs:
        key, path = resolve_config_path(name, configs_dir)
        config = load_config(path, overrides)  # validates the overrides early
        metrics = list(settings.metrics)
        id_net = id_network_for(config, dog_id)
        if id_net == "none":
            metrics = [m for m in metrics if m != "id"]
        references = None
        if refs_root is not None:
            references = Path(refs_root) / key
            if not references.is_dir():
                missing_refs.append(str(references))
            metrics.append("sifid")
        elif "sifid" in metrics:
            raise EvaluationError("SIFID needs reference images: pass refs_root (--refs-root DIR with DIR/<config>/)")
        run_settings = dataclasses.replace(settings, metrics=tuple(metrics), id_net=settings.id_net if id_net == "none" else id_net)
        variants = [("nada", None)] + [("ipl", float(lam)) for lam in lambdas]
        for method, lam in variants:
            suffix = method if lam is None else f"{method}_lambda{_format_lambda(lam)}"
            run_dir = Path(runs_root) / f"{key}_{suffix}"
            own = [f"name={run_dir.name}", f"run_dir={run_dir}"]
            if method == "nada":
                own.append("prompt.scheme=manual")
            else:
                own += ["prompt.scheme=adaptive", f"stage1.lambda_domain={_format_lambda(lam)}"]
            runs.append(Table1Run(key, path, method, lam, run_dir, tuple(overrides) + tuple(own), run_settings, references))
    if missing_refs:
        raise ConfigError("SIFID reference folders not found: " + ", ".join(missing_refs))
    return runs


def describe_plan(runs, device="auto", runs_root=None):
    """The plan as text: per run its directory, state on disk, commands and metrics."""
    lines = []
    for i, run in enumerate(runs, 1):
        what = "NADA (manual prompts)" if run.method == "nada" else f"IPL (adaptive prompts), lambda={_format_lambda(run.lambda_domain)}"
        have = [f for f in ("generator.pt", "metrics.json") if (run.run_dir / f).exists()]
        state = f"found {', '.join(have)} (checked before reuse)" if have else "nothing yet"
        lines += [
            f"[{i}/{len(runs)}] {run.config_key}: {what} -> {run.run_dir} ({state})",
            f"    adapt:    {run.adapt_command()}",
            f"    evaluate: {run.evaluate_command(device)}",
            f"    metrics:  {', '.join(run.settings.metrics)} (ID: {run.settings.id_net if 'id' in run.settings.metrics else 'not computed'})",
        ]
    if runs_root is not None:
        lines.append(f"then: per config, keep the IPL lambda with the best IS; write {Path(runs_root) / 'table1.md'} and table1.json")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Running it


def _adapted_is_complete(run, config):
    """True if ``run_dir/generator.pt`` is a finished Stage 2 of this configuration."""
    from stylegan2.checkpoint import CheckpointError, read_checkpoint

    from . import config as config_lib
    from .pipeline import STAGE2_KEYS, config_differences

    path = run.run_dir / "generator.pt"
    if not path.is_file():
        return False
    ckpt = read_checkpoint(path)
    saved = ckpt.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} does not record its configuration; move it away to train this run again")
    diffs = config_differences(saved, config_lib.to_dict(config), STAGE2_KEYS)
    if diffs:
        raise CheckpointError(
            f"{path} was trained with another configuration ({'; '.join(diffs[:5])}); "
            "use another --runs-root or delete the run directory"
        )
    return ckpt.get("step", 0) >= config.stage2.iterations


def _evaluation_key(record):
    return {k: record.get(k) for k in ("settings", "target_text", "references")} | {"sha256": record["adapted"]["sha256"]}


def _reusable_record(run, target_text):
    """The run's ``metrics.json`` if it was computed with these settings on these weights."""
    from stylegan2.utils import sha256_file

    path = run.run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    refs = sorted(p.name for p in run.references.iterdir() if p.suffix.lower() in REFERENCE_SUFFIXES) if run.references else []
    wanted = {
        "settings": run.settings.to_dict(),
        "target_text": target_text if "clip" in run.settings.metrics else None,
        "references": {f"R{i + 1}": name for i, name in enumerate(refs)},
        "sha256": sha256_file(run.run_dir / "generator.pt"),
    }
    return record if record.get("format") == RECORD_FORMAT and _evaluation_key(record) == wanted else None


def assign_runs(runs, world):
    """The runs ``world``'s rank owns: run i belongs to rank ``i % size`` (torchrun ranks or ``--shard i/n`` jobs)."""
    return [run for i, run in enumerate(runs) if world.owns(i)]


def build_banks(configs, device, world=SINGLE, progress=True):
    """Build the source-feature banks the IPL runs of ``configs`` draw from, each once, sharded over the ranks.

    Runs of the same source generator share one bank; building the banks
    first, together, keeps two ranks from rendering the same bank.
    """
    from .backends.stylegan2 import StyleGAN2Backend
    from .backends.stylegan2.bank import build_stage1_bank, stage1_bank_path
    from .build import build_clip
    from .config import resolve
    from .stages.stage1 import STAGE1_SCHEMES

    done, source, models = set(), None, None
    for config in configs:
        if config.generator.kind != "stylegan2" or config.prompt.scheme not in STAGE1_SCHEMES or config.stage1.images != "bank":
            continue
        if (config.generator, config.clip) != source:  # the plan lists the runs of one source together
            models = None  # the previous source's models go before the next are loaded
            source = (config.generator, config.clip)
            models = StyleGAN2Backend(config, device), build_clip(config.clip, device)
        backend, clip_model = models
        cache_dir = resolve(config).cache_dir
        path, _ = stage1_bank_path(config, cache_dir, backend.info, clip_model)
        if path not in done:
            log.info("source-feature bank %s", path)
            build_stage1_bank(config, cache_dir, backend.generator, backend.info, clip_model, backend.truncation_latent, progress=progress, world=world)
            done.add(path)


def run_table1(runs, *, device, load_networks, runs_root, progress=True, adapt=None, world=SINGLE):
    """Train and evaluate every planned run (skipping finished work), then write the tables.

    Args:
        runs: From :func:`plan_table1`.
        device: ``torch.device`` for training and evaluation.
        load_networks: ``names -> MetricNetworks``; called once, with every
            network the remaining evaluations need, and only if one is needed.
        runs_root: Where ``table1.md`` and ``table1.json`` go.
        adapt: ``config -> generator.pt path``; default: Stage 1 + 2 with
            :class:`ipl.pipeline.Session` (resuming a partial run).
        world: Ranks sharing the runs (:mod:`ipl.distributed`): each run is
            trained and evaluated by the one rank :func:`assign_runs` gives
            it. torchrun ranks first build the shared banks together and rank
            0 writes the tables when all are done; a ``--shard`` job writes
            them when it finds every run finished.

    Returns:
        The summary written to ``table1.json``, or None where this process
        does not write it (other ranks; a shard that finished before others).
    """
    from .config import load_config

    def default_adapt(config):
        from .pipeline import adapt_run

        return adapt_run(config, device, progress)

    configs = {run.name: load_config(run.config_path, run.overrides) for run in runs}
    if adapt is None and world.active:
        build_banks([configs[run.name] for run in runs], device, world, progress)
    adapt = adapt or default_adapt
    networks = None
    records = {}
    mine = assign_runs(runs, world)
    for i, run in enumerate(mine, 1):
        config = configs[run.name]
        log.info("[%d/%d] %s%s", i, len(mine), run.name, f" (rank {world.rank} of {world.size})" if world.size > 1 else "")
        if _adapted_is_complete(run, config):
            log.info("  reusing %s", run.run_dir / "generator.pt")
        else:
            adapt(config)
        target_text = config.prompt.target_class
        record = _reusable_record(run, target_text)
        if record is not None:
            log.info("  reusing %s", run.run_dir / "metrics.json")
        else:
            if networks is None:
                networks = load_networks(set().union(*(required_networks(r.settings) for r in mine)))
            references = load_references(run.references) if run.references else None
            record = evaluate_checkpoint(
                run.run_dir / "generator.pt",
                networks,
                run.settings,
                device=device,
                source=RECORDED_SOURCE,
                references=references,
                target_text=target_text,
                progress=progress,
            )
            write_record(record, run.run_dir)
        records[run.name] = record

    # The tables need every run: the others' records come from their run directories.
    barrier(world)
    if world.active and not world.is_main:
        return None
    for run in runs:
        if run.name not in records:
            record = _reusable_record(run, configs[run.name].prompt.target_class)
            if record is not None:
                records[run.name] = record
    missing = [run.name for run in runs if run.name not in records]
    if missing:
        log.info("table 1 waits for %d run(s) of other jobs (%s); run the same command again once they finish", len(missing), ", ".join(missing[:5]))
        return None
    summary = summarize_table1(runs, records, configs)
    runs_root = Path(runs_root)
    runs_root.mkdir(parents=True, exist_ok=True)
    (runs_root / "table1.json").write_text(json.dumps(summary, indent=2) + "\n")
    (runs_root / "table1.md").write_text(table1_markdown(summary))
    return summary


def summarize_table1(runs, records, configs=None):
    """Per config: NADA's metrics, every IPL lambda's, the chosen lambda (best IS), the paper's."""
    summary = {}
    for run in runs:
        row = summary.setdefault(
            run.config_key,
            {
                "label": row_label(run.config_key, (configs or {}).get(run.name)),
                "nada": None,
                "ipl": None,
                "ipl_lambda": None,
                "ipl_by_lambda": {},
                "runs": {},
                "paper": {m: paper_metrics(run.config_key, m) for m in METHODS},
                "id_net": run.settings.id_net if "id" in run.settings.metrics else None,
            },
        )
        record = records.get(run.name)
        if record is None:
            continue
        row["runs"][run.name] = str(run.run_dir)
        if run.method == "nada":
            row["nada"] = record["metrics"]
        else:
            row["ipl_by_lambda"][_format_lambda(run.lambda_domain)] = record["metrics"]
    for row in summary.values():
        # The paper's protocol: lambda with the better IS (ties: the first).
        best = None
        for lam, m in row["ipl_by_lambda"].items():
            score = m.get("is", float("nan"))
            if best is None or score > best[1]:
                best = (lam, score)
        if best is not None:
            row["ipl_lambda"] = best[0]
            row["ipl"] = row["ipl_by_lambda"][best[0]]
    return summary


def _cells(summary, source, keys):
    """Table cells per row: ours, the paper's, or their difference."""
    rows = []
    for row in summary.values():
        cells = []
        for key in keys:
            for method in METHODS:
                ours = (row[method] or {}).get(key)
                paper = (row["paper"][method] or {}).get(key)
                if source == "ours":
                    value = ours
                elif source == "paper":
                    value = paper
                else:
                    value = None if ours is None or paper is None else ours - paper
                cells.append("–" if value is None else (f"{value:+.3f}" if source == "diff" else f"{value:.3f}"))
        rows.append((row["label"], cells))
    return rows


def _table(header_keys, rows, extra_header=()):
    header = [f"{name} {m.upper()}" for name in header_keys for m in METHODS] + list(extra_header)
    lines = ["| Source→Target | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(lines) + "\n"


def table1_markdown(summary):
    """Our Table 1, the paper's, their difference, SIFID, and our extra metrics."""
    names = ("IS", "SCS", "ID")
    keys = ("is", "scs", "id")
    ours = _cells(summary, "ours", keys)
    ours = [(label, cells + [row["ipl_lambda"] or "–"]) for (label, cells), row in zip(ours, summary.values())]
    parts = [
        "# Table 1: ours and the paper's\n",
        "## Ours\n",
        _table(names, ours, extra_header=("λ (IPL)",)),
        "\n## Paper (Table 1)\n",
        _table(names, _cells(summary, "paper", keys)),
        "\n## Ours − paper\n",
        _table(names, _cells(summary, "diff", keys)),
    ]
    sifid_keys = tuple(f"sifid_R{i}" for i in (1, 2, 3))
    if any((row[m] or {}).get("sifid_R1") is not None for row in summary.values() for m in METHODS):
        parts += [
            "\n## SIFID (↓), ours / paper\n",
            _table(
                ("SIFID R1", "SIFID R2", "SIFID R3"),
                [
                    (label, [f"{o} / {p}" for o, p in zip(co, cp)])
                    for (label, co), (_, cp) in zip(_cells(summary, "ours", sifid_keys), _cells(summary, "paper", sifid_keys))
                ],
            ),
        ]
    extra = ("lpips_diversity", "clip_diversity", "clip_score")
    parts += ["\n## Not in the paper: diversity and CLIP score\n", _table(("LPIPS div.", "CLIP div.", "CLIP score"), _cells(summary, "ours", extra))]
    lam_rows = []
    for row in summary.values():
        for lam, m in row["ipl_by_lambda"].items():
            lam_rows.append(f"| {row['label']} | {lam} | {_fmt(m.get('is'))} | {'yes' if lam == row['ipl_lambda'] else ''} |")
    if lam_rows:
        parts += ["\n## IPL's lambda (chosen by IS, as in the paper)\n", "| Source→Target | λ | IS | kept |\n|---|---|---|---|\n" + "\n".join(lam_rows) + "\n"]
    notes = ["\nNotes:"]
    for row in summary.values():
        if row["id_net"] == "clip":
            notes.append(f"- {row['label']}: ID uses CLIP image features (the paper's TransFG has no released weights).")
        elif row["id_net"] is None:
            notes.append(f"- {row['label']}: ID not computed.")
    notes.append("- Cells marked – were not computed (or are not in the paper).")
    return "".join(parts) + "\n".join(notes) + "\n"
