"""Linear degradation operators y = A x with an exact Moore-Penrose pseudo-inverse A⁺, on [N, C, H, W] images.

Every operator acts on each channel alike, so grey and colour images are handled the same way, and its
``pinv`` satisfies the Penrose identities A A⁺ A = A and (A⁺ A)² = A⁺ A exactly (up to float rounding):

* :class:`Mask` (inpainting): A keeps the observed pixels. Measurements are kept on the image grid with the
  unobserved entries set to 0, so A is a diagonal 0/1 projection and A⁺ = A.
* :class:`AveragePool` (super-resolution by a factor s): A averages s x s blocks; A Aᵀ = I / s², so
  A⁺ = s² Aᵀ, which repeats each low-resolution pixel over its block (nearest upsampling).
* :class:`Identity` (denoising): A = A⁺ = I; the noise is in y.
* :class:`Blur` (deblurring): circular convolution with a Gaussian kernel, diagonal in the 2-D DFT. The
  frequencies where the kernel's response is below ``cutoff`` are treated as the null space (the operator's
  response there is set to 0), so A⁺ = 1/H on the kept frequencies and 0 elsewhere: the truncated-spectrum
  (regularised) inverse, which is the exact pseudo-inverse of the operator as defined.

``project_null(x) = x - A⁺ A x`` is the part of x that the measurement cannot see; DDNM fills it from the
diffusion model. Masks are drawn from a seeded generator per image, so one seed gives the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


class Operator:
    """y = A x on image batches; subclasses define ``A`` and ``pinv`` and describe themselves."""

    name = "operator"

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802 (the paper's name)
        raise NotImplementedError

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def project_null(self, x: torch.Tensor) -> torch.Tensor:
        """(I - A⁺A) x."""
        return x - self.pinv(self.A(x))

    def rectify(self, x0: torch.Tensor, y: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
        """x0 - scale A⁺(A x0 - y): with scale 1 this is A⁺y + (I - A⁺A) x0 (DDNM), below 1 DDNM+'s step."""
        return x0 - scale * self.pinv(self.A(x0) - y)

    def noise_gain(self) -> float:
        """Largest singular value of A⁺ (how much it can amplify measurement noise); 1 for all but blur."""
        return 1.0

    def display(self, y: torch.Tensor) -> torch.Tensor:
        """An image-sized view of y for figures, in model space [-1, 1]."""
        return self.pinv(y)

    def rows(self, index: slice) -> Operator:
        """The operator for a slice of the batch (only per-image operators differ)."""
        return self

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


class Mask(Operator):
    """Inpainting: ``mask`` [N, 1, H, W] (1 = observed, broadcast over channels); A = A⁺ = diag(mask)."""

    def __init__(self, mask: torch.Tensor, kind: str) -> None:
        if mask.dim() != 4 or mask.shape[1] != 1:
            raise ValueError(f"mask must be [N, 1, H, W], got {list(mask.shape)}")
        self.mask = mask.to(torch.float32)
        self.kind = kind
        self.name = f"mask ({kind})"

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return x * self.mask.to(x)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.mask.to(y)

    def rows(self, index: slice) -> Mask:
        return Mask(self.mask[index], self.kind)

    def describe(self) -> dict[str, Any]:
        return {"name": "mask", "kind": self.kind, "observed_fraction": float(self.mask.mean())}

    @classmethod
    def box(cls, n: int, height: int, width: int, fraction: float = 0.5) -> Mask:
        """A centred box of ``fraction`` of each side missing (a 14x14 hole in a 28x28 image at 0.5)."""
        bh, bw = round(height * fraction), round(width * fraction)
        top, left = (height - bh) // 2, (width - bw) // 2
        mask = torch.ones(n, 1, height, width)
        mask[:, :, top:top + bh, left:left + bw] = 0.0
        return cls(mask, f"centre box {bh}x{bw} missing")

    @classmethod
    def random(cls, n: int, height: int, width: int, missing: float, generator: torch.Generator) -> Mask:
        """Each pixel missing independently with probability ``missing`` (a new mask per image)."""
        if not 0.0 < missing < 1.0:
            raise ValueError(f"the missing fraction must be in (0, 1), got {missing}")
        mask = (torch.rand(n, 1, height, width, generator=generator) >= missing).to(torch.float32)
        return cls(mask, f"random {round(missing * 100)}% of pixels missing")


class AveragePool(Operator):
    """Super-resolution: A = s x s average pooling, A⁺ = nearest upsampling by s (= s² Aᵀ)."""

    def __init__(self, factor: int) -> None:
        if factor < 2:
            raise ValueError(f"the super-resolution factor must be >= 2, got {factor}")
        self.factor = int(factor)
        self.name = f"average pooling x{factor}"

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"image size {list(x.shape[-2:])} is not divisible by the factor {self.factor}")

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        self._check(x)
        return F.avg_pool2d(x, self.factor)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return y.repeat_interleave(self.factor, dim=-2).repeat_interleave(self.factor, dim=-1)

    def describe(self) -> dict[str, Any]:
        return {"name": "average_pool", "factor": self.factor}


