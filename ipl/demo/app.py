"""The Gradio page: Translate, Sample and Train tabs over the runs of a folder.

    from ipl.demo.app import build_app
    build_app("runs", device).launch()

Each handler validates its inputs (the Train tab through the config's own
rules), turns the project's known errors into a message on the page
(``gr.Error``) and never shows a traceback; an unexpected exception is
logged here and shown as one line. The API names (``/translate``,
``/sample``, ``/train``, ``/train_status``, ``/stop``, ``/runs``) are what
``gradio_client`` calls.
"""

import functools
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from stylegan2.utils import without_torch_advice

from ..cli import USER_ERRORS, one_line
from ..images import UnreadableImageError, check_image
from ..sampling import read_png
from .runs import find_runs
from .tasks import (
    STYLEGAN2_INVERSIONS,
    ModelCache,
    sample_side_by_side,
    translate_side_by_side,
)
from .training import PRESETS, SCHEMES, Trainer

log = logging.getLogger(__name__)

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
INTRO = (
    "**IPL**: zero-shot adaptation of a generator to a text-described domain with image-specific prompts. "
    "Models are the finished runs under `{runs}`. Tiny random models (the offline demo configs) run on a CPU; "
    "the paper's models want a GPU (this page uses: {device})."
)


def server_address(host=None, port=None):
    """``(host, port)``: the arguments, else Gradio's ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``, else 127.0.0.1:7860."""
    host = host or os.environ.get("GRADIO_SERVER_NAME") or DEFAULT_HOST
    port = port or os.environ.get("GRADIO_SERVER_PORT") or DEFAULT_PORT
    try:
        port = int(port)
    except ValueError:
        raise ValueError(f"port: expected a number, got {port!r} (GRADIO_SERVER_PORT?)") from None
    if not 0 < port < 65536:
        raise ValueError(f"port: must be from 1 to 65535, got {port}")
    return host, port


