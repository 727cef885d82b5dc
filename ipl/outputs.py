"""Output folders that never replace what a script did not write.

Every script writes its results into one folder the user names (``--outdir``,
``--out``, a run directory). :class:`OutputFolder` enforces the project's
rule for it: a script writes there only files it owns, and refuses, before
any work starts, a folder that is an input folder (or lies inside one) and
any output that would replace a file it reads or a file it did not write (a
checkpoint, a run's file, a user's photo).

"Owns" is recorded, not guessed: each file is listed in the folder's
``.ipl-outputs.json`` before it is written, so running the same command
again replaces its own earlier results, and nothing else.
"""

import json
import os
from pathlib import Path

from .runtime import folder_problem

MANIFEST = ".ipl-outputs.json"


class OutputError(ValueError):
    """An output folder or file that would replace something the script does not own; the message names the flag."""


def _resolved(path):
    return Path(path).expanduser().resolve()


def _within(path, folder):
    """Whether ``path`` is ``folder`` or lies inside it (both resolved)."""
    return path == folder or folder in path.parents


class OutputFolder:
    """The output folder of one script, and the files it owns there.

    Args:
        folder: The folder (created on the first write).
        flag: How the user named it (``"--outdir"``): every message names it.
        tool: The script (``"translate.py"``), recorded as the owner.
        reads: Files and folders the script reads. The output folder may not
            be (or lie inside) a folder among them, and no output may replace
            any of them.

    Raises:
        OutputError: a file in the folder's place, or the folder is an input folder.
    """

    def __init__(self, folder, flag, tool, reads=()):
        self.folder, self.flag, self.tool = Path(folder).expanduser(), flag, tool
        problem = folder_problem(self.folder)
        if problem:
            raise OutputError(f"{flag} {self.folder} {problem}; give a folder")
        here = _resolved(self.folder)
        self.inputs = set()
        for item in reads:
            item = _resolved(item)
            if item.is_dir() and _within(here, item):
                relation = "is" if here == item else "lies inside"
                raise OutputError(
                    f"{flag} {self.folder} {relation} the input folder {item}: {tool} would write among the files it reads; "
                    f"give {flag} a folder outside it"
                )
            self.inputs.add(item)
        self.owned = self._read_manifest()

    def _read_manifest(self):
        path = self.folder / MANIFEST
        try:
            data = json.loads(path.read_text())
            return set(data["files"]) if isinstance(data, dict) and isinstance(data.get("files"), list) else set()
        except (OSError, ValueError):
            return set()

    def _write_manifest(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / MANIFEST
        part = path.with_name(path.name + ".part")
        part.write_text(json.dumps({"files": sorted(self.owned)}, indent=1) + "\n")
        os.replace(part, path)

    def check(self, *names):
        """Raise :class:`OutputError` if writing any of ``names`` (paths relative to the folder) would
        replace an input or a file this folder's scripts did not write."""
        for name in names:
            target = self.folder / name
            if _resolved(target) in self.inputs:
                raise OutputError(
                    f"{self.flag} {self.folder}: writing {name} would replace {target}, which {self.tool} reads; "
                    f"give {self.flag} another folder"
                )
            if (target.exists() or target.is_symlink()) and str(name) not in self.owned:
                raise OutputError(
                    f"{self.flag} {self.folder} already holds {name}, which {self.tool} did not write "
                    f"(a checkpoint, a run's file or your own); give {self.flag} an empty or new folder"
                )

    def path(self, name):
        """The path to write ``name`` at, recorded as owned first; checked as :meth:`check` does."""
        name = str(name)
        self.check(name)
        if name not in self.owned:
            self.owned.add(name)
            self._write_manifest()
        target = self.folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target
