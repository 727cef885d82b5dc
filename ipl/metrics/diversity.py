"""Mode-collapse measures: intra-cluster LPIPS (Ojha et al., CDC 2021).

Protocol of the few-shot adaptation literature: every generated image joins
the cluster of its nearest centre by LPIPS; inside each cluster the LPIPS of
all member pairs is averaged; the score is the mean over clusters (clusters
with fewer than 2 members are left out). A collapsed generator has small
distances inside clusters. Ojha et al. take the 10 few-shot training images
as centres, LPIPS-VGG at 256x256, and at most 50 random members per cluster.

Zero-shot adaptation has no training images, so the centres are either given
(e.g. 10 reference images of the target domain) or, by default, the first
``num_clusters`` generated images, which then do not count as members.
"""

import warnings
from dataclasses import dataclass

import torch

from .images import check_image_batch, iter_image_batches, module_device, prepare
from .weights import load_state_dict_file, load_strict, resolve_weights

LPIPS_BACKBONES = {"vgg": "lpips_vgg", "alex": "lpips_alex"}


def build_lpips(net="vgg"):
    """LPIPS with a randomly initialised backbone and the package's linear heads.

    The ``lpips`` package ships the learned linear layers (``weights/v0.1``);
    only the torchvision backbone must come from elsewhere (``load_lpips``).
    """
    import lpips

    if net not in LPIPS_BACKBONES:
        raise ValueError(f"net must be one of {sorted(LPIPS_BACKBONES)}, got {net!r}")
    with warnings.catch_warnings():
        # lpips 0.1.4 still calls torchvision's deprecated `pretrained=` argument.
        warnings.filterwarnings("ignore", message=r".*(pretrained|weight enum).*", category=UserWarning)
        model = lpips.LPIPS(net=net, pnet_rand=True, pretrained=True, verbose=False)
    return model.eval().requires_grad_(False)


def load_lpips(net="vgg", backbone_path=None, *, device="cpu", download=False, weights_dir=None):
    """LPIPS whose backbone is read from torchvision's ImageNet weight file.

    Args:
        net: ``"vgg"`` (the literature's choice for intra-cluster LPIPS) or ``"alex"``.
        backbone_path: torchvision's ``vgg16-397923af.pth`` /
            ``alexnet-owt-7be5be79.pth``; when None it is looked up as
            described in ``ipl.metrics.weights`` (including torch.hub's cache,
            where ``lpips.LPIPS()`` itself would have downloaded it).
    """
    model = build_lpips(net)
    file = resolve_weights(LPIPS_BACKBONES[net], backbone_path, download=download, weights_dir=weights_dir)
    features = load_state_dict_file(file)
    # lpips keeps torchvision's `features` modules under their original index,
    # grouped into slices: "slice2.5.weight" is "features.5.weight".
    state = {}
    for key in model.net.state_dict():
        source_key = "features." + key.split(".", 1)[1]
        if source_key not in features:
            raise RuntimeError(f"{file} has no {source_key}: is it torchvision's {net} weight file?")
        state[key] = features[source_key]
    load_strict(model.net, state, f"torchvision {net} (LPIPS backbone)")
    return model.to(device)


@dataclass(frozen=True)
class IntraClusterLPIPS:
    mean: float  # mean over clusters with >= 2 members
    std: float  # unbiased std over those clusters (NaN if fewer than 2)
    per_cluster: tuple  # mean pairwise distance per cluster (NaN if < 2 members)
    cluster_sizes: tuple  # images assigned to each cluster (before subsampling)


def _pair_distances(distance, a, b, chunk_size, index_a=None, index_b=None):
    """distance(a[ia[n]], b[ib[n]]) for every pair n, in chunks -> (N,).

    Without indices the pairs are (a[n], b[n]). Indexing chunk by chunk keeps
    only ``chunk_size`` pairs of images in memory at a time.
    """
    if index_a is None:
        index_a = index_b = torch.arange(len(a))
    out = []
    for start in range(0, len(index_a), chunk_size):
        ia, ib = index_a[start : start + chunk_size], index_b[start : start + chunk_size]
        out.append(distance(a[ia], b[ib]).reshape(-1))
    return torch.cat(out)