class Identity(Operator):
    """Denoising: A = A⁺ = I (the noise is added to y by the task)."""

    name = "identity"

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return x

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def describe(self) -> dict[str, Any]:
        return {"name": "identity"}


def gaussian_psf_spectrum(height: int, width: int, sigma_px: float) -> torch.Tensor:
    """2-D DFT (float64, real: the kernel is symmetric) of a unit-sum Gaussian kernel centred at (0, 0), circular."""
    def axis(n: int) -> torch.Tensor:
        d = torch.arange(n, dtype=torch.float64)
        d = torch.minimum(d, n - d)  # circular distance to pixel 0
        return torch.exp(-0.5 * (d / sigma_px) ** 2)

    kernel = axis(height)[:, None] * axis(width)[None, :]
    kernel = kernel / kernel.sum()
    return torch.fft.fft2(kernel).real


class Blur(Operator):
    """Deblurring: circular Gaussian blur (``sigma_px``) applied by FFT; A⁺ inverts the frequencies with
    response >= ``cutoff`` and zeroes the rest (those form A's null space, so A A⁺ A = A holds exactly)."""

    def __init__(self, height: int, width: int, sigma_px: float = 1.5, cutoff: float = 0.05) -> None:
        if sigma_px <= 0 or not 0.0 < cutoff < 1.0:
            raise ValueError(f"blur needs sigma_px > 0 and cutoff in (0, 1), got {sigma_px}, {cutoff}")
        self.sigma_px, self.cutoff = float(sigma_px), float(cutoff)
        response = gaussian_psf_spectrum(height, width, sigma_px)
        kept = response.abs() >= cutoff
        self.H = torch.where(kept, response, torch.zeros_like(response))
        self.H_pinv = torch.where(kept, 1.0 / torch.where(kept, response, torch.ones_like(response)),
                                  torch.zeros_like(response))
        self.kept_fraction = float(kept.double().mean())
        self.name = f"gaussian blur sigma={sigma_px:g}px"

    def _apply(self, x: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != tuple(spectrum.shape):
            raise ValueError(f"blur built for {list(spectrum.shape)} images, got {list(x.shape[-2:])}")
        out = torch.fft.ifft2(torch.fft.fft2(x.to(torch.float64)) * spectrum.to(x.device)).real
        return out.to(x.dtype)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self._apply(x, self.H)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return self._apply(y, self.H_pinv)

    def noise_gain(self) -> float:
        return float(self.H_pinv.abs().max())

    def display(self, y: torch.Tensor) -> torch.Tensor:
        return y  # the blurred image itself

    def describe(self) -> dict[str, Any]:
        return {"name": "gaussian_blur", "sigma_px": self.sigma_px, "circular": True, "cutoff": self.cutoff,
                "kept_frequencies": round(self.kept_fraction, 4), "pinv_gain": round(self.noise_gain(), 3)}


@dataclass(frozen=True)
class Task:
    """A restoration problem: how its operator is built and the default measurement noise (model space)."""

    name: str
    summary: str
    sigma_y: float = 0.0

    def operator(self, n: int, shape: tuple[int, ...], generator: torch.Generator) -> Operator:
        _, height, width = shape
        if self.name == "inpaint_box":
            return Mask.box(n, height, width)
        if self.name.startswith("inpaint_"):
            return Mask.random(n, height, width, int(self.name.split("_")[1]) / 100, generator)
        if self.name.startswith("sr"):
            return AveragePool(int(self.name[2:]))
        if self.name == "denoise":
            return Identity()
        if self.name == "blur":
            return Blur(height, width)
        raise ValueError(f"unknown task {self.name!r}")


TASKS = {t.name: t for t in (
    Task("inpaint_box", "centre box (half of each side) missing"),
    Task("inpaint_50", "random 50% of pixels missing"),
    Task("inpaint_80", "random 80% of pixels missing"),
    Task("sr2", "super-resolution x2 from 2x2 average pooling"),
    Task("sr4", "super-resolution x4 from 4x4 average pooling"),
    Task("denoise", "Gaussian noise sigma_y = 0.2 (model space [-1, 1])", sigma_y=0.2),
    Task("blur", "Gaussian blur sigma = 1.5 px (circular)"),
)}


def task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown restoration task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name]


def measure(operator: Operator, x: torch.Tensor, sigma_y: float, generator: torch.Generator) -> torch.Tensor:
    """y = A x + sigma_y n with n ~ N(0, I) drawn from ``generator``."""
    y = operator.A(x)
    if sigma_y > 0:
        y = y + sigma_y * torch.randn(y.shape, generator=generator, dtype=y.dtype)
    return y