def _shown(fn):
    """Run a handler; known errors become one message on the page, others one line naming the exception."""
    import gradio as gr

    @functools.wraps(fn)
    def handler(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except USER_ERRORS as e:
            raise gr.Error(one_line(e), print_exception=False) from None
        except Exception as e:  # the page gets one line; the log keeps the traceback
            log.exception("demo handler %s failed", fn.__name__)
            message = one_line(without_torch_advice(e))[:300]
            raise gr.Error(f"unexpected {type(e).__name__}: {message}", print_exception=False) from None

    return handler


def viewable(image, least=256):
    """``image`` (uint8 ``(H, W, 3)``) repeated k times along both axes, k the least making its shorter side >= ``least``.

    The tiny models' pictures are a few pixels wide; a browser shows them at
    that size. Whole pixels are repeated, so ``viewable(x)[::k, ::k]`` is ``x``.
    """
    k = max(1, -(-least // min(image.shape[:2])))
    return np.repeat(np.repeat(image, k, axis=0), k, axis=1)


def _paths(files):
    """Uploaded files as paths (Gradio gives paths or objects with ``.name``)."""
    return [Path(getattr(f, "name", f)) for f in (files or [])]


def build_app(runs_root="runs", device="cpu", *, detector=None, train_overrides=(), title="IPL demo"):
    """The Gradio Blocks of the demo (not launched).

    Args:
        runs_root: The folder whose finished runs are offered, and where the
            Train tab writes.
        device: A ``torch.device`` for translation and sampling (training
            runs in its own process, on its config's device).
        detector: Face landmarks for photos that need aligning (default:
            dlib's, made on first use); the tests pass a stub.
        train_overrides: ``key=value`` strings applied to every training request.
    """
    import gradio as gr

    runs_root = Path(runs_root)
    cache = ModelCache()
    trainer = Trainer(runs_root, overrides=train_overrides)
    outputs = Path(tempfile.mkdtemp(prefix="ipl-demo-"))

    def labelled():
        return {run.label: run for run in find_runs(runs_root)}

    def chosen(labels):
        runs = labelled()
        missing = [label for label in (labels or []) if label not in runs]
        if missing:
            raise gr.Error(f"{', '.join(missing)}: no longer a finished run under {runs_root}; refresh the list")
        return [runs[label] for label in labels or []]

    def sample_labels():
        return [label for label, run in labelled().items() if run.kind == "stylegan2"]

    @_shown
    def translate(files, labels, aligned, alpha, inversion, steps, distance, progress=gr.Progress()):  # noqa: B008  (how Gradio hands a handler its progress bar)
        photos = []
        for path in _paths(files):
            try:
                photos.append(check_image(path))
            except UnreadableImageError as e:
                raise gr.Error(str(e), print_exception=False) from None
        rows, messages = translate_side_by_side(
            photos, chosen(labels), aligned=aligned, alpha=alpha, inversion=inversion, steps=steps, distance=distance,
            device=device, cache=cache, detector=detector, report=lambda f, text: progress(f, desc=text),
        )  # fmt: skip
        columns = "aligned input, then per model: source reconstruction | adapted"
        notes = [f"Columns: {columns} ({', '.join(labels)})."] if rows else []
        if not rows:
            notes.append("**No photo was translated.**")
        notes += [f"- {m}" for m in messages]
        return [(viewable(image), name) for name, image in rows], "\n".join(notes)

    @_shown
    def sample(labels, seeds, truncation, alpha, interpolate, steps, progress=gr.Progress()):  # noqa: B008  (how Gradio hands a handler its progress bar)
        mode = None if interpolate == "none" else interpolate
        outdir = Path(tempfile.mkdtemp(dir=outputs, prefix="sample-"))
        result = sample_side_by_side(
            chosen(labels), seeds, truncation=truncation, alpha=alpha, interpolate=mode, steps=steps, outdir=outdir,
            device=device, cache=cache, report=lambda f, text: progress(f, desc=text),
        )  # fmt: skip
        rows = "Rows, top to bottom: " + "; ".join(result["labels"]) + "."
        strips = [(viewable(read_png(path)), Path(path).parent.name) for path in result.get("strips", [])]
        return viewable(result["grid"]), rows, strips, result.get("gifs", [])

    @_shown
    def train(preset, name, source_class, target_class, scheme, restart):
        config = trainer.config_for(preset, name, source_class, target_class, scheme)
        job = trainer.start(config, restart=restart)
        return str(job.run_dir), f"started {job.run_dir.name}" + (" from scratch" if restart else " (resuming what is there)")

    listed = {"labels": None}

    @_shown
    def train_status(run_dir):
        if not run_dir:
            return "no training started here", None, "", 0.0, gr.skip(), gr.skip()
        status = trainer.status(run_dir)
        sample_png = viewable(read_png(status["sample"])) if status["sample"] else None
        # A run that just finished joins the other tabs' lists (refreshed only when the runs change).
        models = (gr.skip(), gr.skip())
        if status["state"] == "finished" and listed["labels"] != list(labelled()):
            listed["labels"] = list(labelled())
            models = refresh()
        return status["text"], sample_png, status["log"], round(status["fraction"], 4), *models

    @_shown
    def stop(run_dir):
        if not run_dir or not trainer.stop(run_dir):
            return "no training is running here"
        return f"stopped {Path(run_dir).name}; start it again to resume from its last checkpoint"

    def refresh():
        return gr.update(choices=list(labelled())), gr.update(choices=sample_labels())

    with gr.Blocks(title=title) as demo:
        gr.Markdown(INTRO.format(runs=runs_root, device=device))
        with gr.Tab("Translate", id="translate"):
            with gr.Row():
                with gr.Column():
                    photos = gr.File(label="Photos", file_count="multiple", file_types=["image"], elem_id="translate-photos")
                    t_models = gr.CheckboxGroup(list(labelled()), label="Adapted models", elem_id="translate-models")
                    t_aligned = gr.Checkbox(False, label="already aligned (FFHQ-aligned faces: no landmark detection)", elem_id="translate-aligned")
                    t_alpha = gr.Slider(0, 1, value=1, step=0.05, label="alpha (0 = source, 1 = adapted)")
                    with gr.Accordion("StyleGAN2 inversion", open=False):
                        t_inversion = gr.Radio(list(STYLEGAN2_INVERSIONS), value="restyle", label="inversion (restyle, e4e: encoder files; project: optimisation)", elem_id="translate-inversion")
                        t_steps = gr.Number(1000, label="projection steps", precision=0, elem_id="translate-steps")
                        t_distance = gr.Radio(["lpips", "mse"], value="lpips", label="projection distance (mse needs no weight file)", elem_id="translate-distance")
                    with gr.Row():
                        t_refresh = gr.Button("Refresh models")
                        t_go = gr.Button("Translate", variant="primary", elem_id="translate-button")
                with gr.Column():
                    t_result = gr.Gallery(label="Results", columns=1, format="png", elem_id="translate-result")
                    t_notes = gr.Markdown(elem_id="translate-notes")
            t_go.click(translate, [photos, t_models, t_aligned, t_alpha, t_inversion, t_steps, t_distance], [t_result, t_notes], api_name="translate")
        with gr.Tab("Sample", id="sample"):
            with gr.Row():
                with gr.Column():
                    s_models = gr.CheckboxGroup(sample_labels(), label="Adapted StyleGAN2 models (e.g. NADA next to IPL)", elem_id="sample-models")
                    s_seeds = gr.Textbox("0-7", label="seeds (0-7 or 1,5,9)", elem_id="sample-seeds")
                    s_truncation = gr.Slider(0.05, 1, value=0.7, step=0.05, label="truncation psi")
                    s_alpha = gr.Slider(0, 1, value=1, step=0.05, label="alpha (0 = source, 1 = adapted)")
                    s_interpolate = gr.Radio(["none", "alpha", "seeds"], value="none", label="interpolation strip and GIF")
                    s_steps = gr.Slider(2, 32, value=8, step=1, label="images per interpolation row")
                    with gr.Row():
                        s_refresh = gr.Button("Refresh models")
                        s_go = gr.Button("Sample", variant="primary", elem_id="sample-button")
                with gr.Column():
                    s_grid = gr.Image(label="Same seeds, side by side", type="numpy", format="png", elem_id="sample-grid")
                    s_rows = gr.Markdown()
                    s_strips = gr.Gallery(label="Interpolation strips", columns=1, format="png")
                    s_gifs = gr.File(label="Interpolation GIFs", file_count="multiple")
            s_go.click(sample, [s_models, s_seeds, s_truncation, s_alpha, s_interpolate, s_steps], [s_grid, s_rows, s_strips, s_gifs], api_name="sample")
        with gr.Tab("Train", id="train"):
            with gr.Row():
                with gr.Column():
                    r_preset = gr.Dropdown(list(PRESETS), value=next(iter(PRESETS)), label="config preset", elem_id="train-preset")
                    r_name = gr.Textbox("my_run", label=f"run name (written to {runs_root}/<name>)", elem_id="train-name")
                    r_source = gr.Textbox("human", label="source label")
                    r_target = gr.Textbox("tolkien elf", label="target label")
                    r_scheme = gr.Dropdown(list(SCHEMES), value="adaptive", label="prompt scheme (adaptive = IPL, manual = NADA)")
                    r_restart = gr.Checkbox(False, label="start over (ignore the run's checkpoints)")
                    with gr.Row():
                        r_go = gr.Button("Start / resume", variant="primary", elem_id="train-button")
                        r_stop = gr.Button("Stop", variant="stop")
                with gr.Column():
                    r_run = gr.Textbox(label="run directory", interactive=False)
                    r_text = gr.Markdown()
                    r_fraction = gr.Slider(0, 1, value=0, label="done", interactive=False)
                    r_sample = gr.Image(label="latest sample grid (source row over adapted row)", type="numpy", format="png")
                    r_log = gr.Textbox(label="output of adapt.py", lines=6, interactive=False)
            r_go.click(train, [r_preset, r_name, r_source, r_target, r_scheme, r_restart], [r_run, r_text], api_name="train")
            r_stop.click(stop, [r_run], [r_text], api_name="stop")
            timer = gr.Timer(2.0)
            timer.tick(train_status, [r_run], [r_text, r_sample, r_log, r_fraction, t_models, s_models], api_name="train_status",
                       show_progress="hidden")  # fmt: skip
        t_refresh.click(refresh, None, [t_models, s_models], api_name="runs")
        s_refresh.click(refresh, None, [t_models, s_models], api_visibility="private")
    demo.trainer = trainer  # so that the caller can stop what it started
    return demo


def launch(runs_root="runs", device="cpu", host=None, port=None, **kwargs):
    """Build and serve the demo until interrupted; training processes it started are stopped on exit."""
    host, port = server_address(host, port)
    demo = build_app(runs_root, device, **kwargs)
    try:
        demo.queue().launch(server_name=host, server_port=port)
    finally:
        demo.trainer.stop_all()
