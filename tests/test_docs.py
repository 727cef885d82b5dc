"""The documents point at things that exist: every test that docs/REPRODUCTION.md says pins a behaviour."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_pinning_test_named_in_reproduction_md_exists():
    text = (REPO / "docs" / "REPRODUCTION.md").read_text()
    named, current = [], None
    # "`test_x.py::test_a`, `::test_b`": a bare ::name belongs to the file named before it.
    for file, test in re.findall(r"`(?:tests/)?(test_\w+\.py)?::(\w+)`", text):
        current = file or current
        named.append((current, test))
    assert len(named) > 40
    missing = [f"{f}::{t}" for f, t in named if not re.search(rf"^def {t}\(", (REPO / "tests" / f).read_text(), re.M)]
    assert not missing, missing
