"""Reports of an evaluation: ``metrics.json`` and a ``metrics.md`` row in the layout of Table 1."""

import json
import math
from pathlib import Path

_COLUMNS = (("IS", "is", 3), ("SCS", "scs", 3), ("ID", "id", 3))
_EXTRA_COLUMNS = (("LPIPS div.", "lpips_diversity", 3), ("CLIP div.", "clip_diversity", 3), ("CLIP score", "clip_score", 3))


def _fmt(value, digits=3):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def metrics_table(rows):
    """Markdown table in the layout of the paper's Table 1 (IS, SCS, ID, SIFID R1..) plus ours.

    Args:
        rows: ``[(label, metrics dict as returned by evaluate_generators), ...]``.
    """
    n_refs = max([3] + [int(k.split("R")[1]) for _, m in rows for k in m if k.startswith("sifid_R")])
    columns = list(_COLUMNS) + [(f"SIFID R{i}", f"sifid_R{i}", 3) for i in range(1, n_refs + 1)] + list(_EXTRA_COLUMNS)
    lines = [
        "| Source→Target | " + " | ".join(c[0] for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for label, m in rows:
        lines.append(f"| {label} | " + " | ".join(_fmt(m.get(key), d) for _, key, d in columns) + " |")
    return "\n".join(lines) + "\n"


def record_markdown(record):
    """``metrics.md``: the table and the settings behind it."""
    s = record["settings"]
    notes = [
        f"- adapted: `{record['adapted']['path']}` (sha256 {record['adapted']['sha256'][:12]}…)",
        f"- source: {record['source']['spec']}" + (f" (`{record['source']['path']}`)" if record["source"]["path"] else ""),
    ]
    bits = "8-bit" if s["quantize"] else "float"
    if "images" in record:  # a Diff-IPL run: held-out real images
        im, ddim = record["images"], record["ddim"]
        notes.append(
            f"- {im['count']} held-out images of `{im['folder']}` ({im['first']} .. {im['last']}), each inverted by the source "
            f"model to t_0={ddim['t_0']} in {ddim['n_inv_step']} steps; source = its reconstruction, adapted = the fine-tuned "
            f"model's render, {ddim['n_test_step']} steps, {bits} images"
        )
    else:
        notes.append(
            f"- {s['n']} images per generator, seeds {record['seeds'][0]}..{record['seeds'][1]}, truncation {s['truncation']} "
            f"towards the {record['truncation_centre']}, {bits} images"
        )
    if "id" in s["metrics"]:
        notes.append(f"- ID network: {s['id_net']}")
    if record["references"]:
        notes.append("- SIFID references: " + ", ".join(f"{k} = `{v}`" for k, v in record["references"].items()))
    if record.get("target_text"):
        notes.append(f"- CLIP score text: \"{record['target_text']}\" ({s['clip_model']})")
    if "is_std" in record["metrics"]:
        notes.append(f"- IS over {s['is_splits']} splits: {record['metrics']['is']:.3f} ± {record['metrics']['is_std']:.3f}")
    return metrics_table([(record["label"], record["metrics"])]) + "\n" + "\n".join(notes) + "\n"


def write_record(record, out_dir):
    """Write ``metrics.json`` and ``metrics.md`` into ``out_dir`` (a folder, or an
    :class:`ipl.outputs.OutputFolder` that refuses to replace files it did not write); returns the JSON path."""
    from ..outputs import OutputFolder

    if isinstance(out_dir, OutputFolder):
        path, markdown = out_dir.path("metrics.json"), out_dir.path("metrics.md")
    else:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        path, markdown = Path(out_dir) / "metrics.json", Path(out_dir) / "metrics.md"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)  # a metrics.json is always complete (reproduce_table1 trusts it)
    markdown.write_text(record_markdown(record))
    return path
