"""Tests of latentds.metrics: PSNR, MS-SSIM, Fréchet distance and FID extractors."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch
from scipy import linalg

from latentds.errors import LatentdsError
from latentds.metrics import (
    EXTRACTORS, ExtractorUnavailable, RandomConvExtractor, available_extractors, extract_features,
    feature_statistics, fid, frechet_distance, get_extractor, ms_ssim, ms_ssim_min_size, ms_ssim_scales, psnr,
)


def scipy_frechet(mu1, s1, mu2, s2) -> float:
    """The textbook formula with scipy's sqrtm (as in pytorch-fid), written independently."""
    covmean = np.real(linalg.sqrtm(s1 @ s2))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_gaussian(rng: np.random.Generator, d: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    return a.mean(0), np.atleast_2d(np.cov(a, rowvar=False))


def images(n: int = 4, size: int = 192, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth-ish structure plus texture, in [0, 1]
    base = torch.rand(n, 1, size // 8, size // 8, generator=g)
    up = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    return (0.7 * up + 0.3 * torch.rand(n, 1, size, size, generator=g)).clamp(0, 1)


def noisy(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


# ----------------------------------------------------------------------------- Fréchet distance

@pytest.mark.parametrize("d, seed", [(1, 0), (5, 1), (32, 2), (64, 3)])
def test_frechet_distance_matches_scipy(d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    mu1, s1 = random_gaussian(rng, d, 4 * d + 10)
    mu2, s2 = random_gaussian(rng, d, 4 * d + 10)
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref = scipy_frechet(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-7, abs=1e-8)
    assert ours > 0
    # torch inputs give the same
    assert frechet_distance(*(torch.from_numpy(a) for a in (mu1, s1, mu2, s2))) == pytest.approx(ours, rel=1e-12)


def test_frechet_distance_closed_forms() -> None:
    # 1-D: (m1 - m2)^2 + (sd1 - sd2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # commuting (diagonal) covariances: |dmu|^2 + sum (sqrt a - sqrt b)^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = 2.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance([0, 0, 0], np.diag(a), [1, 1, 0], np.diag(b)) == pytest.approx(expected)
    # rank-deficient covariance (fewer samples than dims) still matches scipy
    rng = np.random.default_rng(7)
    mu1, s1 = random_gaussian(rng, 40, 10)
    mu2, s2 = random_gaussian(rng, 40, 60)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-5)


def test_frechet_distance_of_a_rank_deficient_set_with_itself_is_zero() -> None:
    # fewer samples than features and large features: square-rooting the eigenvalues of
    # S1^½ S2 S1^½ would leave an error of ~1e-8 of the trace here
    g = torch.Generator().manual_seed(0)
    for n, d in [(3, 8), (10, 40)]:
        mu, sigma = feature_statistics(torch.randn(n, d, generator=g, dtype=torch.float64) * 100 + 20)
        assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-12 * float(torch.trace(sigma))


def test_frechet_distance_shape_errors() -> None:
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_feature_statistics_is_numpy_cov() -> None:
    f = torch.randn(50, 6, dtype=torch.float64)
    mu, sigma = feature_statistics(f)
    np.testing.assert_allclose(mu.numpy(), f.numpy().mean(0))
    np.testing.assert_allclose(sigma.numpy(), np.cov(f.numpy(), rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError):
        feature_statistics(torch.randn(1, 6))


# ----------------------------------------------------------------------------- FID

def test_fid_of_a_set_with_itself_is_zero_and_grows_with_distortion() -> None:
    real = images(24, 64, seed=3)
    assert abs(fid(real, real, "random-conv")) < 1e-9
    d_small = fid(real, noisy(real, 0.05), "random-conv")
    d_large = fid(real, noisy(real, 0.3), "random-conv")
    assert 0 < d_small < d_large


def test_fid_accepts_batches_and_matches_manual_pipeline() -> None:
    real, fake = images(12, 48, seed=4), images(12, 48, seed=5)
    ext = RandomConvExtractor()
    batched = fid([real[:5], real[5:]], [fake[:7], fake[7:]], ext)
    manual = frechet_distance(*feature_statistics(ext(real).double()), *feature_statistics(ext(fake).double()))
    assert batched == pytest.approx(manual, rel=1e-6)
    assert fid(real, fake, "random-conv", batch_size=3) == pytest.approx(manual, rel=1e-6)


def test_random_conv_is_deterministic() -> None:
    x = images(3, 40, seed=6)
    a, b = RandomConvExtractor()(x), RandomConvExtractor()(x)
    assert torch.equal(a, b) and a.shape == (3, 32)
    assert not torch.equal(RandomConvExtractor(seed=1)(x), a)
    # RGB input is averaged to gray
    assert torch.allclose(RandomConvExtractor()(x.expand(-1, 3, -1, -1)), a)


@pytest.mark.parametrize("name", ["inception", "clip", "biomedclip"])
def test_absent_extractor_raises_a_clear_typed_error(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))          # an empty torch hub: no Inception weights
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))       # an empty Hugging Face cache
    monkeypatch.setenv("HOME", str(tmp_path))                 # no ~/.cache/clip
    monkeypatch.delenv("LATENTDS_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(ExtractorUnavailable) as err:
        get_extractor(name)
    assert isinstance(err.value, LatentdsError)
    msg = str(err.value)
    assert "never download" in msg or "pip install" in msg
    with pytest.raises(ExtractorUnavailable):
        fid(images(4, 32), images(4, 32), name)


def test_inception_missing_weights_path_is_named(tmp_path) -> None:
    pytest.importorskip("torch_fidelity")
    missing = tmp_path / "nope.pth"
    with pytest.raises(ExtractorUnavailable, match="nope.pth"):
        get_extractor("inception", weights_path=missing)


def test_available_extractors_and_unknown_name() -> None:
    avail = available_extractors()
    assert set(avail) == set(EXTRACTORS)
    assert avail["random-conv"] is None
    with pytest.raises(ValueError, match="unknown feature extractor"):
        get_extractor("vgg")


def test_extract_features_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        extract_features(torch.full((2, 1, 16, 16), 1.5))


# ----------------------------------------------------------------------------- PSNR / MS-SSIM

def test_psnr_identical_is_inf_and_noise_lowers_it_monotonically() -> None:
    x = images(3, 64)
    assert math.isinf(psnr(x, x).item())
    values = [psnr(x, noisy(x, s)).item() for s in (0.01, 0.05, 0.2)]
    assert values[0] > values[1] > values[2] > 0


def test_psnr_matches_the_formula() -> None:
    x = torch.zeros(1, 1, 8, 8)
    y = torch.full((1, 1, 8, 8), 0.1)
    assert psnr(x, y).item() == pytest.approx(10 * math.log10(1 / 0.01))
    # per image, then averaged
    xs, ys = torch.zeros(2, 1, 4, 4), torch.stack([torch.full((1, 4, 4), 0.1), torch.full((1, 4, 4), 0.01)])
    per = psnr(xs, ys, reduction="none")
    assert per.tolist() == pytest.approx([20.0, 40.0])
    assert psnr(xs, ys).item() == pytest.approx(30.0)


def test_ms_ssim_identical_is_one_and_noise_lowers_it_monotonically() -> None:
    x = images(2, 192)
    assert ms_ssim(x, x).item() == pytest.approx(1.0, abs=1e-9)
    values = [ms_ssim(x, noisy(x, s)).item() for s in (0.01, 0.05, 0.2)]
    assert 1 > values[0] > values[1] > values[2] > 0


def test_ms_ssim_min_size_and_small_images() -> None:
    assert ms_ssim_min_size() == 176
    assert ms_ssim_scales(176, 200) == 5 and ms_ssim_scales(175, 200) == 4
    assert ms_ssim_scales(99, 99) == 4 and ms_ssim_scales(98, 98) == 3
    assert ms_ssim_scales(44, 44) == 3 and ms_ssim_scales(11, 11) == 2 and ms_ssim_scales(10, 10) == 0
    small = images(2, 64)
    with pytest.warns(UserWarning, match="3 of 5 scales"):
        v = ms_ssim(small, noisy(small, 0.05))
    assert 0 < v.item() < 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ms_ssim(small, small).item() == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="176"):
        ms_ssim(small, small, small="error")
    with pytest.raises(ValueError, match="does not fit"):
        ms_ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_metric_input_validation() -> None:
    x = images(1, 32)
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, x[..., :16])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        psnr(x, x * 2)
    with pytest.raises(TypeError):
        psnr(x.to(torch.uint8), x.to(torch.uint8))
    # 2-D and 3-D inputs are a batch of one
    assert psnr(x[0, 0], noisy(x, 0.1)[0, 0]).item() == pytest.approx(psnr(x, noisy(x, 0.1)).item())


# ----------------------------------------------------------------------------- open_clip loading paths
# open_clip is not installed here: a stand-in module records how latentds calls it, while the
# Hugging Face cache lookup is huggingface_hub's real one on a cache laid out in tmp_path.

class _FakeClip(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visual = torch.nn.Module()
        self.visual.image_size = 32
        self.visual.output_dim = 8
        self.visual.preprocess_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
        g = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Conv2d(3, 8, 32)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=g))
        self.seen: list[tuple[int, ...]] = []

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        return self.proj(x).flatten(1)


