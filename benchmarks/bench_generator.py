"""Generator speed on the CPU: each computation path, forward and backward.

    python benchmarks/bench_generator.py                    # 1024 config-f, batches 1 and 2
    python benchmarks/bench_generator.py --size 256 --batch 1 8 --modes forward wplus
    python benchmarks/bench_generator.py --paths reference auto --alloc thp keep

Paths (``Generator.set_impl(conv_impl, resample, epilogue)``):

* ``reference``: ``("grouped", "fast", "ref")``, the reference port's own
  computation: per-sample weights in one grouped convolution, transposed
  convolution for upsampling, ``upfirdn2d`` for every FIR filter, contiguous
  memory, and each module writing a new tensor;
* ``grouped`` / ``shared``: one formulation forced, fused epilogue;
* ``auto``: the default, what every caller gets.

``--alloc`` adds rows run with a process-level allocator setting (the
generator sets none; the training scripts apply ``keep``; see
``ALLOCATORS``): every activation-sized tensor that PyTorch allocates on the
CPU is otherwise fresh ``mmap`` memory whose pages the kernel faults in and
zeroes on first touch.

Modes: ``forward`` (``no_grad``, what Stage 1 renders with), ``train``
(forward + backward into every weight and into W+, Stage 2's step) and
``wplus`` (weights frozen, backward into W+ only: layer selection).

Every (mode, batch, path) runs in a fresh subprocess, so ``ru_maxrss`` is
the peak resident memory of that configuration alone; "above model" subtracts
the resident size after the generator and inputs were built. Configurations
of one (mode, batch) run back to back, and ``--rounds`` repeats the whole
sweep, so that machine load hits the alternatives alike. Weights are random
(same cost as trained ones), seeded.

GFLOP/s divide :func:`generator_flops` (counted from the architecture, see
its docstring) by the median time; a backward counts twice the forward's 3x3
convolution work (input and weight gradients), a nominal figure: layer
selection's batched path skips the weight gradients. The large-matmul rate is
measured in the same run as a yardstick for what the machine sustains.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys

import torch

PATHS = {
    "reference": ("grouped", "fast", "ref"),
    "grouped": ("grouped", "fast", "fused"),
    "shared": ("shared", "fast", "fused"),
    "auto": ("auto", "fast", "fused"),
}
MODES = ("forward", "train", "wplus")
ALLOCATORS = {
    # PyTorch's CPU allocator asks for transparent huge pages (2 MB) on large blocks.
    "thp": {"THP_MEM_ALLOC_ENABLE": "1"},
    # glibc keeps freed blocks on its heap for reuse instead of unmapping them:
    # ipl.runtime.keep_freed_memory(), called in the child as the training
    # scripts call it (no environment).
    "keep": {},
}


def generator_flops(g):
    """FLOPs (2 per multiply-add) of one image through ``g``, by kind of work.

    Counted per layer at its output resolution R (input R/2 when upsampling):

    * ``conv3x3``: a 3x3 convolution, ``2 R^2 C_in C_out 9``; an upsampling
      one is a stride-2 transposed convolution that touches each input pixel
      once per tap, ``2 (R/2)^2 C_in C_out 9`` (zero insertion would count
      four times that, all of it multiplications by 0);
    * ``blur``: the 4x4 FIR filter after each upsampling, ``2 R^2 C_out 16``;
    * ``to_rgb``: the 1x1 convolutions, ``2 R^2 C_in 3``;
    * ``skip_upsample``: 4 of the 16 taps meet a non-zero sample,
      ``2 R^2 3 4``;
    * ``style``: per modulated layer the style affine ``2 D C_in`` and the
      weight modulation and demodulation ``3 C_out C_in k^2`` (scale, square,
      sum);
    * ``mapping``: ``n_mlp`` layers of ``2 D^2``.

    Elementwise work on activations (noise, bias, activation) is left out.
    The 1024 config-f generator: 150.7 GFLOP, 148.1 of them ``conv3x3``.
    """
    d = g.style_dim
    parts = dict(conv3x3=0, blur=0, to_rgb=0, skip_upsample=0, style=0, mapping=g.n_mlp * 2 * d**2)

    def layer(conv, res):
        c_in, c_out, k = conv.in_channel, conv.out_channel, conv.kernel_size
        parts["style"] += 2 * d * c_in + 3 * c_out * c_in * k * k
        if k == 1:
            parts["to_rgb"] += 2 * res**2 * c_in * c_out
        elif conv.upsample:
            parts["conv3x3"] += 2 * (res // 2) ** 2 * c_in * c_out * k * k
            parts["blur"] += 2 * res**2 * c_out * conv.blur.kernel.numel()
        else:
            parts["conv3x3"] += 2 * res**2 * c_in * c_out * k * k

    layer(g.conv1.conv, 4)
    layer(g.to_rgb1.conv, 4)
    for j, to_rgb in enumerate(g.to_rgbs):
        res = 2 ** (j + 3)
        layer(g.convs[2 * j].conv, res)
        layer(g.convs[2 * j + 1].conv, res)
        layer(to_rgb.conv, res)
        parts["skip_upsample"] += 2 * res**2 * 3 * to_rgb.upsample.kernel.numel() // 4
    return parts


def current_rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_child(spec):
    """Time one configuration; print one JSON line."""
    # Imported here, in the child process run as a script (benchmarks/ on
    # sys.path): the tests load this module by its file path.
    from measurements import generator_step, timed  # shared with gpu_check.py

    from stylegan2 import Generator

    if spec.get("alloc") == "keep":
        from ipl.runtime import keep_freed_memory

        keep_freed_memory()
    torch.manual_seed(0)
    if spec["kind"] == "matmul":
        a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
        times = timed(lambda: a @ b, 1, spec["iters"])
        print(json.dumps({"gflops": 2 * 4096**3 / min(times) / 1e9}))
        return

    g = Generator(spec["size"], channel_multiplier=spec["channel_multiplier"]).set_impl(*PATHS[spec["path"]])
    mode, batch = spec["mode"], spec["batch"]
    g.requires_grad_(mode == "train").train(mode != "forward")
    wplus = torch.randn(batch, g.n_latent, g.style_dim)

    step = generator_step(g, mode, wplus)

    base = current_rss_mb()
    times = timed(step, 1, spec["iters"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"times": times, "peak_mb": peak, "above_model_mb": peak - base}))


def spawn(spec, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads, oneDNN {torch.backends.mkldnn.is_available()}), Python {platform.python_version()}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--channel-multiplier", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iters", type=int, default=3, help="timed calls per configuration and round (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=1, help="repeats of the whole interleaved sweep")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["forward", "train"])
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS))
    parser.add_argument("--alloc", nargs="*", choices=list(ALLOCATORS), default=[], help="also run every path with these allocator settings")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return run_child(json.loads(args.child))

    from stylegan2 import Generator

    parts = generator_flops(Generator(args.size, channel_multiplier=args.channel_multiplier))
    flops, cflops = sum(parts.values()), parts["conv3x3"]
    print(f"# {machine()}")
    print(
        f"# Generator({args.size}, channel_multiplier={args.channel_multiplier}): {flops / 1e9:.1f} GFLOP per image forward ("
        + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in parts.items())
        + ")"
    )
    print(f"# load average at start: {os.getloadavg()}")
    allocs = [None] + args.alloc

    results, matmul = {}, []
    for _ in range(args.rounds):
        matmul.append(spawn({"kind": "matmul", "iters": 5})["gflops"])
        for mode in args.modes:
            for batch in args.batch:
                for path in args.paths:
                    for alloc in allocs:
                        spec = dict(kind="generator", size=args.size, channel_multiplier=args.channel_multiplier, path=path, mode=mode, batch=batch, iters=args.iters, alloc=alloc)
                        r = spawn(spec, ALLOCATORS.get(alloc))
                        suffix = f"+{alloc}" if alloc else ""
                        entry = results.setdefault((mode, batch, path, suffix), {"times": [], "peak_mb": 0, "above_model_mb": 0})
                        entry["times"] += r["times"]
                        entry["peak_mb"] = max(entry["peak_mb"], r["peak_mb"])
                        entry["above_model_mb"] = max(entry["above_model_mb"], r["above_model_mb"])
    print(f"# load average at end: {os.getloadavg()}")
    print(f"# large matmul (4096^2, float32): {max(matmul):.0f} GFLOP/s best of {len(matmul)} runs\n")

    print("| mode | batch | path | min s | median s | s / image | vs reference (median, min) | GFLOP/s | peak RSS MB | above model MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (mode, batch, path, suffix), r in results.items():
        median = statistics.median(r["times"])
        reference = results.get((mode, batch, "reference", suffix), {"times": [float("nan")]})["times"]
        ratios = f"{statistics.median(reference) / median:.2f}x, {min(reference) / min(r['times']):.2f}x"
        work = flops + (2 * cflops if mode != "forward" else 0)
        print(
            f"| {mode} | {batch} | {path}{suffix} | {min(r['times']):.2f} | {median:.2f} | {median / batch:.2f} | "
            f"{ratios} | {work * batch / median / 1e9:.0f} | {r['peak_mb']:.0f} | {r['above_model_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
