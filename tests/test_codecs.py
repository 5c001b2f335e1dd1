"""Tests for latentds.codecs. Small random-initialised architectures and 64² images keep
them fast; checkpoints in the published key layouts (ldm / MedVAE with LoRA / diffusers)
are built here from the layout rules, independently of the converter under test."""

from __future__ import annotations

import hashlib
import json

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from latentds.codecs import Codec, create_codec, list_codecs, register_codec, save_kl_codec
from latentds.codecs.checkpoints import merge_lora
from latentds.errors import CodecError, LatentdsError

SMALL = {4: [32, 32, 64], 8: [32, 32, 64, 64], 16: [32, 32, 32, 64, 64]}


def small(name: str, f: int, seed: int = 0, **kw: object) -> Codec:
    return create_codec(name, weights="random", seed=seed, arch={"block_out_channels": SMALL[f]}, **kw)


def smooth_image(b: int = 2, h: int = 64, w: int = 64) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    imgs = [0.5 + 0.4 * torch.sin(2 * math.pi * (xx * (k + 1) * 0.7 + yy * 0.5)) for k in range(b)]
    return torch.stack(imgs)[:, None]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ----------------------------------------------------------------- ldm-layout checkpoints


def ldm_state_dict(
    *,
    ch: int,
    ch_mult: tuple[int, ...],
    z: int,
    in_ch: int,
    num_res_blocks: int = 2,
    attn_levels: tuple[int, ...] = (),
    lora_r: int | None = None,
    medvae_head: bool = False,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A CompVis/MedVAE ``AutoencoderKL`` state dict with ldm key names, following the
    module tree of ldm's Encoder/Decoder (see reference/medvae.md §1.6). With ``lora_r``,
    ResnetBlock and AttnBlock convs are wrapped as MedVAE's LoRA does."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def t(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    def conv(p: str, cout: int, cin: int, k: int, lora: bool = False) -> None:
        w, b = t(cout, cin, k, k, scale=1 / math.sqrt(cin * k * k)), t(cout, scale=0.01)
        if lora and lora_r:
            sd[f"{p}.conv.weight"], sd[f"{p}.conv.bias"] = w, b
            sd[f"{p}.lora_down.weight"] = t(lora_r, cin, k, k, scale=0.05)
            sd[f"{p}.lora_up.weight"] = t(cout, lora_r, 1, 1, scale=0.05)
        else:
            sd[f"{p}.weight"], sd[f"{p}.bias"] = w, b

    def norm(p: str, c: int) -> None:
        sd[f"{p}.weight"], sd[f"{p}.bias"] = 1 + t(c, scale=0.05), t(c, scale=0.05)

    def resnet(p: str, cin: int, cout: int) -> None:
        norm(f"{p}.norm1", cin)
        conv(f"{p}.conv1", cout, cin, 3, lora=True)
        norm(f"{p}.norm2", cout)
        conv(f"{p}.conv2", cout, cout, 3, lora=True)
        if cin != cout:
            conv(f"{p}.nin_shortcut", cout, cin, 1, lora=True)

    def attn(p: str, c: int) -> None:
        norm(f"{p}.norm", c)
        for n in ("q", "k", "v", "proj_out"):
            conv(f"{p}.{n}", c, c, 1, lora=True)

    n = len(ch_mult)
    conv("encoder.conv_in", ch, in_ch, 3)
    block_in = ch
    for i in range(n):
        block_out = ch * ch_mult[i]
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if i in attn_levels:
                attn(f"encoder.down.{i}.attn.{j}", block_in)
        if i != n - 1:
            conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
    resnet("encoder.mid.block_1", block_in, block_in)
    attn("encoder.mid.attn_1", block_in)
    resnet("encoder.mid.block_2", block_in, block_in)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", 2 * z, block_in, 3)
    conv("quant_conv", 2 * z, 2 * z, 1)
    conv("post_quant_conv", z, z, 1)
    block_in = ch * ch_mult[-1]
    conv("decoder.conv_in", block_in, z, 3)
    resnet("decoder.mid.block_1", block_in, block_in)
    attn("decoder.mid.attn_1", block_in)
    resnet("decoder.mid.block_2", block_in, block_in)
    for i in reversed(range(n)):
        block_out = ch * ch_mult[i]
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if i in attn_levels:
                attn(f"decoder.up.{i}.attn.{j}", block_in)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", in_ch, block_in, 3)
    if medvae_head:  # stage-2 projection head; not on the decode path
        conv("channel_ds.0", 64, z, 1)
        conv("channel_ds.2", 64, 64, 3)
        conv("channel_ds.4", z, 64, 1)
        conv("channel_proj", z, z, 1)
    return sd


def merged_independently(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """W + up·down via a flattened matmul (a different formula from the code under test)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.endswith((".lora_down.weight", ".lora_up.weight")):
            continue
        if k.endswith(".conv.weight") and k.replace(".conv.weight", ".lora_down.weight") in sd:
            p = k[: -len(".conv.weight")]
            down, up = sd[f"{p}.lora_down.weight"], sd[f"{p}.lora_up.weight"]
            out[f"{p}.weight"] = v + (up.flatten(1) @ down.flatten(1)).view_as(v)
        elif k.endswith(".conv.bias") and k.replace(".conv.bias", ".lora_down.weight") in sd:
            out[k.replace(".conv.bias", ".bias")] = v
        else:
            out[k] = v
    return out


MEDVAE_SMALL_F8C4 = {"block_out_channels": [32, 64, 64, 64]}  # ch=32, ch_mult (1,2,2,2)


def medvae_f8c4_checkpoint(path: Path, *, lora: bool = True) -> dict[str, torch.Tensor]:
    sd = ldm_state_dict(ch=32, ch_mult=(1, 2, 2, 2), z=4, in_ch=3, lora_r=4 if lora else None, medvae_head=True)
    torch.save({"state_dict": sd}, path)
    return sd


# ----------------------------------------------------------------- registry


def test_registry_lists_all_names() -> None:
    names = list_codecs()
    expected = {"bicubic-f4", "bicubic-f8", "bicubic-f16", "sd-vae-f4c3", "sd-vae-f8c4", "sd-vae-f16c16"}
    expected |= {f"kl-f{f}c{c}" for f, c in [(4, 1), (4, 4), (8, 1), (8, 4), (16, 1), (16, 16)]}
    expected |= {"medvae-f4c1", "medvae-f8c1", "medvae-f4c3", "medvae-f8c4"}
    assert expected <= set(names)
    assert names == sorted(names)


def test_unknown_name_lists_known_codecs() -> None:
    with pytest.raises(CodecError) as exc:
        create_codec("kl-f7c3")
    assert "bicubic-f8" in str(exc.value) and "medvae-f8c4" in str(exc.value)
    assert isinstance(exc.value, LatentdsError)


def test_register_codec_refuses_duplicates_and_accepts_new() -> None:
    with pytest.raises(CodecError):
        register_codec("bicubic-f8", lambda **kw: None)  # type: ignore[arg-type,return-value]
    register_codec("test-bicubic-alias", lambda **kw: create_codec("bicubic-f4", **kw))
    assert "test-bicubic-alias" in list_codecs()
    assert create_codec("test-bicubic-alias").f == 4


def test_unknown_option_is_an_error() -> None:
    with pytest.raises(CodecError, match="unknown option"):
        create_codec("kl-f8c4", weights="random", tile=64)


# ----------------------------------------------------------------- shapes and ranges


@pytest.mark.parametrize("f", [4, 8, 16])
@pytest.mark.parametrize("hw", [(64, 64), (50, 37)])
def test_bicubic_shapes(f: int, hw: tuple[int, int]) -> None:
    codec = create_codec(f"bicubic-f{f}")
    x = torch.rand(2, 1, *hw)
    z = codec.encode(x)
    assert z.shape == (2, 1, math.ceil(hw[0] / f), math.ceil(hw[1] / f)) and z.dtype == torch.float32
    y = codec.decode(z)
    assert y.shape == (2, 1, z.shape[2] * f, z.shape[3] * f)
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    mean, std = codec.encode_dist(x)
    assert torch.equal(mean, z) and not std.any()


def test_bicubic_roundtrip_of_smooth_image() -> None:
    x = smooth_image(h=128, w=128)
    codec = create_codec("bicubic-f4")
    y = codec.decode(codec.encode(x))
    assert float((y - x).abs().mean()) < 0.01


@pytest.mark.parametrize("name,f,c", [("kl-f4c1", 4, 1), ("kl-f8c4", 8, 4), ("kl-f16c16", 16, 16)])
@pytest.mark.parametrize("hw", [(64, 64), (45, 70)])
def test_kl_shapes_and_range(name: str, f: int, c: int, hw: tuple[int, int]) -> None:
    codec = small(name, f)
    assert (codec.f, codec.latent_channels) == (f, c)
    z = codec.encode(torch.rand(2, 1, *hw))
    assert z.shape == (2, c, math.ceil(hw[0] / f), math.ceil(hw[1] / f))
    assert z.dtype == torch.float32 and z.is_contiguous()
    y = codec.decode(z)
    assert y.shape == (2, 1, z.shape[2] * f, z.shape[3] * f) and y.dtype == torch.float32
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0


def test_encode_dist_matches_encode() -> None:
    codec = small("kl-f8c4", 8)
    x = torch.rand(1, 1, 64, 64)
    mean, std = codec.encode_dist(x)
    assert torch.equal(mean, codec.encode(x))
    assert std.shape == mean.shape and bool((std > 0).all())


def test_bad_inputs_raise_codec_error() -> None:
    codec = create_codec("bicubic-f8")
    with pytest.raises(CodecError, match=r"\[0, 1\]"):
        codec.encode(torch.full((1, 1, 16, 16), 255.0))
    with pytest.raises(CodecError, match="B×1×H×W"):
        codec.encode(torch.rand(16, 16))
    with pytest.raises(CodecError, match="dtype"):
        codec.encode(torch.zeros(1, 1, 16, 16, dtype=torch.uint8))
    with pytest.raises(CodecError):
        codec.encode(torch.full((1, 1, 16, 16), float("nan")))
    with pytest.raises(CodecError, match="latent"):
        small("kl-f8c4", 8).decode(torch.zeros(1, 3, 4, 4))


def test_uses_sdpa_attention() -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    codec = small("kl-f8c4", 8)
    procs = codec.model.attn_processors  # type: ignore[attr-defined]
    assert procs and all(isinstance(p, AttnProcessor2_0) for p in procs.values())


# ----------------------------------------------------------------- determinism and fingerprints


def test_bit_identical_encode_and_decode() -> None:
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    a, b = small("kl-f8c4", 8), small("kl-f8c4", 8)
    z = a.encode(x)
    assert torch.equal(z, a.encode(x)) and torch.equal(z, b.encode(x))
    assert torch.equal(a.decode(z), b.decode(z))
    bic = create_codec("bicubic-f8")
    assert torch.equal(bic.encode(x), bic.encode(x))


def test_fingerprint_stable_and_sensitive() -> None:
    base = small("kl-f8c4", 8)
    fp = base.fingerprint
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert small("kl-f8c4", 8).fingerprint == fp
    others = {
        "seed": small("kl-f8c4", 8, seed=1).fingerprint,
        "arch": create_codec("kl-f8c4", weights="random", arch={"block_out_channels": [32, 64, 64, 64]}).fingerprint,
        "autocast": small("kl-f8c4", 8, autocast="bf16").fingerprint,
        "dtype": small("kl-f8c4", 8, dtype="bf16").fingerprint,
        "tiling": small("kl-f8c4", 8, tile_size=64).fingerprint,
        "overlap": small("kl-f8c4", 8, tile_size=64, tile_overlap=8).fingerprint,
    }
    assert fp not in others.values()
    assert len(set(others.values())) == len(others)
    bics = {create_codec(f"bicubic-f{f}").fingerprint for f in (4, 8, 16)}
    assert len(bics) == 3 and create_codec("bicubic-f8").fingerprint in bics
    # moving devices does not change the cache identity
    assert base.to("cpu").fingerprint == fp


# ----------------------------------------------------------------- export round trip


def test_save_kl_codec_round_trip(tmp_path: Path) -> None:
    codec = small("kl-f8c4", 8, seed=3)
    x = torch.rand(2, 1, 64, 48)
    z = codec.encode(x)
    path = save_kl_codec(codec, tmp_path / "trained.safetensors", name="kl-f8c4")
    assert path.is_file()
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["latentds_codec"] == "kl-f8c4" and '"block_out_channels":[32,32,64,64]' in meta["config"]
    by_path = create_codec(str(path))
    by_name = create_codec("kl-f8c4", weights=path)
    assert by_path.name == "kl-f8c4"
    assert torch.equal(by_path.encode(x), z) and torch.equal(by_name.encode(x), z)
    assert by_path.fingerprint == by_name.fingerprint == codec.fingerprint
    # a raw AutoencoderKL is accepted too
    save_kl_codec(codec.model, tmp_path / "raw.safetensors", name="my-mammo-kl")  # type: ignore[attr-defined]
    assert create_codec(str(tmp_path / "raw.safetensors")).name == "my-mammo-kl"


def test_save_kl_codec_refuses_mismatched_name_and_load_checks_fc(tmp_path: Path) -> None:
    codec = small("kl-f8c4", 8)
    with pytest.raises(CodecError, match="f=4"):
        save_kl_codec(codec, tmp_path / "x.safetensors", name="kl-f4c4")
    path = save_kl_codec(codec, tmp_path / "x.safetensors", name="kl-f8c4")
    with pytest.raises(CodecError, match="create_codec\\(path\\)"):
        create_codec("kl-f4c1", weights=path)


def test_missing_default_weights_say_what_to_do() -> None:
    from latentds.codecs import shipped_kl_defaults

    assert "kl-f4c16" not in shipped_kl_defaults()  # the six Table-1 pairs ship; kl-f4c16 does not
    with pytest.raises(CodecError) as exc:
        create_codec("kl-f4c16")
    msg = str(exc.value)
    assert "kl-f4c16.safetensors" in msg and "weights=PATH" in msg and "no default weights are shipped for kl-f4c16" in msg


def test_codecs_cli_lists_names_and_weight_status(capsys: pytest.CaptureFixture[str]) -> None:
    from latentds.cli import main

    assert main(["codecs"]) == 0
    assert capsys.readouterr().out.split() == list_codecs()  # plain: one name per line
    assert main(["codecs", "-v"]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()}
    assert set(lines) == set(list_codecs())
    assert "f=4" in lines["kl-f4c4"] and "C=4" in lines["kl-f4c4"] and "shipped" in lines["kl-f4c4"]
    assert "shipped" in lines["kl-f16c16"] and "no weights needed" in lines["s2d-f8c4"]
    assert "no weights here" in lines["kl-f4c16"] and "train-vae" in lines["kl-f4c16"]
    assert "Hugging Face cache" in lines["medvae-f8c4"] and "no weights needed" in lines["bicubic-f8"]


@pytest.mark.parametrize("name", ["kl-f4c1", "kl-f4c4", "kl-f8c1", "kl-f8c4", "kl-f16c1", "kl-f16c16"])
def test_shipped_default_weights_load_and_reconstruct(name: str) -> None:
    """The packaged defaults are trained models (not random init): deterministic, and a
    held-out SYNTHETIC phantom comes back far better than an untrained model's output."""
    from latentds.codecs.weights import PACKAGED_WEIGHTS_DIR, shipped_kl_defaults
    from latentds.metrics import psnr
    from latentds.testing.synthetic import phantom

    assert name in shipped_kl_defaults()
    sizes = [p.stat().st_size for p in PACKAGED_WEIGHTS_DIR.glob("*.safetensors")]
    assert sum(sizes) <= 40_000_000  # issue 13's budget for all shipped weights
    codec = create_codec(name)
    assert Path(codec.source) == PACKAGED_WEIGHTS_DIR / f"{name}.safetensors"
    card = json.loads((PACKAGED_WEIGHTS_DIR / f"{name}.json").read_text())  # the model card matches the file
    assert card["sha256"] == hashlib.sha256(Path(codec.source).read_bytes()).hexdigest()
    assert "NOT a clinical model" in card["summary"]
    x = torch.from_numpy(phantom(10_123, (128, 96), positive=True, kind="calcification"))[None, None]
    assert codec.arch_kind == "residual-s2d"  # issue 13: every shipped default starts from (and is guarded by) s2d
    z1, z2 = codec.encode(x), codec.encode(x)
    assert torch.equal(z1, z2) and z1.shape[-2:] == (128 // codec.f, 96 // codec.f)
    trained = float(psnr(x, codec.decode(z1)[..., :128, :96].clamp(0, 1)))
    rand = create_codec(name, weights="random")
    untrained = float(psnr(x, rand.decode(rand.encode(x))[..., :128, :96].clamp(0, 1)))
    assert trained > 25.0 and trained > untrained + 10.0, (trained, untrained)


# ----------------------------------------------------------------- MedVAE


def test_lora_merge_equals_lora_forward() -> None:
    """The merged conv reproduces conv(x) + up(down(x)) numerically (3×3, stride 1, pad 1)."""
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(8, 6, 3, 3, generator=g), torch.randn(8, generator=g)
    down, up = torch.randn(4, 6, 3, 3, generator=g), torch.randn(8, 4, 1, 1, generator=g)
    merged, n = merge_lora({"m.conv.weight": w, "m.conv.bias": b, "m.lora_down.weight": down, "m.lora_up.weight": up})
    assert n == 1 and set(merged) == {"m.weight", "m.bias"}
    x = torch.randn(2, 6, 10, 10, generator=g)
    ref = F.conv2d(x, w, b, padding=1) + F.conv2d(F.conv2d(x, down, padding=1), up)
    torch.testing.assert_close(F.conv2d(x, merged["m.weight"], merged["m.bias"], padding=1), ref, rtol=1e-4, atol=1e-4)


def test_medvae_lora_checkpoint_loads_and_merges(tmp_path: Path) -> None:
    sd = medvae_f8c4_checkpoint(tmp_path / "vae_8x_4c_2D.ckpt")
    assert any(k.endswith("mid.attn_1.q.lora_up.weight") for k in sd)
    codec = create_codec("medvae-f8c4", weights=tmp_path / "vae_8x_4c_2D.ckpt", arch=MEDVAE_SMALL_F8C4)
    assert codec.lora_merged > 0 and any(k.startswith("channel_proj") for k in codec.ignored_keys)  # type: ignore[attr-defined]
    assert (codec.f, codec.latent_channels) == (8, 4)
    torch.save({"state_dict": merged_independently(sd)}, tmp_path / "plain.ckpt")
    plain = create_codec("medvae-f8c4", weights=tmp_path / "plain.ckpt", arch=MEDVAE_SMALL_F8C4)
    x = smooth_image()
    z_lora, z_plain = codec.encode(x), plain.encode(x)
    assert z_lora.shape == (2, 4, 8, 8)
    torch.testing.assert_close(z_lora, z_plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(codec.decode(z_lora), plain.decode(z_lora), rtol=1e-4, atol=1e-4)
    # dropping the LoRA deltas gives different latents, so the merge really mattered
    wrapped = {k[: -len(".lora_down.weight")] for k in sd if k.endswith(".lora_down.weight")}
    no_lora = {}
    for k, v in sd.items():
        p, _, leaf = k.rpartition(".")
        if p.endswith(".conv") and p[: -len(".conv")] in wrapped:
            no_lora[f"{p[: -len('.conv')]}.{leaf}"] = v
        elif "lora_" not in k:
            no_lora[k] = v
    torch.save({"state_dict": no_lora}, tmp_path / "base.ckpt")
    base = create_codec("medvae-f8c4", weights=tmp_path / "base.ckpt", arch=MEDVAE_SMALL_F8C4)
    assert rel_err(base.encode(x), z_lora) > 1e-3


def test_medvae_one_channel_variant(tmp_path: Path) -> None:
    sd = ldm_state_dict(ch=32, ch_mult=(1, 2, 2), z=1, in_ch=1, medvae_head=True)
    torch.save({"state_dict": sd}, tmp_path / "vae_4x_1c_2D.ckpt")
    codec = create_codec(
        "medvae-f4c1", weights=tmp_path / "vae_4x_1c_2D.ckpt", arch={"block_out_channels": [32, 64, 64]}
    )
    z = codec.encode(torch.rand(1, 1, 64, 64))
    assert z.shape == (1, 1, 16, 16) and codec.in_channels == 1  # type: ignore[attr-defined]


def test_medvae_wrong_architecture_explains(tmp_path: Path) -> None:
    medvae_f8c4_checkpoint(tmp_path / "v.ckpt")
    with pytest.raises(CodecError, match="arch="):
        create_codec("medvae-f8c4", weights=tmp_path / "v.ckpt")  # default ch=128 does not fit


def _fake_hf_cache(root: Path, repo: str, files: dict[str, Path], revision: str = "0123abcd" * 5) -> None:
    repo_dir = root / "hub" / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / revision
    for rel, src in files.items():
        dst = snap / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hf_home"
    home.mkdir()
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_medvae_found_in_hf_cache(tmp_path: Path, hf_home: Path) -> None:
    medvae_f8c4_checkpoint(tmp_path / "ck.ckpt")
    _fake_hf_cache(hf_home, "stanfordmimi/MedVAE", {"model_weights/vae_8x_4c_2D.ckpt": tmp_path / "ck.ckpt"})
    codec = create_codec("medvae-f8c4", arch=MEDVAE_SMALL_F8C4)
    assert "models--stanfordmimi--MedVAE" in codec.source  # type: ignore[attr-defined]
    direct = create_codec("medvae-f8c4", weights=tmp_path / "ck.ckpt", arch=MEDVAE_SMALL_F8C4)
    x = torch.rand(1, 1, 32, 32)
    assert torch.equal(codec.encode(x), direct.encode(x))
    assert codec.fingerprint == direct.fingerprint


def test_missing_published_weights_list_where_looked(hf_home: Path) -> None:
    with pytest.raises(CodecError) as exc:
        create_codec("medvae-f8c4")
    msg = str(exc.value)
    assert "models--stanfordmimi--MedVAE" in msg and "model_weights/vae_8x_4c_2D.ckpt" in msg
    assert str(hf_home) in msg and "medvae-f8c4.safetensors" in msg
    with pytest.raises(CodecError) as exc:
        create_codec("sd-vae-f8c4")
    assert "stabilityai/sd-vae-ft-mse" in str(exc.value)
    with pytest.raises(CodecError, match="ommer-lab"):
        create_codec("sd-vae-f16c16")


def test_weight_resolver_order(tmp_path: Path, hf_home: Path) -> None:
    """The one resolver: "random" -> no file; a path as given; None -> packaged file, else
    the HF cache; naming a hub location skips the packaged file; a miss lists every place."""
    from latentds.codecs.weights import packaged_path, resolve_weights

    assert resolve_weights("kl-f4c1", "random").path is None
    assert resolve_weights("kl-f4c1", tmp_path / "mine.safetensors").path == str(tmp_path / "mine.safetensors")
    assert resolve_weights("kl-f4c1", None).path == str(packaged_path("kl-f4c1"))
    ck = tmp_path / "f.ckpt"
    ck.write_bytes(b"not read by the resolver")
    _fake_hf_cache(hf_home, "me/mirror", {"w/f.ckpt": ck})
    found = resolve_weights("kl-f4c1", None, hub={"repo_id": "me/mirror", "filename": "w/f.ckpt"})
    assert found.path is not None and "models--me--mirror" in found.path and found.path.endswith("w/f.ckpt")
    assert found.looked[0] == str(packaged_path("kl-f4c1"))
    with pytest.raises(CodecError, match=r"no weights found\. Looked at: .*kl-f4c16\.safetensors.*never downloads"):
        resolve_weights("kl-f4c16", None)
    with pytest.raises(CodecError, match="weights must be a path"):
        resolve_weights("kl-f4c1", 3)  # type: ignore[arg-type]


# ----------------------------------------------------------------- SD-VAE


SD_SMALL_F8 = {"block_out_channels": [32, 64, 64, 64]}


def test_sd_vae_ldm_and_diffusers_layouts_agree(tmp_path: Path) -> None:
    sd = ldm_state_dict(ch=32, ch_mult=(1, 2, 2, 2), z=4, in_ch=3, seed=5)
    torch.save({"state_dict": sd}, tmp_path / "kl-f8.ckpt")
    from_ldm = create_codec("sd-vae-f8c4", weights=tmp_path / "kl-f8.ckpt", arch=SD_SMALL_F8)
    # a full latent-diffusion checkpoint keeps the VAE under first_stage_model.
    from safetensors.torch import save_file

    save_file({f"first_stage_model.{k}": v for k, v in sd.items()}, str(tmp_path / "sd-full.safetensors"))
    from_full = create_codec("sd-vae-f8c4", weights=tmp_path / "sd-full.safetensors", arch=SD_SMALL_F8)
    # diffusers layout written by diffusers itself
    from_ldm.model.save_pretrained(tmp_path / "vae_folder")  # type: ignore[attr-defined]
    from_folder = create_codec("sd-vae-f8c4", weights=tmp_path / "vae_folder")
    # flat diffusers-key file with the deprecated attention names of old uploads
    flat = {}
    for k, v in from_ldm.model.state_dict().items():  # type: ignore[attr-defined]
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            k = k.replace(f".{new}.", f".{old}.")
        flat[k] = v.clone()
    save_file(flat, str(tmp_path / "flat.safetensors"))
    from_flat = create_codec("sd-vae-f8c4", weights=tmp_path / "flat.safetensors", arch=SD_SMALL_F8)

    x = smooth_image(h=48, w=64)
    z = from_ldm.encode(x)
    assert z.shape == (2, 4, 6, 8)
    for other in (from_full, from_folder, from_flat):
        assert torch.equal(other.encode(x), z)
        assert other.fingerprint == from_ldm.fingerprint
    y = from_ldm.decode(z)
    assert y.shape == (2, 1, 48, 64) and 0 <= float(y.min()) and float(y.max()) <= 1


def test_sd_vae_f8_diffusers_folder_in_hf_cache(tmp_path: Path, hf_home: Path) -> None:
    codec = small("kl-f8c4", 8)  # any weights; re-shaped below to a 3-channel model
    sd = ldm_state_dict(ch=32, ch_mult=(1, 2, 2, 2), z=4, in_ch=3, seed=2)
    torch.save({"state_dict": sd}, tmp_path / "a.ckpt")
    codec = create_codec("sd-vae-f8c4", weights=tmp_path / "a.ckpt", arch=SD_SMALL_F8)
    codec.model.save_pretrained(tmp_path / "folder")  # type: ignore[attr-defined]
    files = {n: tmp_path / "folder" / n for n in ("config.json", "diffusion_pytorch_model.safetensors")}
    _fake_hf_cache(hf_home, "stabilityai/sd-vae-ft-mse", files)
    found = create_codec("sd-vae-f8c4")
    x = torch.rand(1, 1, 32, 32)
    assert torch.equal(found.encode(x), codec.encode(x))


def test_sd_vae_f16_level_attention_converts(tmp_path: Path) -> None:
    """CompVis kl-f16 has self-attention inside the deepest level; those keys convert too."""
    sd = ldm_state_dict(ch=32, ch_mult=(1, 1, 2, 2, 2), z=16, in_ch=3, attn_levels=(4,))
    assert "encoder.down.4.attn.1.q.weight" in sd and "decoder.up.4.attn.2.proj_out.weight" in sd
    torch.save({"state_dict": sd}, tmp_path / "kl-f16.ckpt")
    codec = create_codec(
        "sd-vae-f16c16", weights=tmp_path / "kl-f16.ckpt", arch={"block_out_channels": [32, 32, 64, 64, 64]}
    )
    w = codec.model.state_dict()["decoder.up_blocks.0.attentions.2.to_out.0.weight"]  # type: ignore[attr-defined]
    assert torch.equal(w, sd["decoder.up.4.attn.2.proj_out.weight"][:, :, 0, 0])
    assert codec.encode(torch.rand(1, 1, 64, 64)).shape == (1, 16, 4, 4)


# ----------------------------------------------------------------- precision and tiling


def test_bf16_autocast_error_is_bounded() -> None:
    x = smooth_image()
    ref, low = small("kl-f8c4", 8), small("kl-f8c4", 8, autocast="bf16")
    z_ref, z_low = ref.encode(x), low.encode(x)
    assert z_low.dtype == torch.float32
    assert rel_err(z_low, z_ref) < 0.05
    assert rel_err(low.decode(z_ref), ref.decode(z_ref)) < 0.05
    assert torch.equal(low.encode(x), z_low)  # still deterministic


def texture(h: int, w: int, period: int = 16) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img = 0.5 + 0.25 * torch.sin(2 * math.pi * xx / period) + 0.2 * torch.cos(2 * math.pi * yy / period)
    return img[None, None]


def test_blend_tiles_is_exact_for_a_local_operator() -> None:
    """The tiling/blending arithmetic itself adds no error: for an operator that only
    looks inside its own f×f block (avg-pool down, nearest up) tiled == untiled."""
    from latentds.codecs.tiling import blend_tiles

    x = torch.rand(2, 3, 200, 136, generator=torch.Generator().manual_seed(0))
    down = lambda t: F.avg_pool2d(t, 8)
    tiled = blend_tiles(x, down, tile=64, overlap=24, scale_num=1, scale_den=8)
    torch.testing.assert_close(tiled, down(x), rtol=0, atol=1e-6)
    up = lambda t: F.interpolate(t, scale_factor=8, mode="nearest")
    z = down(x)
    torch.testing.assert_close(
        blend_tiles(z, up, tile=8, overlap=3, scale_num=8, scale_den=1), up(z), rtol=0, atol=1e-6
    )


TINY_F8 = {"block_out_channels": [16, 16, 32, 32], "norm_num_groups": 8}


def test_tiled_encode_close_to_untiled_and_deterministic() -> None:
    # Per-tile GroupNorm statistics and per-tile mid-block attention make tiling approximate
    # (docs/codecs.md). With tiles much larger than the overlap the deviation stays small
    # even for a random-init model (measured: latents 0.046 relative, decode MAE 0.043).
    x = texture(256, 256)
    full = create_codec("kl-f8c4", weights="random", arch=TINY_F8)
    tiled = create_codec("kl-f8c4", weights="random", arch=TINY_F8, tile_size=192, tile_overlap=64)
    z_full, z_tiled = full.encode(x), tiled.encode(x)
    assert z_tiled.shape == z_full.shape
    assert rel_err(z_tiled, z_full) < 0.1
    assert torch.equal(tiled.encode(x), z_tiled)
    y_full, y_tiled = full.decode(z_full), tiled.decode(z_full)
    assert y_tiled.shape == y_full.shape and float((y_tiled - y_full).abs().mean()) < 0.08
    assert torch.equal(tiled.decode(z_full), y_tiled)
    # an image no larger than one tile is computed in one pass: identical to untiled
    small_x = x[..., :64, :64]
    assert torch.equal(tiled.encode(small_x), full.encode(small_x))


def test_tiling_options_are_validated() -> None:
    with pytest.raises(CodecError, match="multiple of f=8"):
        small("kl-f8c4", 8, tile_size=60)
    with pytest.raises(CodecError, match="tile_overlap"):
        small("kl-f8c4", 8, tile_size=64, tile_overlap=64)


# ----------------------------------------------------------------- lean forward


@pytest.mark.parametrize("which", ["kl-f8c4", "sd-vae-f16c16"])
def test_lean_forward_matches_diffusers(which: str) -> None:
    """The memory-lean executor (in-place SiLU/add, no pinned references) gives exactly
    diffusers' Encoder/Decoder output in NCHW, and the same up to float rounding in the
    channels_last layout the codec uses."""
    from latentds.codecs.lean import decoder_forward, encoder_forward

    if which == "kl-f8c4":
        codec = small("kl-f8c4", 8)
    else:  # has self-attention inside the deepest level (Attn*Block2D)
        codec = create_codec("sd-vae-f16c16", weights="random", arch={"block_out_channels": [32, 32, 32, 64, 64]})
    assert codec._lean  # type: ignore[attr-defined]
    model = codec.model  # type: ignore[attr-defined]
    cin = model.config["in_channels"]
    x = torch.rand(2, cin, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = torch.randn(2, codec.latent_channels, 64 // codec.f, 64 // codec.f, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref_h, ref_y = model.encoder(x), model.decoder(z)
        assert torch.equal(encoder_forward(model.encoder, [x.clone()], channels_last=False), ref_h)
        assert torch.equal(decoder_forward(model.decoder, [z.clone()], channels_last=False), ref_y)
        torch.testing.assert_close(encoder_forward(model.encoder, [x.clone()]), ref_h, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(decoder_forward(model.decoder, [z.clone()]), ref_y, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed dtypes in the residual add
            ref_bf = model.encoder(x)
            assert torch.equal(encoder_forward(model.encoder, [x.clone()], channels_last=False), ref_bf)
    # and the codec's fallback path (diffusers' forward) agrees with its lean path
    img = torch.rand(1, 1, 64, 64)
    z_lean = codec.encode(img)
    fp_lean = codec.fingerprint
    codec._lean = False  # type: ignore[attr-defined]
    torch.testing.assert_close(codec.encode(img), z_lean, rtol=1e-4, atol=1e-4)
    assert codec.fingerprint != fp_lean  # memory format is part of the fingerprint


def test_memory_format_follows_the_device_and_is_fingerprinted() -> None:
    """channels_last on CPU (unchanged: every cache so far), NCHW on CUDA by default (faster
    there); an explicit memory_format= overrides; the layout used is in the fingerprint,
    because the two round differently; outputs agree to float rounding."""
    from latentds.codecs.kl import channels_last_for

    assert channels_last_for(torch.device("cpu")) and not channels_last_for(torch.device("cuda"))
    default = small("kl-f8c4", 8)
    assert default.preprocessing["memory_format"] == "channels_last"  # type: ignore[attr-defined]
    nchw = create_codec("kl-f8c4", weights="random", arch=default.config, memory_format="contiguous")  # type: ignore[attr-defined]
    cl = create_codec("kl-f8c4", weights="random", arch=default.config, memory_format="channels_last")  # type: ignore[attr-defined]
    assert cl.fingerprint == default.fingerprint != nchw.fingerprint
    x = torch.rand(1, 1, 48, 64, generator=torch.Generator().manual_seed(3))
    z = default.encode(x)
    assert torch.equal(cl.encode(x), z)
    torch.testing.assert_close(nchw.encode(x), z, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(nchw.decode(z), default.decode(z), rtol=1e-4, atol=1e-4)
    with pytest.raises(CodecError, match="memory_format must be"):
        create_codec("kl-f8c4", weights="random", arch=default.config, memory_format="nhwc")  # type: ignore[attr-defined]