@pytest.fixture
def fake_open_clip(monkeypatch: pytest.MonkeyPatch, tmp_path):
    import sys
    import types

    import huggingface_hub.constants as hf_constants

    calls: list[dict] = []

    def create_model(name, pretrained=None, **kw):
        calls.append({"name": name, "pretrained": pretrained, "offline": hf_constants.HF_HUB_OFFLINE,
                      "env": os.environ.get("HF_HUB_OFFLINE")})
        if str(name).startswith("local-dir:"):
            raise RuntimeError("this open_clip knows no local-dir: schema")
        return _FakeClip()

    fake = types.SimpleNamespace(
        create_model=create_model,
        get_pretrained_cfg=lambda model, tag: {"hf_hub": "timm/vit_base_patch32_clip_224.openai/"}
        if (model, tag) == ("ViT-B-32", "openai") else {},
        OPENAI_DATASET_MEAN=(0.48, 0.46, 0.41), OPENAI_DATASET_STD=(0.27, 0.26, 0.28),
        factory=types.SimpleNamespace(_MODEL_CONFIGS={}),
    )
    monkeypatch.setitem(sys.modules, "open_clip", fake)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    fake.calls = calls
    return fake



def test_clip_from_checkpoint_file(fake_open_clip, tmp_path) -> None:
    ckpt = tmp_path / "clip.pt"
    ckpt.write_bytes(b"weights")
    ext = get_extractor("clip", pretrained=ckpt)
    call = fake_open_clip.calls[-1]
    assert call["name"] == "ViT-B-32" and call["pretrained"] == str(ckpt)
    assert call["offline"] is True and call["env"] == "1"           # hub access forced off while loading
    import huggingface_hub.constants as hf_constants
    assert hf_constants.HF_HUB_OFFLINE is False                     # and restored after
    x = images(3, 50)
    feats = ext(x)
    assert feats.shape == (3, 8) and ext.model.seen == [(3, 3, 32, 32)]   # gray -> RGB, resized to 32
    assert fid(x, x, ext) == pytest.approx(0.0, abs=1e-6)


