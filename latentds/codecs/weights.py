"""The one weight resolver of the KL codecs: which local file or folder a codec name's
weights come from. Nothing here opens a network connection (docs/design.md: latentds
never downloads weights).

Order for ``create_codec(name)`` without ``weights=``: the weights packaged with
latentds (``latentds/weights/<name>.safetensors``), then the local Hugging Face cache
(the catalogue's sources, or the ``repo_id=`` / ``filename=`` / ``subfolder=`` given).
``weights=PATH`` is used as given; ``weights="random"`` asks for no file at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from latentds.codecs.checkpoints import DIFFUSERS_WEIGHT_NAMES
from latentds.errors import CodecError

__all__ = [
    "PACKAGED_WEIGHTS_DIR",
    "HFSource",
    "Resolved",
    "find_in_hf_cache",
    "hf_cache_dir",
    "hub_sources",
    "packaged_path",
    "resolve_weights",
    "shipped_kl_defaults",
]

PACKAGED_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"

#: The options of ``create_codec`` that steer the Hugging Face cache lookup.
HUB_KWARGS = ("repo_id", "filename", "subfolder", "revision", "cache_dir")


def packaged_path(name: str) -> Path:
    """Where the packaged default weights of codec ``name`` live (whether or not they do)."""
    return PACKAGED_WEIGHTS_DIR / f"{name}.safetensors"


def shipped_kl_defaults() -> list[str]:
    """Names of the KL codecs whose small default weights ship inside the package."""
    return sorted(p.name[: -len(".safetensors")] for p in PACKAGED_WEIGHTS_DIR.glob("kl-*.safetensors"))


@dataclass(frozen=True)
class HFSource:
    """A place in a Hugging Face repository where a checkpoint may be cached.

    ``layout="file"``: ``filename`` is a single checkpoint file. ``layout="diffusers"``:
    the subfolder holding ``config.json`` + ``diffusion_pytorch_model.safetensors``
    (``""`` for the repo root).
    """

    repo_id: str
    filename: str
    layout: str = "file"  # "file" | "diffusers"

    def describe(self) -> str:
        if self.layout == "diffusers":
            sub = f"{self.filename}/" if self.filename else ""
            return f"hf://{self.repo_id}/{sub}{{config.json, {DIFFUSERS_WEIGHT_NAMES[0]}}}"
        return f"hf://{self.repo_id}/{self.filename}"


def hf_cache_dir() -> str:
    """The hub cache directory, resolved from the environment *now*.

    huggingface_hub freezes ``HF_HUB_CACHE`` at import time; reading the variables here
    means a later ``HF_HOME=...`` (tests, notebooks) is honoured.
    """
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return os.path.expanduser(env[var])
    if env.get("HF_HOME"):
        return os.path.join(os.path.expanduser(env["HF_HOME"]), "hub")
    xdg = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


def _cached_file(repo_id: str, filename: str, cache_dir: str, revision: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    # try_to_load_from_cache only reads the cache directory; it never opens a connection.
    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
    return found if isinstance(found, str) and os.path.isfile(found) else None


def find_in_hf_cache(
    sources: list[HFSource], *, cache_dir: str | None = None, revision: str | None = None
) -> tuple[tuple[HFSource, str] | None, list[str]]:
    """First source present in the local cache -> (source, local path). For a diffusers
    source the path is the snapshot folder. Also returns what was looked at, for errors."""
    cache = cache_dir or hf_cache_dir()
    looked: list[str] = []
    for src in sources:
        repo_dir = os.path.join(cache, "models--" + src.repo_id.replace("/", "--"))
        looked.append(f"{src.describe()} (in {repo_dir}, revision {revision or 'main'})")
        if src.layout == "diffusers":
            sub = f"{src.filename}/" if src.filename else ""
            cfg = _cached_file(src.repo_id, f"{sub}config.json", cache, revision)
            if cfg is None:
                continue
            for wname in DIFFUSERS_WEIGHT_NAMES:
                if _cached_file(src.repo_id, f"{sub}{wname}", cache, revision):
                    return (src, os.path.dirname(cfg)), looked
        else:
            path = _cached_file(src.repo_id, src.filename, cache, revision)
            if path is not None:
                return (src, path), looked
    return None, looked


def hub_sources(
    name: str,
    defaults: tuple[HFSource, ...],
    repo_id: str | None,
    filename: str | None,
    subfolder: str | None,
) -> list[HFSource]:
    """The cache places to look at: the catalogue's ``defaults``, or the ones the user named."""
    if repo_id is None and filename is None and subfolder is None:
        return list(defaults)
    if filename is not None:
        repo = repo_id or (defaults[0].repo_id if defaults else None)
        if repo is None:
            raise CodecError(f"codec {name!r}: filename= needs repo_id= (no default repository is known)")
        return [HFSource(repo, filename, "file")]
    if repo_id is None:
        raise CodecError(f"codec {name!r}: subfolder= needs repo_id=")
    # A repo id alone: the codec's default file in that repo if it has one, else a diffusers layout.
    files = [s for s in defaults if s.layout == "file"]
    if subfolder is None and files:
        return [HFSource(repo_id, s.filename, "file") for s in files]
    return [HFSource(repo_id, subfolder or "", "diffusers")]


@dataclass(frozen=True)
class Resolved:
    """Where a codec's weights come from: ``path`` (a file or a diffusers folder), or
    ``None`` for a random initialisation; ``looked`` lists every place tried."""

    path: str | None
    looked: list[str] = field(default_factory=list)


def resolve_weights(
    name: str,
    weights: str | os.PathLike[str] | None,
    *,
    hf_defaults: tuple[HFSource, ...] = (),
    hub: dict[str, str | None] | None = None,
    hint: str = "",
) -> Resolved:
    """Resolve ``weights=`` for codec ``name``: ``"random"``, a local path, or (None) the
    packaged file, then the local Hugging Face cache. Raises a :class:`CodecError` that
    lists every place looked at when nothing is found."""
    hub = {k: (hub or {}).get(k) for k in HUB_KWARGS}
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if weights == "random":
        return Resolved(None, ["random"])
    if isinstance(weights, str):
        return Resolved(weights, [weights])
    if weights is not None:
        raise CodecError(f"codec {name!r}: weights must be a path, 'random' or None, got {type(weights).__name__}")
    looked: list[str] = []
    packaged = packaged_path(name)
    looked.append(str(packaged))
    # Naming a hub location means "that one", not the packaged default.
    if packaged.is_file() and not any(hub.values()):
        return Resolved(str(packaged), looked)
    sources = hub_sources(name, hf_defaults, hub["repo_id"], hub["filename"], hub["subfolder"])
    found, hf_looked = find_in_hf_cache(sources, cache_dir=hub["cache_dir"] or hf_cache_dir(), revision=hub["revision"])
    looked += hf_looked
    if found is not None:
        return Resolved(found[1], looked)
    hint = hint or (
        f"no default weights are shipped for {name} (shipped: {', '.join(shipped_kl_defaults()) or 'none'}; "
        "train one with `latentds train-vae`); pass weights=PATH "
        "(a file from save_kl_codec or a trained checkpoint), or weights='random' for an untrained model"
    )
    raise CodecError(
        f"codec {name!r}: no weights found. Looked at: " + "; ".join(looked) + f". {hint}. "
        "latentds never downloads weights."
    )
