"""``LatentDataset``: torchvision's ``ImageFolder``, but items are cached codec latents.

Discovery, ``classes``, ``class_to_idx``, ``samples``, ``targets`` and errors are ImageFolder's.
``dataset[i]`` returns ``(latent C×h×w float tensor, target)``. The first access to a sample
reads and preprocesses the source, encodes it, and writes one immutable cache object; every
later access (any process, any DataLoader worker) reads that object and never the source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torchvision.datasets import DatasetFolder
from tqdm.auto import tqdm

from . import batch_read, discovery
from .codecs import Codec, create_codec
from .errors import CacheError, ConfigError, LatentdsError
from .preprocess import Preprocess
from .identity import Identities, content_matches, stored_reason
from .identity import resolve as resolve_identity
from .sample.encode import Failure, ShapeBatches, adopted_entry, make_entry
from .sample.image import Fit, Pipeline, fit_image
from .sample.source import identity, legacy_key, read_bytes, relative_path, root_identity
from .sample.views import apply_view, choose_view, view_key, view_of
from .store import CompactReport, ShardedStore
from .store.entries import Entry, LatentCache, namespace_id, sample_key
from .store.fsio import Location
from .store.plan import ReadPlan

__all__ = ["FillReport", "Failure", "LatentDataset", "fit_image"]


@dataclass
class FillReport:
    encoded: int = 0
    cached: int = 0
    failures: list[Failure] = field(default_factory=list)


class _Keys(Sequence[str]):
    """The dataset's sample keys as the store's read plan sees them: computed on first use
    (an unread sample costs no ``stat``/``HEAD``)."""

    def __init__(self, ds: "LatentDataset") -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds.samples)

    def __getitem__(self, i: Any) -> Any:
        return view_key(self.ds.key(int(i)), self.ds.view_index(int(i)))


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
        views: cache K augmented views of each image (shifts below one latent pixel, flips, turns,
            applied before encoding) and serve one per epoch (:meth:`set_epoch`); docs/views.md.
            ``views=1`` (default) is the plain cache, and view 0 of any K.
        Identity key: ``storage_options={"identity_key": ...}`` or ``LATENTDS_IDENTITY_KEY`` (latentds.identity).
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
        views: int = 1,
    ) -> None:
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ConfigError(f"views must be a positive int (1: no augmented views), not {views!r}")
        self.views = views
        self.epoch = 0
        # the identity key (latentds.identity: keyed content/path ids) is never stored, nor handed to fsspec
        src_key, self.storage_options = resolve_identity(storage_options)
        if cache_storage_options is not None:
            cache_key, cache_storage_options = resolve_identity(cache_storage_options)
            src_key = cache_key or src_key
        self.identity_key = src_key
        self._ids = Identities(src_key)
        self._custom_loader = loader
        self.preprocess = Preprocess(crop_roi=crop_roi, size=size, max_pixels=max_pixels)
        self.pipeline = Pipeline(self.preprocess, image_size, fit, loader)  # checks fit
        self.image_size = self.pipeline.image_size
        self.fit: Fit = fit
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
        preprocessing = self.pipeline.spec()
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
        self._last_identity: tuple[int, dict[str, Any]] | None = None
        # The warm path is the store's: which manifest row holds each sample is its read plan's
        # business (resolved once per process and generation); the dataset keeps no rows.
        self._plan: ReadPlan = self._sharded.plan(_Keys(self))

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
        return state  # the plan pickles without rows: a new process resolves its own

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

    @property
    def plan(self) -> ReadPlan:
        """The store's read plan over this dataset's samples (``store.read(plan, i)``)."""
        return self._plan

    # -- identity ------------------------------------------------------------------------------
    def relative_path(self, index: int) -> str:
        return relative_path(self.samples[index][0], self.root, self._source)

    @property
    def source_id(self) -> str:
        """The tree's identity in every sample key (see ``source_id`` in the class docs)."""
        return self._root_id

    def source_identity(self, index: int) -> dict[str, Any]:
        """What decides a hit: the tree (``root``), relative path, size, and mtime (local) or
        ETag (object stores)."""
        ident = identity(self.samples[index][0], self.relative_path(index), self._root_id, loc=self._source)
        self._last_identity = (index, ident)
        return ident

    def _identity_now(self, index: int) -> dict[str, Any]:
        """The identity computed by this access (a miss: key, then legacy key and encoding, all
        from one ``stat``/``HEAD``), else a fresh one. Callers reset ``_last_identity`` at the
        start of an access, so an old identity is never taken for a changed file."""
        last = self._last_identity
        return last[1] if last is not None and last[0] == index else self.source_identity(index)

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
        k = sample_key(self.source_identity(index))
        self._key_memo[index] = (st.st_size, st.st_mtime_ns, k)
        return k

    # -- encoding (latentds.sample: the same steps as the Dask bulk task) -----------------------
    def load_source(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Read and preprocess one source image; returns the image and source metadata."""
        data, digest = self._read_source(index)
        return self._prepare(index, data, digest)

    def _read_source(self, index: int) -> tuple[bytes, str]:
        return read_bytes(self.samples[index][0], loc=self._source)

    def _prepare(self, index: int, data: bytes, digest: str) -> tuple[np.ndarray, dict[str, Any]]:
        return self.pipeline.prepare(data, digest, self.samples[index][0], self.relative_path(index), self._ids,
                                     self._root_id)

    def _put(self, e: Entry) -> Entry:
        if not self._info_written:
            self._cache.write_info(self._cache_info)
            self._info_written = True
        self._cache.put(e.meta["key"], e.mean, e.std, e.meta)
        return e

    def _put_encoded(self, done: Any) -> list[Entry]:
        """Store what :class:`ShapeBatches` returned: ``((index, key, source meta), mean, std)``."""
        return [self._put(make_entry(key, self.targets[idx], m, s, meta)) for (idx, key, meta), m, s in done]

    def _encode_one(self, index: int, key: str, v: int = 0) -> Entry:
        data, digest = self._read_source(index)
        if v == 0:
            adopted = self._adopt_legacy(index, key, digest)
            if adopted is not None:
                return adopted
        img, src_meta = self._prepare(index, data, digest)
        img, src_meta = self._view(index, img, src_meta, v)
        (e,) = self._put_encoded(ShapeBatches(self.codec, 1).add(img, (index, key, src_meta)))
        return e

    # -- augmented views (latentds.sample.views) -----------------------------------------------
    def view_index(self, index: int) -> int:
        """The view sample ``index`` serves in the current epoch (0 when ``views=1``)."""
        return choose_view(index, self.epoch, self.views)

    def set_epoch(self, epoch: int) -> None:
        """Serve the views of ``epoch`` (with ``views=K``: one of K cached views per sample,
        chosen deterministically per (sample, epoch)). Call it at the start of every epoch."""
        self.epoch = int(epoch)
        if self.views > 1:  # other views, other keys: resolved again
            self._plan.forget()

    def _view(self, index: int, img: np.ndarray, meta: dict[str, Any], v: int) -> tuple[np.ndarray, dict[str, Any]]:
        if v == 0:
            return img, meta
        view = view_of(self._base_key(index), v, int(self.codec.f), img.shape[0] == img.shape[1])
        return apply_view(img, view), {**meta, **view.as_meta()}

    def _base_key(self, index: int) -> str:
        last = self._last_identity
        return sample_key(last[1]) if last is not None and last[0] == index else self.key(index)

    def _adopt_legacy(self, index: int, key: str, digest: str) -> Entry | None:
        """A miss may be a sample of a cache written before the source root entered the key
        (see :func:`latentds.sample.source.legacy_key`). Its old entry is taken, with no encoding,
        only if it was made from these very bytes (stored content sha256 == the source's): an old
        entry of another tree's file with the same relative path, size and mtime is never served.
        The latent is copied to a staging object under the new key, so the next compaction
        commits it and later reads are ordinary hits."""
        old = legacy_key(self._identity_now(index))
        try:
            hit = self._sharded.get(old)
            if hit is None:
                return None
            meta = self._sharded.read_meta(old) if "content_sha256" not in hit.meta else hit.meta
        except LatentdsError:
            return None  # an unreadable old entry is no reason not to encode afresh
        if content_matches(str(meta.get("content_sha256") or ""), digest, self.identity_key) is not True:
            return None
        return self._put(adopted_entry(key, self.targets[index], hit.mean, hit.std, meta))

    def entry(self, index: int) -> Entry:
        """The cache entry of sample ``index`` (its current view), encoding it on a miss."""
        self._last_identity = None
        v = self.view_index(index)
        return self._entry(index, view_key(self.key(index), v), v)

    def _entry(self, index: int, key: str, v: int = 0) -> Entry:
        hit = self._sharded.get(key)
        return hit if hit is not None else self._encode_one(index, key, v)

    def _normalizer(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._norm is None:
            m = self._sharded.manifest() or self._sharded.refresh()
            st = m.stats if m is not None else {}
            if not st.get("mean"):
                raise CacheError(f"{self._sharded.manifests.pointer_path}: normalize=True needs latent statistics; "
                                 f"none are committed yet: encode, then commit, the training set first: "
                                 f"dataset.fill() then dataset.compact() (or `latentds encode SRC ...` then "
                                 f"`latentds compact CACHE`)")
            mean = torch.tensor(st["mean"], dtype=torch.float32)
            std = torch.tensor(st["std"], dtype=torch.float32).clamp_min(1e-12)
            self._norm = (mean, std)
        return self._norm

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Posterior mean and std (``None`` for deterministic codecs) of sample ``index``,
        encoding it on a miss. Arrays may be read-only views of the bytes read.

        Warm path: a sample's identity (key) is resolved against the committed manifest once
        per process and generation, then ``dataset[i]`` is one planned ranged read
        (:meth:`ShardedStore.read` of the dataset's :attr:`plan`): no ``stat``/``HEAD`` of the source, no key hashing,
        no lookup. Staleness: a source file changed *after* its sample was resolved in this
        process is noticed when a new generation is loaded or on :meth:`refresh` (or by a new
        dataset), as ImageFolder sees the files of its construction-time scan. Samples not yet
        committed (staging tier, misses) check the source identity on every access."""
        self._last_identity = None
        got = self._sharded.read(self._plan, index)  # key computed and looked up once per generation
        if got is not None:
            return got
        # a miss: the key the plan just computed (one stat / HEAD), else a fresh one
        v = self.view_index(index)
        e = self._entry(index, view_key(self._base_key(index), v), v)
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
        if self.views > 1:  # the batch reader plans base keys; views take the per-sample path
            return [self[i] for i in indices]
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
        """Encode every missing sample (batched by image shape), with ``views=K`` every view of
        each; failures are recorded, not raised. ``encoded``/``cached`` count cache entries."""
        report = FillReport()
        batches: ShapeBatches = ShapeBatches(self.codec, batch_size)
        todo = range(len(self)) if indices is None else indices
        for index in tqdm(todo, desc="encoding", unit="img", disable=not progress):
            self._last_identity = None
            try:
                key = self.key(index)
                missing = [v for v in range(self.views) if not self._sharded.has(view_key(key, v))]
                report.cached += self.views - len(missing)
                if not missing:
                    continue
                data, digest = self._read_source(index)
                if missing[0] == 0 and self._adopt_legacy(index, key, digest) is not None:
                    report.cached += 1
                    missing = missing[1:]
                if not missing:
                    continue
                img, meta = self._prepare(index, data, digest)
            except (LatentdsError, OSError) as exc:
                report.failures.append(Failure(self.samples[index][0], type(exc).__name__, str(exc)))
                self._record_failure(index, exc)
                continue
            for v in missing:
                vkey = view_key(key, v)
                vimg, vmeta = self._view(index, img, meta, v)
                report.encoded += len(self._put_encoded(batches.add(vimg, (index, vkey, vmeta))))
        report.encoded += len(self._put_encoded(batches.drain()))
        return report

    def _failure_key(self, index: int) -> str:
        """The sample key a failure record is named by without an identity key, as the bulk job
        names it (a file that cannot be stat'ed gets the same placeholder identity there)."""
        path, rel = self.samples[index][0], self.relative_path(index)
        try:
            return sample_key(identity(path, rel, self._root_id, loc=self._source, missing_ok=True))
        except (OSError, LatentdsError):
            return sample_key({"mtime_ns": -1, "path": rel, "root": self._root_id, "size": -1})

    def _record_failure(self, index: int, exc: BaseException) -> None:
        # The cache holds no source paths (PHI): a keyed name (latentds.identity) and the reason
        # built from the exception's structure. The in-memory FillReport keeps the real path.
        path, rel = self.samples[index][0], self.relative_path(index)
        reason = stored_reason(exc, path, rel)  # structural: an OSError's file name is never formatted in
        name = self._ids.failure_name(self._root_id, rel, self._failure_key(index))
        try:
            self._sharded.record_failure(name, type(exc).__name__, reason, identity=self._ids.tag)
        except LatentdsError:
            pass  # the failure itself is already reported to the caller; the record is best effort

    def compact(self, **kwargs: Any) -> CompactReport:
        """Pack staging objects into immutable shards and commit a new manifest generation
        (see :meth:`latentds.store.ShardedStore.compact`); safe while others read and write."""
        report = self._sharded.compact(**kwargs)
        self._norm = None
        self._plan.forget()
        return report

    def refresh(self) -> None:
        """Pick up a manifest generation committed by another process since this one looked,
        and re-check every source's identity (size, mtime / ETag) on its next access."""
        self._sharded.refresh()
        self._norm = None
        self._plan.forget()  # every key resolved (stat/HEAD) again

    def extra_repr(self) -> str:
        return f"Codec: {self._codec_name}\nCache: {self._cache.location.url}"


def _never_called(path: str) -> Any:  # DatasetFolder requires a loader; ours is the codec pipeline
    raise AssertionError("LatentDataset does not load images through DatasetFolder.loader")
