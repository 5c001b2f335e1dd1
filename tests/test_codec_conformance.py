"""Every registered codec passes the conformance suite (latentds.testing.codec_conformance);
fingerprints of the weight-free and shipped codecs are pinned (a changed fingerprint
would orphan every existing cache namespace); the codecs package has no import circle."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest

from latentds.codecs import create_codec, list_codecs, shipped_kl_defaults
from latentds.codecs.weights import packaged_path
from latentds.testing.codec_conformance import check_codec, try_create

CODECS_DIR = Path(__file__).resolve().parent.parent / "latentds" / "codecs"

# Fingerprints as of 2026-11-27 (before the codecs package was split into runtime /
# build / codec file / catalogue / weights / zoo). Weight-free codecs must never change;
# a shipped codec changes only with its weights file (then the sha256 below changes too,
# and both pins are updated together with the new weights).
PINNED_FREE = {
    "bicubic-f16": "7d712898fa7af9a0b627437622eaec086116ace08df09ba7f7438dde4f6a0aa1",
    "bicubic-f4": "310bd02292feba91011991fce1e25aab5075494add490eedc2489823e54940de",
    "bicubic-f8": "67aca78833c3ca77e48e0e4887d2c40ba93be30f11674706fdcf9744c2a0d7c9",
    "s2d-f16c1": "f759e2da705644a006140a30eeb190c6af600a54f1fb2109bea49bf64179f901",
    "s2d-f16c16": "656f71ee3ba7f01201dd4eac47c2b7867b7666d7ef70b72372c25ed46473b597",
    "s2d-f16c256": "2d5b82af5465758b0e6ede1bc24ae0125102077664a514657fa709be7697b30c",
    "s2d-f16c4": "1c6701719692f05c44b4938f67a860a401e439ec33b9f5013dd1683d6c131969",
    "s2d-f16c64": "418b0177687fa462599107f6ced39a614c52d849a03765f1d87cb99f5fc956f1",
    "s2d-f4c1": "b5379c35ce5ac5a1e3a2f04ca21dea4b45afd4a0ce069dcb7de53a34545a8cd4",
    "s2d-f4c16": "d628311439666b6cb57f49c768fbe8ebfc07c386a6bbb13745d988f773548d3a",
    "s2d-f4c4": "a28cfdabb8e9f4f49f806db56534b6c6c8c0653b8bf1561cc7daed0c7b90e5b9",
    "s2d-f8c1": "2219cc81ed7a744d5730a66725302d3c355a1913b99f210815b588be6e067876",
    "s2d-f8c16": "7be74f97a2bc776ecb8d7ee683b834cdf359ea50d5e71c739b90746847e542b1",
    "s2d-f8c4": "b1a3fa7dbe323ba254d9ff0ee611c471440ef815cbe5ca2769ab73d2138b647a",
    "s2d-f8c64": "9d761f1e5602946564bc9ff3bdc2d04ad37db1d791a75b519bbc60a22469f7d2",
}
PINNED_SHIPPED = {  # name -> (sha256 of latentds/weights/<name>.safetensors, fingerprint)
    "kl-f4c1": (
        "c291e907952ce17b02228d0a19bf674d0441b77849bc1d5bda5c600052c8dd3f",
        "868fb720f9c0cbd229166b30cd1149bfa0ccc7d4d8d5f886e6aa6db4b6bce633",
    ),
    "kl-f4c4": (
        "26468b446e327b9ca3801743d662b7b621e45c6a00d10e38d4c12556ab5eb266",
        "d2e6de2448f6b1317f294c66ccd46fe0586014e9c69e7e1e4b7082081cd91562",
    ),
    "kl-f8c1": (
        "8bf0d3861bddbbaab540c72645e956b5b59b39af987892b678852765cb8c62bc",
        "6e97f0fcfdc05d4b68879ec22b9473ff018aef4ee0adc9bf6fde7591b2e21841",
    ),
    "kl-f8c4": (
        "bf2d95cf059cd668a3b975c1f2a187ec5cba41151c8d7a96e45864909989c7ed",
        "f680d151cd783dab912839dc80bddef9d0014a2980c8d9ce9d8bb125350777c3",
    ),
    "kl-f16c1": (
        "13e151b74d2e66f9d86b613776101b6e41c33dffd1d43c2da9cfcdc308d7927b",
        "06fd610fcaa55ab77e77b9a60915f8021d4a4a827902ba02f18011b123c8021c",
    ),
    "kl-f16c16": (
        "29edb0ca34eb9778da63f74c759604c9b9e52b7e19491a5d85dee1b24cd421ae",
        "822a7fcec5fc4c69431f3a4fc0c2005c3232058cb9bb570b234fd1df867cb070",
    ),
}


@pytest.mark.parametrize("name", list_codecs())
def test_registered_codec_conforms(name: str) -> None:
    codec, reason = try_create(name)
    if codec is None:
        pytest.skip(reason)
    report = check_codec(name)
    assert report.fingerprint == codec.fingerprint


def test_random_weight_kl_codecs_conform() -> None:
    # Architectures whose published weights are absent here still run the contract,
    # on small random models (no PSNR floor: untrained), plain and 3-channel, tiled too.
    small = {"block_out_channels": [32, 32, 32], "norm_num_groups": 8}
    check_codec("kl-f4c4", weights="random", arch=small, min_psnr_db=None)
    check_codec("medvae-f4c3", weights="random", arch=small, min_psnr_db=None)
    check_codec("kl-f4c4", weights="random", arch=small, tile_size=32, min_psnr_db=None)


def test_weight_free_fingerprints_are_pinned() -> None:
    names = sorted(n for n in list_codecs() if n.startswith(("bicubic-", "s2d-")))
    assert names == sorted(PINNED_FREE), "a weight-free codec was added or removed: pin its fingerprint"
    for name in names:
        assert create_codec(name).fingerprint == PINNED_FREE[name], f"{name}: fingerprint changed"


def test_shipped_fingerprints_are_pinned() -> None:
    assert shipped_kl_defaults() == sorted(PINNED_SHIPPED)
    for name, (sha, fp) in PINNED_SHIPPED.items():
        got_sha = hashlib.sha256(packaged_path(name).read_bytes()).hexdigest()
        assert got_sha == sha, f"{name}: the shipped weights file changed; re-pin its sha256 and fingerprint"
        assert create_codec(name).fingerprint == fp, f"{name}: same weights, another fingerprint"


def _imports(path: Path) -> set[str]:
    """Every latentds.codecs module imported anywhere in ``path`` (function-level too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("latentds.codecs"):
            mod = node.module
            out |= {f"{mod}.{a.name}" if mod == "latentds.codecs" else mod for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("latentds.codecs")}
    return {m for m in out if (CODECS_DIR / (m.split(".")[-1] + ".py")).is_file()} - {"latentds.codecs"}


def test_codecs_package_has_no_import_circle() -> None:
    graph = {
        f"latentds.codecs.{p.stem}": _imports(p) for p in CODECS_DIR.glob("*.py") if p.stem != "__init__"
    }

    def visit(mod: str, stack: tuple[str, ...]) -> None:
        assert mod not in stack, "import circle: " + " -> ".join((*stack, mod))
        for dep in graph.get(mod, ()):
            visit(dep, (*stack, mod))

    for mod in graph:
        visit(mod, ())


def test_no_codecs_module_over_500_lines() -> None:
    long = {p.name: n for p in CODECS_DIR.glob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"modules over 500 lines: {long}"
