"""``LatentDataset``: torchvision's ``ImageFolder``, but items are cached codec latents.

Discovery, ``classes``, ``class_to_idx``, ``samples``, ``targets`` and errors are ImageFolder's.
``dataset[i]`` returns ``(latent C×h×w float tensor, target)``. The first access to a sample
reads and preprocesses the source, encodes it, and writes one immutable cache object; every
later access (any process, any DataLoader worker) reads that object and never the source.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torchvision.datasets import DatasetFolder
from tqdm.auto import tqdm

from . import batch_read, discovery
from .cache import Entry, LatentCache, namespace_id, sample_key
from .codecs import Codec, create_codec
from .errors import CacheError, LatentdsError
from .preprocess import Preprocess
from .sources import legacy_key, read_local, redact_reason, root_identity
from .storage import Location
from .store import CompactReport, ShardedStore

__all__ = ["FillReport", "Failure", "LatentDataset", "fit_image"]

Fit = Literal["pad", "resize"]


@dataclass
class Failure:
    """A source that could not be encoded: recorded by bulk work, never silently skipped."""

    path: str
    error_type: str
    message: str


@dataclass
class FillReport:
    encoded: int = 0
    cached: int = 0
    failures: list[Failure] = field(default_factory=list)


def fit_image(img: np.ndarray, image_size: tuple[int, int] | None, fit: Fit) -> np.ndarray:
    """Bring a preprocessed image to a fixed ``(H, W)`` so latents have one shape.

    ``pad`` keeps the aspect ratio: scale to fit inside, then pad bottom/right with 0 (the
    background is black after MONOCHROME1 inversion). ``resize`` stretches to ``(H, W)``.
    """
    if image_size is None:
        return img
    th, tw = image_size
    t = torch.from_numpy(np.ascontiguousarray(img))[None, None]
    if fit == "resize":
        out = torch.nn.functional.interpolate(t, size=(th, tw), mode="bilinear", antialias=True, align_corners=False)
        return out[0, 0].clamp_(0, 1).numpy()
    if fit != "pad":
        raise ValueError(f"fit must be 'pad' or 'resize', not {fit!r}")
    h, w = img.shape
    scale = min(th / h, tw / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        t = torch.nn.functional.interpolate(t, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    canvas = torch.zeros((th, tw), dtype=torch.float32)
    canvas[:nh, :nw] = t[0, 0].clamp(0, 1)
    return canvas.numpy()


class LatentDataset(DatasetFolder):
    """A drop-in for ``torchvision.datasets.ImageFolder`` that yields cached latents.

    Args (ImageFolder's, same order):
        root: folder or fsspec URL with one sub-folder per class.
        transform: applied to the latent tensor (``C×h×w``).
        target_transform: applied to the target.
        loader: optional ``loader(path) -> 2-D array/PIL image`` replacing latentds' DICOM/PNG
            preprocessing; its qualified name enters the cache fingerprint.
        is_valid_file, allow_empty: as in ImageFolder.

    Keyword-only:
        codec: a registered codec name (``latentds.list_codecs()``), a weights path, or a ``Codec``.
        cache: local folder or fsspec URL where latents are stored.
        storage_options: fsspec options for ``root`` and ``cache``.
        cache_storage_options: fsspec options for ``cache`` when they differ from ``root``'s.
        crop_roi, size: preprocessing (ROI crop; longest side after resize).
        image_size, fit: fixed ``(H, W)`` images -> fixed-size latents that default collation batches.
        device, codec_kwargs: where and how the codec is created (by name) in each process.
        extensions: accepted file extensions (default: ImageFolder's plus ``.dcm``/``.dicom``).
        sample_posterior: draw ``mean + std * N(0, 1)`` at load time (augmentation); default
            returns the stored posterior mean. Codecs without a std (bicubic) return the mean.
        normalize: standardise latents per channel with the statistics committed in the manifest
            (``compact()`` computes them); raises ``CacheError`` if none were committed yet.
        local_cache, local_cache_bytes: an optional bounded local read-through cache (directory,
            size) of sample bytes read from a remote store, for repeated epochs.
        source_id: which tree this is, in every sample key (default: the root's resolved path
            or ``protocol://bucket/prefix``), so several trees can share one cache without
            ever serving each other's latents. Give a stable name (and the same one to
            ``latentds.encode``) when the tree is mounted at different paths on different nodes.
        max_pixels: refuse a source whose declared size exceeds this many pixels before decoding
            it (default ``LATENTDS_MAX_PIXELS`` or 8192 x 8192); not part of the fingerprint.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[torch.Tensor], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        loader: Callable[[str], Any] | None = None,
        is_valid_file: Callable[[str], bool] | None = None,
        allow_empty: bool = False,
        *,
        codec: str | Codec,
        cache: str | os.PathLike[str],
        storage_options: dict[str, Any] | None = None,
        cache_storage_options: dict[str, Any] | None = None,
        crop_roi: bool = True,
        size: int | None = None,
        image_size: tuple[int, int] | None = None,
        fit: Fit = "pad",
        device: str | torch.device = "cpu",
        codec_kwargs: dict[str, Any] | None = None,
        extensions: Sequence[str] | None = None,
        sample_posterior: bool = False,
        normalize: bool = False,
        local_cache: str | os.PathLike[str] | None = None,
        local_cache_bytes: int = 4 << 30,
        source_id: str | None = None,
        max_pixels: int | None = None,
    ) -> None:
        self.storage_options = dict(storage_options or {})
        self._custom_loader = loader
        self.preprocess = Preprocess(crop_roi=crop_roi, size=size, max_pixels=max_pixels)
        self.image_size = tuple(image_size) if image_size is not None else None
        self.fit: Fit = fit
        if fit not in ("pad", "resize"):
            raise ValueError(f"fit must be 'pad' or 'resize', not {fit!r}")
        # Like ImageFolder: extensions only when no is_valid_file; both given is DatasetFolder's ValueError.
        if is_valid_file is None:
            exts: tuple[str, ...] | None = tuple(extensions or discovery.DEFAULT_EXTENSIONS)
        else:
            exts = tuple(extensions) if extensions is not None else None
        super().__init__(
            os.fspath(root), loader or _never_called, exts, transform=transform,
            target_transform=target_transform, is_valid_file=is_valid_file, allow_empty=allow_empty,
        )
        self.imgs = self.samples
        self._source = Location(self.root, self.storage_options)
        self._root_id = str(source_id) if source_id is not None else root_identity(self.root, self.storage_options)

        self._codec_kwargs = dict(codec_kwargs or {})
        self._device = str(device)
        self._codec_given = isinstance(codec, Codec)
        self._codec: Codec | None = codec if isinstance(codec, Codec) else None
        self._codec_name = codec.name if isinstance(codec, Codec) else str(codec)
        fingerprint = self.codec.fingerprint
        preprocessing = self._preprocessing_spec()
        self._cache = LatentCache(
            os.fspath(cache), namespace_id(fingerprint, preprocessing),
            storage_options=cache_storage_options if cache_storage_options is not None else self.storage_options,
        )
        self._cache_info = {
            "codec": self._codec_name, "codec_fingerprint": fingerprint, "f": self.codec.f,
            "latent_channels": self.codec.latent_channels, "preprocessing": preprocessing,
            "classes": list(self.classes),  # names of the targets, for exports and stock readers
        }
        self._info_written = False
        self._sharded = ShardedStore(self._cache, local_cache=local_cache, local_cache_bytes=local_cache_bytes)
        self.sample_posterior = bool(sample_posterior)
        self.normalize = bool(normalize)
        self._norm: tuple[torch.Tensor, torch.Tensor] | None = None
        self._key_memo: dict[int, tuple[int, int, str]] = {}
        # Warm-path read plan: dataset index -> row of the manifest generation ``_rows_of``
        # (-2: not resolved yet in this process, -1: not committed there).
        self._rows: np.ndarray | None = None
        self._rows_of: Any = None

    # -- ImageFolder discovery, also for fsspec URLs -------------------------------------------
    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return discovery.find_classes(directory, getattr(self, "storage_options", None))

    def make_dataset(self, directory: str, class_to_idx: dict[str, int], extensions: Any = None,
                     is_valid_file: Callable[[str], bool] | None = None, allow_empty: bool = False
                     ) -> list[tuple[str, int]]:
        return discovery.make_dataset(directory, class_to_idx, extensions, is_valid_file, allow_empty,
                                      getattr(self, "storage_options", None))

    # -- codec, created lazily in each process -------------------------------------------------
    @property
    def codec(self) -> Codec:
        if self._codec is None:
            self._codec = create_codec(self._codec_name, device=self._device, **self._codec_kwargs)
        return self._codec

    def __getstate__(self) -> dict[str, Any]:
        # A codec created from its name is rebuilt in each worker process rather than pickled.
        state = self.__dict__.copy()
        if not self._codec_given:
            state["_codec"] = None
        # the store reloads its manifest in the new process, so rows are resolved there again
        state.update(_rows=None, _rows_of=None)
        return state

    @property
    def cache(self) -> LatentCache:
        return self._cache

    @property
    def store(self) -> ShardedStore:
        return self._sharded

    @property
    def namespace(self) -> str:
        return self._cache.namespace

    @property
    def latent_channels(self) -> int:
        """C of the codec: the input channels of a model trained on these latents (kl-f8c4 -> 4)."""
        return int(self.codec.latent_channels)

    def _preprocessing_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"preprocess": self.preprocess.to_dict(), "image_size": self.image_size,
                                "fit": self.fit if self.image_size else None}
        if self._custom_loader is not None:
            ld = self._custom_loader
            spec["loader"] = f"{getattr(ld, '__module__', '?')}.{getattr(ld, '__qualname__', repr(ld))}"
        return spec

    # -- identity ------------------------------------------------------------------------------
    def relative_path(self, index: int) -> str:
        path = self.samples[index][0]
        if discovery.is_remote(path):
            fs = self._source.fs
            path, root = fs._strip_protocol(path), self._source.path
        else:
            path, root = os.path.abspath(discovery._local(path)), os.path.abspath(discovery._local(self.root))
        rel = os.path.relpath(path, root) if not discovery.is_remote(self.root) else path[len(root):]
        return rel.replace(os.sep, "/").lstrip("/")

    @property
    def source_id(self) -> str:
        """The tree's identity in every sample key (see ``source_id`` in the class docs)."""
        return self._root_id

    def source_identity(self, index: int) -> dict[str, Any]:
        """What decides a hit: the tree (``root``), relative path, size, and mtime (local) or
        ETag (object stores)."""
        path = self.samples[index][0]
        rel = self.relative_path(index)
        if not discovery.is_remote(path):
            st = os.stat(discovery._local(path))
            return {"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "root": self._root_id}
        info = self._source.fs.info(path)
        tag = next((info[k] for k in ("ETag", "etag", "mtime", "LastModified", "created") if info.get(k)), None)
        return {"path": rel, "size": int(info.get("size", 0)), "etag": str(tag), "root": self._root_id}

    def key(self, index: int) -> str:
        path = self.samples[index][0]
        if discovery.is_remote(path):
            return sample_key(self.source_identity(index))
        # Warm-path shortcut: the identity is (relpath, size, mtime); while the stat is unchanged
        # the key is too, so skip re-serialising and re-hashing it on every access.
        st = os.stat(discovery._local(path))
        memo = self._key_memo.get(index)
        if memo is not None and memo[0] == st.st_size and memo[1] == st.st_mtime_ns:
            return memo[2]
        k = sample_key({"path": self.relative_path(index), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                        "root": self._root_id})
        self._key_memo[index] = (st.st_size, st.st_mtime_ns, k)
        return k

    # -- encoding ------------------------------------------------------------------------------
    def load_source(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Read and preprocess one source image; returns the image and source metadata."""
        data, digest = self._read_source(index)
        return self._prepare(index, data, digest)

    def _read_source(self, index: int) -> tuple[bytes, str]:
        path = self.samples[index][0]
        if discovery.is_remote(path):
            # one GET of the whole object; cat_file also avoids buffered-file quirks of some stores
            data = self._source.fs.cat_file(path)
        else:
            data = read_local(discovery._local(path))  # a FIFO/device is this file's error, not a hang
        return data, hashlib.sha256(data).hexdigest()

    def _prepare(self, index: int, data: bytes, digest: str) -> tuple[np.ndarray, dict[str, Any]]:
        path = self.samples[index][0]
        rel = self.relative_path(index)
        if self._custom_loader is not None:
            img = _to_float_image(self._custom_loader(path), path)
        else:
            img = self.preprocess(io.BytesIO(data), name=path)
        content_shape = list(img.shape)
        img = fit_image(img, self.image_size, self.fit)
        return img, {"content_sha256": digest, "content_shape": content_shape, "image_shape": list(img.shape),
                     "relpath_hash": hashlib.sha256(rel.encode()).hexdigest()[:16]}

    def _store(self, index: int, key: str, mean: torch.Tensor, std: torch.Tensor, src_meta: dict[str, Any]) -> Entry:
        if not self._info_written:
            self._cache.write_info(self._cache_info)
            self._info_written = True
        m = mean.detach().to("cpu", torch.float32).contiguous().numpy()
        s: np.ndarray | None = std.detach().to("cpu", torch.float32).contiguous().numpy()
        if not s.any():  # a deterministic codec (bicubic): no posterior spread worth storing
            s = None
        meta = {"key": key, "target": int(self.targets[index]), **src_meta}
        self._cache.put(key, m, s, meta)
        return Entry(m, s, meta)

    def _encode_one(self, index: int, key: str) -> Entry:
        data, digest = self._read_source(index)
        adopted = self._adopt_legacy(index, key, digest)
        if adopted is not None:
            return adopted
        img, src_meta = self._prepare(index, data, digest)
        x = torch.from_numpy(img)[None, None].to(self.codec.device)
        mean, std = self.codec.encode_dist(x)
        return self._store(index, key, mean[0], std[0], src_meta)

    def _adopt_legacy(self, index: int, key: str, digest: str) -> Entry | None:
        """A miss may be a sample of a cache written before the source root entered the key
        (see :func:`latentds.sources.legacy_key`). Its old entry is taken, with no encoding, only
        if it was made from these very bytes (stored content sha256 == the source's): an old
        entry of another tree's file with the same relative path, size and mtime is never served.
        The latent is copied to a staging object under the new key, so the next compaction
        commits it and later reads are ordinary hits."""
        old = legacy_key({k: v for k, v in self.source_identity(index).items()})
        try:
            hit = self._sharded.get(old)
            if hit is None:
                return None
            meta = self._sharded.read_meta(old) if "content_sha256" not in hit.meta else hit.meta
        except LatentdsError:
            return None  # an unreadable old entry is no reason not to encode afresh
        if meta.get("content_sha256") != digest:
            return None
        meta = dict(meta, key=key, target=int(self.targets[index]))
        for k in ("sha256", "shape", "dtype", "shard"):  # recomputed by encode_entry
            meta.pop(k, None)
        if not self._info_written:
            self._cache.write_info(self._cache_info)
            self._info_written = True
        self._cache.put(key, hit.mean, hit.std, meta)
        return Entry(hit.mean, hit.std, meta)

    def entry(self, index: int) -> Entry:
        """The cache entry of sample ``index``, encoding it on a miss."""
        key = self.key(index)
        hit = self._sharded.get(key)
        return hit if hit is not None else self._encode_one(index, key)

    def _normalizer(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._norm is None:
            m = self._sharded.manifest() or self._sharded.refresh()
            st = m.stats if m is not None else {}
            if not st.get("mean"):
                raise CacheError(f"{self._sharded.manifests.pointer_path}: normalize=True needs latent statistics; "
                                 f"none are committed yet; run dataset.compact() or `latentds compact CACHE`")
            mean = torch.tensor(st["mean"], dtype=torch.float32)
            std = torch.tensor(st["std"], dtype=torch.float32).clamp_min(1e-12)
            self._norm = (mean, std)
        return self._norm

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Posterior mean and std (``None`` for deterministic codecs) of sample ``index``,
        encoding it on a miss. Arrays may be read-only views of the bytes read.

        Warm path: a sample's identity (key) is resolved against the committed manifest once
        per process and generation, then ``dataset[i]`` is one planned ranged read
        (:meth:`ShardedStore.read_planned`): no ``stat``/``HEAD`` of the source, no key hashing,
        no lookup. Staleness: a source file changed *after* its sample was resolved in this
        process is noticed when a new generation is loaded or on :meth:`refresh` (or by a new
        dataset), as ImageFolder sees the files of its construction-time scan. Samples not yet
        committed (staging tier, misses) check the source identity on every access."""
        store = self._sharded
        m = store.manifest()
        if m is not None:
            rows = self._rows
            if rows is None or self._rows_of is not m:
                rows = self._rows = np.full(len(self.samples), -2, np.int64)
                self._rows_of = m
            row = int(rows[index])
            if row == -2:
                row = m.find(self.key(index))
                rows[index] = row
            if row >= 0:
                return store.read_planned(m, row)
        e = self.entry(index)
        return e.mean, e.std

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        target = self.targets[index]
        mean, std = self.arrays(index)
        # arrays over read-only bytes are copied into the tensor (which the caller may modify)
        latent = torch.from_numpy(mean if mean.flags.writeable else mean.copy())
        if self.sample_posterior and std is not None:
            latent = latent + torch.from_numpy(np.array(std)) * torch.randn_like(latent)
        if self.normalize:
            mean, std = self._normalizer()
            shape = (-1,) + (1,) * (latent.ndim - 1)
            latent = (latent - mean.view(shape)) / std.view(shape)
        if self.transform is not None:
            latent = self.transform(latent)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return latent, target

    #: coalesce a batch's byte ranges this close into one read (None: latentds.batch_read's defaults)
    batch_gap_bytes: int | None = None

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, Any]]:
        """A whole batch, as ``DataLoader`` asks for it: equal to ``[self[i] for i in indices]``,
        read in coalesced ranges per shard with one concurrent request set (see
        :mod:`latentds.batch_read`); a ``transform`` keeps the per-sample path."""
        return batch_read.getitems(self, indices)

    def decode(self, index: int) -> torch.Tensor:
        """The codec's reconstruction of sample ``index`` (``1×H×W`` in [0, 1]), for viewing."""
        e = self.entry(index)
        if "image_shape" not in e.meta:  # a shard hit carries only key/target: fetch the full meta
            e = Entry(e.mean, e.std, self._sharded.read_meta(e.meta["key"]))
        z = torch.tensor(e.mean)[None].to(self.codec.device)
        with torch.inference_mode():
            rec = self.codec.decode(z)[0].float().cpu()
        h, w = e.meta.get("image_shape", rec.shape[-2:])
        if self.image_size is not None and self.fit == "pad":
            ch, cw = e.meta["content_shape"]
            scale = min(self.image_size[0] / ch, self.image_size[1] / cw)
            h, w = max(1, round(ch * scale)), max(1, round(cw * scale))
        return rec[:, :h, :w].clone()

    def fill(self, *, batch_size: int = 8, progress: bool = True, indices: Sequence[int] | None = None) -> FillReport:
        """Encode every missing sample (batched by image shape); failures are recorded, not raised."""
        report = FillReport()
        pending: dict[tuple[int, ...], list[tuple[int, str, np.ndarray, dict[str, Any]]]] = {}
        todo = range(len(self)) if indices is None else indices

        def flush(shape: tuple[int, ...]) -> None:
            group = pending.pop(shape, [])
            if not group:
                return
            x = torch.from_numpy(np.stack([g[2] for g in group]))[:, None].to(self.codec.device)
            mean, std = self.codec.encode_dist(x)
            for j, (idx, key, _, meta) in enumerate(group):
                self._store(idx, key, mean[j], std[j], meta)
            report.encoded += len(group)

        for index in tqdm(todo, desc="encoding", unit="img", disable=not progress):
            try:
                key = self.key(index)
                if self._sharded.has(key):
                    report.cached += 1
                    continue
                data, digest = self._read_source(index)
                if self._adopt_legacy(index, key, digest) is not None:
                    report.cached += 1
                    continue
                img, meta = self._prepare(index, data, digest)
            except (LatentdsError, OSError) as exc:
                report.failures.append(Failure(self.samples[index][0], type(exc).__name__, str(exc)))
                self._record_failure(index, exc)
                continue
            pending.setdefault(img.shape, []).append((index, key, img, meta))
            if len(pending[img.shape]) >= batch_size:
                flush(img.shape)
        for shape in list(pending):
            flush(shape)
        return report

    def _record_failure(self, index: int, exc: BaseException) -> None:
        # The cache holds no source paths (PHI): a hash of the relative path and the reason with
        # the path blanked out. The in-memory FillReport keeps the real path for the user.
        path, rel = self.samples[index][0], self.relative_path(index)
        reason = redact_reason(exc, path, rel)  # structural: an OSError's file name is never formatted in
        try:
            self._sharded.record_failure(hashlib.sha256(rel.encode()).hexdigest()[:16], type(exc).__name__, reason)
        except LatentdsError:
            pass  # the failure itself is already reported to the caller; the record is best effort

    def compact(self, **kwargs: Any) -> CompactReport:
        """Pack staging objects into immutable shards and commit a new manifest generation
        (see :meth:`latentds.store.ShardedStore.compact`); safe while others read and write."""
        report = self._sharded.compact(**kwargs)
        self._norm = None
        self._rows = self._rows_of = None
        return report

    def refresh(self) -> None:
        """Pick up a manifest generation committed by another process since this one looked,
        and re-check every source's identity (size, mtime / ETag) on its next access."""
        self._sharded.refresh()
        self._norm = None
        self._rows = self._rows_of = None

    def extra_repr(self) -> str:
        return f"Codec: {self._codec_name}\nCache: {self._cache.location.url}"


def _never_called(path: str) -> Any:  # DatasetFolder requires a loader; ours is the codec pipeline
    raise AssertionError("LatentDataset does not load images through DatasetFolder.loader")


def _to_float_image(obj: Any, name: str) -> np.ndarray:
    """Accept what a user loader returns (PIL image, array, tensor) as a 2-D float image in [0, 1]."""
    from PIL import Image

    if isinstance(obj, Image.Image):
        if obj.mode not in ("L", "I", "I;16", "F"):
            obj = obj.convert("L")
        arr = np.asarray(obj)
        scale = 255.0 if arr.dtype == np.uint8 else (65535.0 if arr.dtype.kind in "iu" else 1.0)
        arr = arr.astype(np.float32) / scale
    else:
        arr = np.asarray(obj.numpy() if isinstance(obj, torch.Tensor) else obj, dtype=np.float32)
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise LatentdsError(f"{name}: custom loader returned shape {arr.shape}, expected a 2-D grayscale image")
    return np.ascontiguousarray(np.clip(arr, 0.0, 1.0), dtype=np.float32)
