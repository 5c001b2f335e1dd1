"""The residual-s2d KL autoencoder (issue 13): starts exactly at the s2d baseline, loads
through create_codec next to the plain architecture, and ships with an α guard."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentds.codecs import create_codec, save_kl_codec
from latentds.codecs.build import build_model, ldm_config
from latentds.codecs.kl import KLCodec, ResidualKLCodec
from latentds.codecs.residual import ResidualS2DAutoencoder, choose_alpha, high_pass
from latentds.errors import CodecError

ROOT = Path(__file__).resolve().parent.parent


def tiny_vae(f: int, c: int, seed: int = 0):
    cfg = ldm_config(f, c, 1, ch=8)
    cfg.update(norm_num_groups=4, layers_per_block=1)
    return build_model(cfg, seed=seed, where="test")


def images(n: int = 2, h: int = 64, w: int = 48, seed: int = 0) -> torch.Tensor:
    from latentds.testing.synthetic import phantom

    H, W = max(h, 128), max(w, 128)  # phantoms need room; crop to the size asked for
    x = torch.stack([torch.from_numpy(phantom(seed + i, (H, W), positive=True, kind="calcification")) for i in range(n)])
    return x[:, None, (H - h) // 2:(H - h) // 2 + h, (W - w) // 2:(W - w) // 2 + w].float().contiguous()


def perturb(model: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize("f,c", [(4, 1), (4, 4), (8, 1), (8, 4), (16, 1), (16, 16)])
def test_step_zero_equals_s2d(f: int, c: int) -> None:
    vae = tiny_vae(f, c)
    model = ResidualS2DAutoencoder(vae, f, c)  # zero-initialised corrections
    codec = ResidualKLCodec(f"kl-f{f}c{c}", vae, alpha=1.0)
    s2d = create_codec(f"s2d-f{f}c{c}")
    x = images(2, 4 * f, 3 * f)
    z = codec.encode(x)
    torch.testing.assert_close(z, s2d.encode(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(codec.decode(z), s2d.decode(z), rtol=0, atol=1e-6)
    # The trainer-facing interface ([-1, 1] images) agrees too.
    with torch.no_grad():
        post = model.encode(x * 2 - 1).latent_dist
        torch.testing.assert_close(post.mean, s2d.encode(x), rtol=0, atol=1e-6)
        assert float(post.std.max()) < 0.01  # near-deterministic start
        y = (model.decode(post.mean).sample + 1) / 2
        torch.testing.assert_close(y.clamp(0, 1), s2d.decode(post.mean), rtol=0, atol=1e-6)


def test_alpha_zero_is_s2d_after_training_and_alpha_changes_the_output() -> None:
    vae = tiny_vae(8, 4)
    model = ResidualS2DAutoencoder(vae, 8, 4)
    perturb(model)
    x = images()
    s2d = create_codec("s2d-f8c4")
    off = ResidualKLCodec("kl-f8c4", vae, alpha=0.0)
    on = ResidualKLCodec("kl-f8c4", vae, alpha=1.0)
    assert torch.equal(off.encode(x), s2d.encode(x))
    assert torch.equal(off.decode(off.encode(x)), s2d.decode(s2d.encode(x)))
    assert not torch.allclose(on.encode(x), s2d.encode(x), atol=1e-4)
    assert off.fingerprint != on.fingerprint


def test_export_records_architecture_and_both_kinds_load(tmp_path: Path) -> None:
    vae = tiny_vae(8, 4)
    res = ResidualS2DAutoencoder(vae, 8, 4)
    perturb(res)
    p_res = save_kl_codec(res, tmp_path / "res.safetensors", name="kl-f8c4", alpha=0.4, tensor_dtype="fp16")
    p_plain = save_kl_codec(vae, tmp_path / "plain.safetensors", name="kl-f8c4", tensor_dtype="fp16")
    from safetensors import safe_open

    with safe_open(str(p_res), "pt") as fh:
        meta = fh.metadata()
        assert fh.get_tensor("decoder.conv_out.weight").dtype == torch.float16
    assert meta["latentds_arch_kind"] == "residual-s2d" and float(meta["latentds_residual_alpha"]) == 0.4
    a, b = create_codec(str(p_res)), create_codec(str(p_plain))
    assert isinstance(a, ResidualKLCodec) and a.alpha == 0.4 and a.arch_kind == "residual-s2d"
    assert type(b) is KLCodec and b.arch_kind == "plain"
    assert a.weights_sha256 == b.weights_sha256 and a.fingerprint != b.fingerprint  # same tensors, other model
    c = create_codec("kl-f8c4", weights=str(p_res))  # through the registry name too
    assert isinstance(c, ResidualKLCodec) and c.fingerprint == a.fingerprint
    x = images()
    assert torch.equal(a.encode(x), c.encode(x))
    assert not torch.allclose(a.decode(a.encode(x)), b.decode(b.encode(x)), atol=1e-3)
    with pytest.raises(CodecError, match="alpha"):
        save_kl_codec(res, tmp_path / "bad.safetensors", name="kl-f8c4", alpha=1.5)


def test_choose_alpha_is_never_worse_than_s2d_on_validation() -> None:
    from latentds.metrics import psnr

    vae = tiny_vae(4, 4)
    res = ResidualS2DAutoencoder(vae, 4, 4)
    perturb(res, scale=0.02)  # an untrained, harmful correction: the guard must switch it (mostly) off
    codec = ResidualKLCodec("kl-f4c4", vae, alpha=1.0)
    val = [images(1, 64, 64, seed=s) for s in range(3)]

    def roundtrip(x: torch.Tensor, a: float) -> torch.Tensor:
        codec.alpha = a
        return codec.decode(codec.encode(x))

    alpha, report = choose_alpha(roundtrip, val)
    assert 0.0 <= alpha <= 1.0 and report["grid"][0]["alpha"] == 0.0
    base = [float(psnr(x, roundtrip(x, 0.0))) for x in val]
    got = [float(psnr(x, roundtrip(x, alpha))) for x in val]
    assert all(g >= b - 1e-6 for g, b in zip(got, base))
    harmful = [r for r in report["grid"] if not r["never_worse"]]
    assert harmful and all(r["alpha"] != alpha for r in harmful)


def test_high_pass_removes_flat_and_keeps_specks() -> None:
    flat = torch.full((1, 1, 16, 16), 0.3)
    assert float(high_pass(flat).abs().max()) < 1e-6
    speck = flat.clone()
    speck[0, 0, 8, 8] = 1.0
    assert float(high_pass(speck)[0, 0, 8, 8]) > 0.4


def test_residual_needs_a_square_c_dividing_f() -> None:
    with pytest.raises(CodecError, match="square"):
        ResidualS2DAutoencoder(tiny_vae(8, 2), 8, 2)
    with pytest.raises(CodecError, match="square"):
        ResidualKLCodec("kl-f8c2", tiny_vae(8, 2), alpha=1.0)


# ----------------------------------------------------------------------------- trainer


pytest.importorskip("lightning")


def test_trainer_residual_arch_with_hf_loss_trains_and_exports(tmp_path: Path) -> None:
    from latentds.train.vae.config import load_config
    from latentds.train.vae.module import VAEModule
    from latentds.train.vae.run import fit

    cfg = load_config([ROOT / "latentds" / "train" / "vae" / "configs" / "tiny-cpu.yaml"], [
        f"trainer.out_dir={tmp_path}", "model.arch_kind=residual-s2d", "loss.hf_l1_weight=1.0",
        "loss.disc_start=100", "trainer.steps=3", "perceptual.kind=none"])
    x = images(2, 32, 32)
    module = VAEModule(cfg)
    with torch.no_grad():  # step 0 of the trainer's model is s2d
        xrec, post = module.reconstruct(x * 2 - 1, sample=False)
    s2d = create_codec("s2d-f8c4")
    torch.testing.assert_close(post.mean, s2d.encode(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(((xrec + 1) / 2).clamp(0, 1), s2d.decode(s2d.encode(x)), rtol=0, atol=1e-6)
    loss, logs = module.generator_loss(x * 2 - 1, xrec, post, disc_on=False)
    assert "hf_l1" in logs and float(logs["hf_l1"]) > 0

    out = fit(cfg)
    codec = create_codec(out["codec_last"])
    assert isinstance(codec, ResidualKLCodec) and codec.f == 8 and codec.latent_channels == 4
    assert 0.0 <= codec.alpha <= 1.0
    plain = load_config([ROOT / "latentds" / "train" / "vae" / "configs" / "tiny-cpu.yaml"], [f"trainer.out_dir={tmp_path}/p"])
    assert plain["model"]["arch_kind"] == "plain"  # the paper architecture stays the default


def test_trainer_refuses_mismatched_init(tmp_path: Path) -> None:
    from latentds.train.vae.config import ConfigError, load_config
    from latentds.train.vae.module import VAEModule

    with pytest.raises(ConfigError, match="square"):
        load_config([ROOT / "latentds" / "train" / "vae" / "configs" / "tiny-cpu.yaml"],
                    [f"trainer.out_dir={tmp_path}", "model.arch_kind=residual-s2d", "model.latent_channels=2"])
    vae = tiny_vae(8, 4)
    p = save_kl_codec(ResidualS2DAutoencoder(vae, 8, 4), tmp_path / "r.safetensors", name="kl-f8c4", alpha=1.0)
    cfg = load_config([ROOT / "latentds" / "train" / "vae" / "configs" / "tiny-cpu.yaml"],
                      [f"trainer.out_dir={tmp_path}", f"init.codec={p}"])
    with pytest.raises(ValueError, match="arch_kind"):
        VAEModule(cfg)


# ----------------------------------------------------------------------------- shipped defaults


@pytest.mark.parametrize("name", ["kl-f4c1", "kl-f4c4", "kl-f8c1", "kl-f8c4", "kl-f16c1", "kl-f16c16"])
def test_shipped_codec_is_never_worse_than_its_s2d_on_a_small_image(name: str) -> None:
    """Issue 13: every shipped codec >= its s2d baseline (whole-image PSNR and finding-region error)
    on a small held-out image: a SYNTHETIC phantom (seed 10_000+, never trained on) with a
    finding, and its finding region."""
    from latentds.codecs import shipped_kl_defaults
    from latentds.metrics import psnr
    from latentds.testing.synthetic import phantom

    assert name in shipped_kl_defaults()
    codec = create_codec(name)
    assert isinstance(codec, ResidualKLCodec)
    s2d = create_codec(f"s2d-f{codec.f}c{codec.latent_channels}")
    for seed, kind in ((10_000, "calcification"), (10_001, "fracture")):
        pos = torch.from_numpy(phantom(seed, (192, 160), positive=True, kind=kind))[None, None]
        neg = torch.from_numpy(phantom(seed, (192, 160), positive=False, kind=kind))[None, None]
        rk = [c.decode(c.encode(v))[..., :192, :160] for c in (codec, s2d) for v in (pos, neg)]
        assert float(psnr(pos, rk[0])) >= float(psnr(pos, rk[2])), (name, seed)
        mask = (pos - neg).abs() > 1e-3
        if mask.any():
            err_kl = float((((rk[0] - rk[1]) - (pos - neg))[mask] ** 2).mean())
            err_s2d = float((((rk[2] - rk[3]) - (pos - neg))[mask] ** 2).mean())
            assert err_kl <= err_s2d * (1 + 1e-6), (name, seed, err_kl, err_s2d)