def test_clip_tag_resolves_from_the_hf_cache_only(fake_open_clip, tmp_path) -> None:
    with pytest.raises(ExtractorUnavailable, match="vit_base_patch32_clip_224.openai"):
        get_extractor("clip")                                        # empty cache: no download attempted
    assert fake_open_clip.calls == []
    snap = tmp_path / "hub" / "models--timm--vit_base_patch32_clip_224.openai"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("abc123")
    (snap / "snapshots" / "abc123").mkdir(parents=True)
    weights = snap / "snapshots" / "abc123" / "open_clip_pytorch_model.bin"
    weights.write_bytes(b"weights")
    get_extractor("clip")
    assert fake_open_clip.calls[-1]["pretrained"] == str(weights)


def test_biomedclip_from_a_model_directory(fake_open_clip, tmp_path) -> None:
    d = tmp_path / "biomedclip"
    d.mkdir()
    with pytest.raises(ExtractorUnavailable, match="not an open_clip model directory"):
        get_extractor("biomedclip", pretrained=d)
    (d / "open_clip_config.json").write_text('{"model_cfg": {"embed_dim": 512}, "preprocess_cfg": {}}')
    (d / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    ext = get_extractor("biomedclip", pretrained=d)
    first, second = fake_open_clip.calls[-2:]
    assert first["name"] == f"local-dir:{d}"                         # tried first, refused by this open_clip
    assert second["pretrained"] == str(d / "open_clip_pytorch_model.bin")
    assert fake_open_clip.factory._MODEL_CONFIGS[second["name"]] == {"embed_dim": 512}
    assert ext(images(2, 40)).shape == (2, 8)
