"""Space-to-depth baseline codecs ``s2d-f{f}c{C}`` (issue 12 item 1)."""

from __future__ import annotations

import pytest
import torch

from latentds.codecs import create_codec, list_codecs
from latentds.codecs.s2d import s2d_channels
from latentds.errors import CodecError, LatentdsError

ALL = [(f, c) for f in (4, 8, 16) for c in s2d_channels(f)]


def _image(h: int = 64, w: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 1, h, w, generator=g)


def test_registered_names() -> None:
    names = {n for n in list_codecs() if n.startswith("s2d-")}
    assert names == {
        "s2d-f4c1", "s2d-f4c4", "s2d-f4c16",
        "s2d-f8c1", "s2d-f8c4", "s2d-f8c16", "s2d-f8c64",
        "s2d-f16c1", "s2d-f16c4", "s2d-f16c16", "s2d-f16c64", "s2d-f16c256",
    }


@pytest.mark.parametrize("f,c", ALL)
def test_shapes(f: int, c: int) -> None:
    codec = create_codec(f"s2d-f{f}c{c}")
    x = _image(50, 37)  # not multiples of f: padded bottom/right like every codec
    z = codec.encode(x)
    assert z.shape == (2, c, -(-50 // f), -(-37 // f)) and z.dtype == torch.float32
    y = codec.decode(z)
    assert y.shape == (2, 1, z.shape[-2] * f, z.shape[-1] * f)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    mean, std = codec.encode_dist(x)
    assert torch.equal(mean, z) and not std.any()


@pytest.mark.parametrize("f", [4, 8, 16])
def test_lossless_at_c_equals_f_squared_is_bit_exact(f: int) -> None:
    codec = create_codec(f"s2d-f{f}c{f * f}")
    x = _image(4 * f, 3 * f, seed=f)
    x[0, 0, 0, 0], x[1, 0, -1, -1] = 0.0, 1.0  # the range ends survive the decode clamp
    z = codec.encode(x)
    assert torch.equal(codec.decode(z), x)
    # Every pixel is in the latent exactly once: a rearrangement, not a resize.
    assert torch.equal(z.flatten().sort().values, x.flatten().sort().values)


@pytest.mark.parametrize("f", [4, 8, 16])
def test_c1_equals_bicubic_bit_for_bit(f: int) -> None:
    s2d, bic = create_codec(f"s2d-f{f}c1"), create_codec(f"bicubic-f{f}")
    x = _image(70, 53, seed=f)
    z = s2d.encode(x)
    assert torch.equal(z, bic.encode(x))
    assert torch.equal(s2d.decode(z), bic.decode(z))


def test_intermediate_c_is_bicubic_then_unshuffle() -> None:
    # s2d-f8c4 = bicubic x4 (as in bicubic-f4), then pixel_unshuffle x2.
    x = _image(64, 64)
    z = create_codec("s2d-f8c4").encode(x)
    ref = torch.nn.functional.pixel_unshuffle(create_codec("bicubic-f4").encode(x), 2)
    assert torch.equal(z, ref)
    y = create_codec("s2d-f8c4").decode(z)
    assert torch.equal(y, create_codec("bicubic-f4").decode(torch.nn.functional.pixel_shuffle(z, 2)))


def test_deterministic_and_fingerprinted() -> None:
    x = _image()
    a, b = create_codec("s2d-f8c4"), create_codec("s2d-f8c4")
    assert torch.equal(a.encode(x), b.encode(x)) and a.fingerprint == b.fingerprint
    fps = {create_codec(f"s2d-f{f}c{c}").fingerprint for f, c in ALL}
    fps |= {create_codec(f"bicubic-f{f}").fingerprint for f in (4, 8, 16)}
    assert len(fps) == len(ALL) + 3  # s2d-f{f}c1 computes what bicubic-f{f} does, but is its own cache


def test_errors_are_typed() -> None:
    with pytest.raises(CodecError, match="unknown option"):
        create_codec("s2d-f4c4", weights="x.safetensors")
    with pytest.raises(CodecError, match="B×4×h×w"):
        create_codec("s2d-f4c4").decode(torch.zeros(1, 3, 2, 2))
    with pytest.raises(LatentdsError, match=r"\[0, 1\]"):
        create_codec("s2d-f4c4").encode(torch.full((1, 1, 8, 8), 2.0))
