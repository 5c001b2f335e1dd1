"""Codec conformance suite: what every codec in the registry must do, checked on real
codecs (no mocks). Run it over ``list_codecs()`` (``tests/test_codec_conformance.py``) or
over your own codec before you register it::

    from latentds.testing.codec_conformance import check_codec
    report = check_codec("my-codec")          # raises AssertionError naming what failed

The contract (``latentds.codecs.base.Codec``, docs/design.md invariants 1 and 2):

* shape: ``B×1×H×W`` -> ``B×C×ceil(H/f)×ceil(W/f)`` float32 (H, W need not be multiples
  of f), and decode gives ``B×1×(h·f)×(w·f)``;
* determinism: encode and decode are bit-identical on repeat and across two instances
  built the same way; ``encode_dist``'s mean is ``encode``; its std is zero for a
  deterministic codec (``posterior = False``) and positive for a posterior;
* range: decode lies in [0, 1]; latents are finite;
* fingerprint: 64 hex digits, equal across instances and unchanged by use or ``.to()``;
* decode of encode reconstructs a smooth image (PSNR floor), so a codec that returns
  noise fails even if every shape is right;
* bad inputs raise :class:`~latentds.errors.CodecError`, never another exception.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from latentds.codecs import Codec, create_codec
from latentds.errors import CodecError

__all__ = [
    "SMOOTH_PSNR_FLOOR_DB",
    "ConformanceReport",
    "check_codec",
    "check_decode_of_encode",
    "check_determinism",
    "check_fingerprint",
    "check_input_errors",
    "check_range",
    "check_shapes",
    "smooth_image",
    "try_create",
]

#: Round-trip PSNR every registered codec must reach on :func:`smooth_image` (128², the
#: coarsest shipped codec, f=16 with C=1, reaches ~27 dB; random-weight models are not
#: held to it).
SMOOTH_PSNR_FLOOR_DB = 20.0

_HEX64 = re.compile(r"[0-9a-f]{64}")
# The weight resolver's refusal when a codec has no weights on this machine (weights.py).
_ABSENT = "no weights found"


def smooth_image(h: int = 128, w: int = 128, *, batch: int = 1) -> torch.Tensor:
    """A deterministic smooth image in [0.1, 0.9]: a blob on a gradient (no RNG)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    blob = torch.exp(-((yy - 0.4) ** 2 + (xx - 0.6) ** 2) / 0.05)
    img = 0.1 + 0.4 * (0.5 * xx + 0.5 * yy) + 0.4 * blob
    return img.clamp(0, 1).expand(batch, 1, h, w).contiguous()


