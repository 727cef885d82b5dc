"""Finding the adapted models under a runs folder."""

from dataclasses import dataclass
from pathlib import Path

import yaml

from stylegan2.checkpoint import CheckpointError

from ..backends import checkpoint_kind

# The adapted model's file in a run directory, per generator kind (the
# backends' ``adapted_file``): Stage 2 writes it last, so a run has one
# only when it finished.
ADAPTED_FILES = {"stylegan2": "generator.pt", "diffae": "autoencoder.pt", "ddpm": "ddpm.pt"}
SEARCH_DEPTH = 3  # runs/<name>/ and runs/<group>/<name>/ (e.g. runs/table1/...)


@dataclass(frozen=True)
class AdaptedRun:
    """One finished run: its adapted model and what it was adapted to."""

    name: str  # the run directory, relative to the runs folder
    path: Path  # the adapted model file
    kind: str  # generator kind, from the checkpoint
    scheme: str  # prompt scheme ("adaptive" = IPL, "manual" = NADA, ...)
    source_class: str
    target_class: str

    @property
    def label(self):
        method = {"adaptive": "IPL", "manual": "NADA"}.get(self.scheme, self.scheme)
        return f"{self.name} ({self.kind}, {method}: {self.source_class} -> {self.target_class})"


def _recorded_prompt(run_dir):
    """The ``prompt`` section of the run's ``config.yaml`` as plain data ({} when unreadable)."""
    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    prompt = data.get("prompt") if isinstance(data, dict) else None
    return prompt if isinstance(prompt, dict) else {}


def find_runs(root):
    """The finished runs under ``root`` (sorted by name); files that are no adapted model are left out.

    A run is a folder holding the adapted model of its kind
    (:data:`ADAPTED_FILES`); the kind is read from the file itself
    (:func:`ipl.backends.checkpoint_kind`), the labels and prompt scheme from
    the run's ``config.yaml``.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    folders = [root] + [p for depth in range(1, SEARCH_DEPTH + 1) for p in root.glob("/".join(["*"] * depth)) if p.is_dir()]
    for folder in folders:
        for expected_kind, filename in ADAPTED_FILES.items():
            path = folder / filename
            if not path.is_file():
                continue
            try:
                kind = checkpoint_kind(path)
            except CheckpointError:
                continue  # an unreadable or foreign file: not a run to offer
            if kind != expected_kind:
                continue
            prompt = _recorded_prompt(folder)
            found.append(
                AdaptedRun(
                    name=str(folder.relative_to(root)) if folder != root else folder.name,
                    path=path,
                    kind=kind,
                    scheme=str(prompt.get("scheme", "?")),
                    source_class=str(prompt.get("source_class", "?")),
                    target_class=str(prompt.get("target_class", "?")),
                )
            )
    return sorted(found, key=lambda run: run.name)
