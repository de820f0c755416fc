"""Classical (model-free) restorations, the baseline a learned prior must beat, one per kind of operator.

* inpainting: harmonic fill. The missing pixels solve Laplace's equation with the observed pixels as
  boundary values (4-neighbour graph Laplacian, natural boundary at the image edge), an exact sparse solve
  with scipy. OpenCV's Telea inpainting is not among the project's dependencies; the harmonic fill is
  the smooth interpolant Telea approximates, in a dozen lines.
* super-resolution: bicubic upsampling of y (``torch.nn.functional.interpolate``).
* denoising: scipy's adaptive Wiener filter (3x3 window) given the known noise variance.
* deblurring: Wiener (Tikhonov) deconvolution with the full Gaussian response and a fixed weight
  ``WIENER_DECONV_WEIGHT``, chosen a priori (not tuned on any reported metric).
"""

from __future__ import annotations

import numpy as np
import scipy.signal
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as F

from genbench.restoration.operators import AveragePool, Blur, Identity, Mask, Operator, gaussian_psf_spectrum

WIENER_DECONV_WEIGHT = 1e-2
WIENER_WINDOW = 3


def grid_laplacian(height: int, width: int) -> scipy.sparse.csr_matrix:
    """Graph Laplacian D - W of the 4-neighbour grid (height*width nodes, row-major)."""
    idx = np.arange(height * width).reshape(height, width)
    pairs = [(idx[:, :-1].ravel(), idx[:, 1:].ravel()), (idx[:-1, :].ravel(), idx[1:, :].ravel())]
    rows = np.concatenate([a for a, b in pairs] + [b for a, b in pairs])
    cols = np.concatenate([b for a, b in pairs] + [a for a, b in pairs])
    w = scipy.sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(height * width,) * 2).tocsr()
    return (scipy.sparse.diags(np.asarray(w.sum(1)).ravel()) - w).tocsr()


def harmonic_fill(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fill the pixels where ``mask`` [N, 1, H, W] is 0 with the harmonic interpolant of the observed ones."""
    n, channels, height, width = images.shape
    lap = grid_laplacian(height, width)
    out = images.detach().cpu().to(torch.float64).numpy().copy()
    for i in range(n):
        observed = mask[i, 0].reshape(-1).cpu().numpy() > 0.5
        missing = ~observed
        if not missing.any():
            continue
        if not observed.any():
            out[i] = 0.0  # nothing observed: the model-space mid-grey
            continue
        lap_mm = lap[missing][:, missing]
        lap_mo = lap[missing][:, observed]
        # a missing region with no observed neighbour makes L_MM singular: a tiny pull to 0 keeps it solvable
        lap_mm = (lap_mm + 1e-9 * scipy.sparse.eye(lap_mm.shape[0])).tocsc()
        for c in range(channels):
            flat = out[i, c].reshape(-1)
            flat[missing] = scipy.sparse.linalg.spsolve(lap_mm, -lap_mo @ flat[observed])
            out[i, c] = flat.reshape(height, width)
    return torch.from_numpy(out).to(images.dtype)


def wiener_denoise(y: torch.Tensor, sigma_y: float) -> torch.Tensor:
    out = np.stack([[scipy.signal.wiener(ch, WIENER_WINDOW, noise=max(sigma_y, 1e-6) ** 2) for ch in img]
                    for img in y.detach().cpu().to(torch.float64).numpy()])
    return torch.from_numpy(out).to(y.dtype)


def wiener_deconvolve(y: torch.Tensor, blur: Blur) -> torch.Tensor:
    h = gaussian_psf_spectrum(y.shape[-2], y.shape[-1], blur.sigma_px)
    spectrum = h / (h**2 + WIENER_DECONV_WEIGHT)
    return torch.fft.ifft2(torch.fft.fft2(y.to(torch.float64)) * spectrum).real.to(y.dtype)


def classical(operator: Operator, y: torch.Tensor, sigma_y: float) -> tuple[str, torch.Tensor]:
    """(method name, model-space restoration) of the classical baseline for ``operator``."""
    if isinstance(operator, Mask):
        return "harmonic fill", harmonic_fill(operator.pinv(y), operator.mask)
    if isinstance(operator, AveragePool):
        return "bicubic upsampling", F.interpolate(y, scale_factor=operator.factor, mode="bicubic", align_corners=False)
    if isinstance(operator, Identity):
        return f"Wiener filter {WIENER_WINDOW}x{WIENER_WINDOW}", wiener_denoise(y, sigma_y)
    if isinstance(operator, Blur):
        return f"Wiener deconvolution (weight {WIENER_DECONV_WEIGHT:g})", wiener_deconvolve(y, operator)
    raise TypeError(f"no classical baseline for {type(operator).__name__}")
