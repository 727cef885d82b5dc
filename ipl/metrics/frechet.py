"""Frechet distance between Gaussians fitted to feature samples (FID, SIFID)."""

import numpy as np
import torch


def gaussian_statistics(features):
    """Mean and unbiased covariance of feature samples, in float64.

    Args:
        features: (N, D) samples (tensor or array), N >= 2.

    Returns:
        mu (D,), sigma (D, D) as numpy float64 (``np.cov(rowvar=False)``).
    """
    x = torch.as_tensor(features).detach().to(torch.float64)  # stays on its device
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {tuple(x.shape)}")
    mu = x.mean(dim=0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return mu.cpu().numpy(), sigma.cpu().numpy()


def _sqrt_psd(matrix):
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`` in float64.

    ``Tr((S1 S2)^{1/2})`` is computed as the sum of square roots of the
    eigenvalues of ``S1^{1/2} S2 S1^{1/2}``: that matrix is similar to
    ``S1 S2`` and symmetric, so the result is real and stable even for
    singular covariances, where ``scipy.linalg.sqrtm(S1 @ S2)`` may return
    complex values and needs an added eps. Rounding below zero is clipped.

    Args:
        mu1, mu2: (D,) means.
        sigma1, sigma2: (D, D) covariances.

    Returns:
        the distance as a Python float.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"means must be (D,) vectors of equal size, got {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"covariances must be ({d}, {d}), got {sigma1.shape} and {sigma2.shape}")

    root1 = _sqrt_psd(sigma1)
    eigenvalues = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_covmean = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean
    return max(float(distance), 0.0)
