"""The DDPM backend (DiffusionCLIP's Diff-CLIP) with random weights: caching one image, and one fine-tuning image-step, ours and DiffusionCLIP's.

    python benchmarks/bench_ddpm.py                          # CelebA-HQ DDPM (256 px) + CLIP ViT-B/32 (random weights)
    python benchmarks/bench_ddpm.py --size 128               # the same network at 128 px (a CPU's memory and patience)
    python benchmarks/bench_ddpm.py --arch tiny --clip tiny --iters 1   # a quick look at every code path

DiffusionCLIP's CelebA-HQ DDPM (its configs/celeba.yml: ch 128, ch_mult
1,1,2,2,4,4, 2 residual blocks, attention at 16 px, 256 px) as diffusers'
UNet2DModel. The rows and their definitions are bench_diffae.py's (ours with
diffusionclip.checkpoint auto / true / false and the per-step variant;
DiffusionCLIP's inversion, clip_finetune and clip_finetune_eff steps written
from its code); there is no semantic encoder to run.
"""

import bench_diffae  # benchmarks/bench_diffae.py: the rows, DiffusionCLIP's formulation and the table

if __name__ == "__main__":
    bench_diffae.main(family="ddpm", doc=__doc__, default_arch="celeba_hq", arch_help="DDPM architecture (celeba_hq, tiny); --size for another resolution")
