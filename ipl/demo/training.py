"""The demo's Train tab: ``scripts/adapt.py`` in a background process, and its progress read from the run.

A request (preset, labels, prompt scheme, run name) becomes a config that
:func:`ipl.config.load_config` validates, written to a file, and trained by
``python scripts/adapt.py --config FILE`` in a child process; progress is
read from what the run writes (``stats_stage*.jsonl``, ``samples/``).
Stopping terminates the child (checkpoints are written atomically, so the
last one stays good); starting again without ``restart`` resumes, as
``adapt.py`` does. One process at a time writes a run directory: an
exclusive lock on ``RUN/.demo-train.lock`` is held by the child for its
whole life, so neither this demo nor another one starts a second.
"""

import fcntl
import json
import os
import subprocess
import sys
import tempfile
import typing
from dataclasses import dataclass
from pathlib import Path

from .. import config as config_lib
from ..cli import InputError
from ..stages.stage1 import STAGE1_SCHEMES

REPO = Path(__file__).resolve().parents[2]
ADAPT_SCRIPT = REPO / "scripts" / "adapt.py"
# What a user picks from: a config of configs/ and what it needs.
PRESETS = {
    "tiny StyleGAN2 (CPU, about a minute; random weights)": "configs/tiny.yaml",
    "tiny Diff-IPL (CPU, a few minutes; random weights)": "configs/tiny_diffae.yaml",
    "paper: FFHQ StyleGAN2 1024 px (GPU; downloads the generator and CLIP)": "configs/ffhq_elf.yaml",
}
SCHEMES = typing.get_args(typing.get_type_hints(config_lib.PromptConfig)["scheme"])
LOCK_NAME = ".demo-train.lock"


@dataclass
class Job:
    """A training process the demo started."""

    config: config_lib.Config
    run_dir: Path
    process: subprocess.Popen
    log_path: Path

    def running(self):
        return self.process.poll() is None


def _last_record(path):
    try:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def stage2_steps(config):
    """Stage 2's number of steps for a config (StyleGAN2: ``stage2.iterations``; diffusion runs: epochs x batches)."""
    if config.generator.kind == "stylegan2":
        return config.stage2.iterations
    return config.diffusionclip.epochs * config.data.n_train