def _noise(h: int, w: int, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.rand(batch, 1, h, w, generator=g)


def try_create(name: str, **kwargs: Any) -> tuple[Codec | None, str]:
    """``(codec, "")``, or ``(None, reason)`` when the codec's weights are not on this
    machine (latentds never downloads them). Any other failure raises."""
    try:
        return create_codec(name, **kwargs), ""
    except CodecError as exc:
        if _ABSENT not in str(exc):
            raise
        return None, f"{name}: weights not present on this machine ({str(exc).split('. Looked at')[0]})"


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def check_shapes(codec: Codec, sizes: tuple[tuple[int, int], ...] = ((48, 32), (37, 21))) -> None:
    """Latent and image shapes and dtypes, including H, W that are not multiples of f."""
    f, c = codec.f, codec.latent_channels
    for h, w in sizes:
        x = _noise(h, w)
        z = codec.encode(x)
        want = (2, c, _ceil(h, f), _ceil(w, f))
        assert tuple(z.shape) == want, f"{codec.name}: encode of 2×1×{h}×{w} gave {tuple(z.shape)}, want {want}"
        assert z.dtype == torch.float32, f"{codec.name}: latents are {z.dtype}, want float32"
        y = codec.decode(z)
        want_y = (2, 1, want[2] * f, want[3] * f)
        assert tuple(y.shape) == want_y, f"{codec.name}: decode gave {tuple(y.shape)}, want {want_y}"
        assert y.dtype == torch.float32, f"{codec.name}: decoded images are {y.dtype}, want float32"


def check_determinism(codec: Codec, rebuild: Callable[[], Codec] | None = None) -> None:
    """Bit-identical encode/decode on repeat (and in a second instance); encode_dist agrees."""
    x = _noise(32, 48)
    z1, z2 = codec.encode(x), codec.encode(x)
    assert torch.equal(z1, z2), (f"{codec.name}: encode is not bit-identical on repeat; encode must return the "
                                 "posterior mean, never a sample (docs/design.md invariant 1)")
    y1, y2 = codec.decode(z1), codec.decode(z1)
    assert torch.equal(y1, y2), f"{codec.name}: decode is not bit-identical on repeat"
    mean, std = codec.encode_dist(x)
    assert torch.equal(mean, z1), f"{codec.name}: encode_dist's mean differs from encode"
    assert std.shape == mean.shape and bool(torch.isfinite(std).all()), f"{codec.name}: encode_dist std is malformed"
    if codec.posterior:
        assert bool((std > 0).all()), f"{codec.name}: posterior=True but encode_dist std has zeros"
    else:
        assert bool((std == 0).all()), f"{codec.name}: posterior=False (deterministic) but encode_dist std is not zero"
    if rebuild is not None:
        other = rebuild()
        assert torch.equal(other.encode(x), z1), f"{codec.name}: a second instance encodes differently"
        assert torch.equal(other.decode(z1), y1), f"{codec.name}: a second instance decodes differently"


def check_range(codec: Codec) -> None:
    """Decode in [0, 1] even for latents off the data (noise, scaled up); latents finite."""
    x = _noise(32, 32)
    z = codec.encode(x)
    assert bool(torch.isfinite(z).all()), f"{codec.name}: encode produced non-finite latents"
    for zz in (z, z * 3.0 + 1.0):
        y = codec.decode(zz)
        assert bool(torch.isfinite(y).all()), f"{codec.name}: decode produced non-finite pixels"
        lo, hi = float(y.min()), float(y.max())
        assert 0.0 <= lo and hi <= 1.0, f"{codec.name}: decode left [0, 1] (min {lo}, max {hi})"


def check_fingerprint(codec: Codec, rebuild: Callable[[], Codec] | None = None) -> str:
    """64 hex digits, stable across use, ``.to(device)`` and a second instance."""
    fp = codec.fingerprint
    assert isinstance(fp, str) and _HEX64.fullmatch(fp), f"{codec.name}: fingerprint {fp!r} is not 64 hex digits"
    codec.decode(codec.encode(_noise(16, 16, 1)))
    assert codec.fingerprint == fp, f"{codec.name}: fingerprint changed after encode/decode"
    assert codec.to(codec.device).fingerprint == fp, f"{codec.name}: fingerprint changed after .to()"
    if rebuild is not None:
        assert rebuild().fingerprint == fp, f"{codec.name}: a second instance has another fingerprint"
    return fp


def check_decode_of_encode(codec: Codec, min_psnr_db: float = SMOOTH_PSNR_FLOOR_DB) -> float:
    """Round-trip PSNR (dB) of :func:`smooth_image`; fails under ``min_psnr_db``."""
    x = smooth_image()
    y = codec.decode(codec.encode(x))[..., : x.shape[-2], : x.shape[-1]]
    mse = float(((y.double() - x.double()) ** 2).mean())
    psnr = 10 * math.log10(1.0 / max(mse, 1e-20))
    assert psnr >= min_psnr_db, f"{codec.name}: decode(encode(smooth image)) PSNR {psnr:.2f} dB < {min_psnr_db} dB"
    return psnr


def _raises_codec_error(fn: Callable[[], Any]) -> bool:
    try:
        fn()
    except CodecError:
        return True
    return False


def check_input_errors(codec: Codec) -> None:
    """Wrong inputs are refused with a CodecError (not a shape error from deep inside)."""
    bad_inputs = {
        "a 3-D tensor": lambda: codec.encode(torch.rand(1, 16, 16)),
        "3 channels": lambda: codec.encode(torch.rand(1, 3, 16, 16)),
        "integer pixels": lambda: codec.encode(torch.zeros(1, 1, 16, 16, dtype=torch.uint8)),
        "pixels above 1": lambda: codec.encode(torch.full((1, 1, 16, 16), 2.0)),
        "latents with the wrong C": lambda: codec.decode(torch.zeros(1, codec.latent_channels + 1, 4, 4)),
    }
    for what, fn in bad_inputs.items():
        assert _raises_codec_error(fn), (
            f"{codec.name}: {what} did not raise CodecError; start encode/encode_dist with "
            f"x = latentds.codecs.base.check_image_batch(x, self.name) and decode with "
            f"z = check_latent_batch(z, self.name, self.latent_channels)")


@dataclass
class ConformanceReport:
    """What :func:`check_codec` checked, with the fingerprint and round-trip PSNR it saw."""

    name: str
    fingerprint: str
    psnr_db: float | None
    checks: list[str] = field(default_factory=list)


def check_codec(name: str, *, min_psnr_db: float | None = SMOOTH_PSNR_FLOOR_DB, **kwargs: Any) -> ConformanceReport:
    """Every check on ``create_codec(name, **kwargs)`` (two instances are built, for the
    cross-instance checks). ``min_psnr_db=None`` skips the round-trip floor (random weights)."""

    codec, other = create_codec(name, **kwargs), create_codec(name, **kwargs)
    report = ConformanceReport(name, "", None)
    check_shapes(codec)
    check_determinism(codec, lambda: other)
    check_range(codec)
    report.fingerprint = check_fingerprint(codec, lambda: other)
    report.checks = ["shapes", "determinism", "range", "fingerprint"]
    if min_psnr_db is not None:
        report.psnr_db = check_decode_of_encode(codec, min_psnr_db)
        report.checks.append("decode_of_encode")
    check_input_errors(codec)
    report.checks.append("input_errors")
    return report