@torch.no_grad()
def compute_intra_cluster_lpips(
    lpips_model,
    images,
    centers=None,
    *,
    num_clusters=10,
    max_per_cluster=50,
    image_size=256,
    seed=0,
    batch_size=32,
    chunk_size=16,
    device=None,
):
    """Intra-cluster LPIPS of a stream of generated images.

    Args:
        lpips_model: ``load_lpips(...)``, or any callable (x, y) -> per-pair
            distances of shape (B,) or (B, 1, 1, 1) for images in [-1, 1].
        images: tensor or iterable of (B, 3, H, W) batches in [-1, 1].
        centers: (K, 3, H, W) cluster centres in [-1, 1]; None takes the first
            ``num_clusters`` generated images as centres (not as members).
        num_clusters: K when ``centers`` is None.
        max_per_cluster: members kept per cluster (a uniform random subset,
            drawn by reservoir sampling from ``seed``), as Ojha et al.'s 50.
        image_size: square bilinear (antialiased, like PIL's) resize; None keeps the size.
        chunk_size: pairs per LPIPS call.

    Returns:
        ``IntraClusterLPIPS``. Kept members live on the CPU: at most
        K * max_per_cluster images (393 MB in float32 for 10 x 50 at 256x256).
    """
    device = device or module_device(lpips_model)
    generator = torch.Generator().manual_seed(seed)

    def resize(x):
        return prepare(x, device, image_size, antialias=True)

    pending_centers = []
    if centers is not None:
        check_image_batch(centers, "centers")
        centers = resize(centers)
        num_clusters = len(centers)
    members = [[] for _ in range(num_clusters)]
    seen = [0] * num_clusters

    for batch in iter_image_batches(images, batch_size):
        x = resize(batch)
        if centers is None:
            take = num_clusters - sum(len(c) for c in pending_centers)
            pending_centers.append(x[:take])
            x = x[take:]
            if sum(len(c) for c in pending_centers) == num_clusters:
                centers = torch.cat(pending_centers)
            if len(x) == 0:
                continue
        distances = torch.stack(
            [_pair_distances(lpips_model, x, c.expand_as(x), chunk_size) for c in centers[:, None]], dim=1
        )  # (B, K)
        for image, k in zip(x.cpu(), distances.argmin(dim=1).tolist()):
            image = image.clone()  # a view would keep its whole batch alive
            # Reservoir sampling keeps a uniform subset of max_per_cluster members.
            n = seen[k]
            seen[k] += 1
            if n < max_per_cluster:
                members[k].append(image)
            else:
                slot = torch.randint(0, n + 1, (1,), generator=generator).item()
                if slot < max_per_cluster:
                    members[k][slot] = image
    if centers is None:
        raise ValueError(f"need more than num_clusters={num_clusters} images to take the centres from")

    per_cluster = []
    for cluster in members:
        if len(cluster) < 2:
            per_cluster.append(float("nan"))
            continue
        stack = torch.stack(cluster).to(device)  # (M, 3, H, W)
        i, j = torch.triu_indices(len(cluster), len(cluster), offset=1)  # all pairs i < j
        per_cluster.append(_pair_distances(lpips_model, stack, stack, chunk_size, i, j).double().mean().item())
    valid = torch.tensor([d for d in per_cluster if d == d], dtype=torch.float64)
    return IntraClusterLPIPS(
        mean=valid.mean().item() if len(valid) else float("nan"),
        std=valid.std().item() if len(valid) > 1 else float("nan"),
        per_cluster=tuple(per_cluster),
        cluster_sizes=tuple(seen),
    )