class Trainer:
    """Starts, watches and stops ``scripts/adapt.py`` runs under ``runs_root``.

    Args:
        runs_root: Where runs are written (``runs_root/<name>``), the folder
            the other tabs list.
        overrides: ``key=value`` strings applied to every request's preset
            before the request's own name, labels and scheme (e.g. a cache
            folder, or the tests' smaller models).
        python: The interpreter of the child processes.
    """

    def __init__(self, runs_root, overrides=(), python=sys.executable):
        self.runs_root = Path(runs_root).resolve()
        self.overrides = list(overrides)
        self.python = python
        self.jobs = {}  # run_dir -> Job
        self.workdir = Path(tempfile.mkdtemp(prefix="ipl-demo-train-"))

    def config_for(self, preset, name, source_class, target_class, scheme):
        """The validated config of a request; a ConfigError names what to change."""
        if preset not in PRESETS:
            raise InputError(f"preset: choose one of: {'; '.join(PRESETS)}")
        name = (name or "").strip()
        overrides = [
            f"name={name}",
            f"run_dir={self.runs_root / name}" if name and "/" not in name else "run_dir=",
            f"prompt.source_class={source_class or ''}",
            f"prompt.target_class={target_class or ''}",
            f"prompt.scheme={scheme}",
        ]
        # The labels are YAML values: quote them so that 'no' or '1' stay text.
        overrides = [o if not o.startswith("prompt.") or o.startswith("prompt.scheme") else _quoted(o) for o in overrides]
        return config_lib.load_config(REPO / PRESETS[preset], self.overrides + overrides)  # the request has the last word

    def start(self, config, restart=False):
        """Start ``adapt.py`` on ``config``; resumes unless ``restart``. Returns the :class:`Job`."""
        run_dir = config_lib.resolve(config).run_dir.resolve()
        job = self.jobs.get(run_dir)
        if job is not None and job.running():
            raise InputError(f"{run_dir} is being trained already: stop that run first")
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = open(run_dir / LOCK_NAME, "a")  # noqa: SIM115  (handed to the child, closed here after the start)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise InputError(f"another process is training {run_dir}: wait for it, or stop it") from None
        request = Path(tempfile.mkdtemp(prefix=f"{config.name}-", dir=self.workdir))
        config_lib.save_config(config, request / "config.yaml")
        log_path = request / "adapt.log"
        command = [self.python, str(ADAPT_SCRIPT), "--config", str(request / "config.yaml"), "--no-progress"]
        if restart:
            command.append("--restart")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "w") as log:
            # The child inherits the locked file: the lock lasts exactly as long as the training process.
            process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, pass_fds=(lock.fileno(),))  # fmt: skip
        lock.close()
        job = Job(config=config, run_dir=run_dir, process=process, log_path=log_path)
        self.jobs[run_dir] = job
        return job

    def stop(self, run_dir, timeout=30):
        """Terminate the run's process (its last checkpoint stays; start again to resume). Returns whether one was running."""
        job = self.jobs.get(Path(run_dir).resolve())
        if job is None or not job.running():
            return False
        job.process.terminate()
        try:
            job.process.wait(timeout)
        except subprocess.TimeoutExpired:
            job.process.kill()
            job.process.wait()
        return True

    def stop_all(self):
        for run_dir in list(self.jobs):
            self.stop(run_dir)

    def status(self, run_dir):
        """What a run has written so far, and the state of its process.

        Returns:
            Dict: ``state`` (``running``, ``finished``, ``failed``,
            ``stopped`` or ``idle``), ``stage`` and ``step``/``total`` of the
            latest stats record, ``fraction`` of the whole run done,
            ``sample`` (the newest ``samples/*.png`` or None), ``log`` (the
            process output's last lines) and ``text`` (one line for people).
        """
        run_dir = Path(run_dir).resolve()
        job = self.jobs.get(run_dir)
        config = job.config if job else None
        state = "idle"
        if job is not None:
            code = job.process.poll()
            state = "running" if code is None else "finished" if code == 0 else "stopped" if code < 0 else "failed"
        log = ""
        if job is not None and job.log_path.exists():
            log = "\n".join(job.log_path.read_text(errors="replace").splitlines()[-12:])
        samples = sorted((run_dir / "samples").glob("step_*.png")) if (run_dir / "samples").is_dir() else []
        stage, step, total, fraction = None, 0, None, 0.0
        if config is not None:
            learns = config.prompt.scheme in STAGE1_SCHEMES
            totals = {"stage1": config.stage1.iterations if learns else 0, "stage2": stage2_steps(config)}
            last = {s: _last_record(run_dir / f"stats_{s}.jsonl") for s in totals}
            stage = "stage2" if last["stage2"] else "stage1" if last["stage1"] else None
            if stage:
                step, total = last[stage]["step"], totals[stage]
                done = step + (totals["stage1"] if stage == "stage2" else 0)
                fraction = min(1.0, done / max(1, sum(totals.values())))
            if state == "finished":
                fraction = 1.0
        where = f"{stage.replace('stage', 'Stage ')}, step {step} of {total}" if stage else "starting"
        text = {
            "idle": "no training started here",
            "running": f"training {run_dir.name}: {where}",
            "finished": f"{run_dir.name} finished: it is listed in the Translate and Sample tabs (refresh their lists)",
            "stopped": f"{run_dir.name} stopped at {where}; start it again (without 'start over') to resume",
            "failed": f"{run_dir.name} failed at {where}: {log.splitlines()[-1] if log else 'no output'}",
        }[state]
        return {"state": state, "stage": stage, "step": step, "total": total, "fraction": fraction,
                "sample": samples[-1] if samples else None, "log": log, "text": text}  # fmt: skip


def _quoted(override):
    key, _, value = override.partition("=")
    return f"{key}={json.dumps(value)}"  # a JSON string is a YAML string
