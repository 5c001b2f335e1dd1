"""Why a streaming dataset has nothing to stream, told so the user can act on it (H3's audit)."""

from __future__ import annotations

from typing import Any

from .errors import CacheError, LatentdsError

__all__ = ["nothing_committed"]


def nothing_committed(store: Any, *, from_dataset: bool) -> CacheError:
    """Why ``store`` (a ``ShardedStore``) has no committed generation: nothing compacted yet in
    its namespace, no cache there (yet), or no such namespace (say a typo: the namespaces that are
    there are named). ``from_dataset``: the namespace is a dataset's own (not typed by a user)."""
    from .store.entries import list_namespaces

    root, ns = store.cache.root, store.cache.namespace
    plain = f"{store.manifests.pointer_path}: no committed shards; run compact first"
    try:
        names = list_namespaces(root.url, root.storage_options)
    except CacheError:  # no such location: perhaps not created yet, perhaps a wrong URL
        return CacheError(f"{plain} (there is no cache at {root.url} yet: check the URL if there should be)")
    except (LatentdsError, OSError):  # the listing failed: say what is known
        return CacheError(plain)
    if ns in names:
        return CacheError(plain)
    if from_dataset:  # the namespace of a dataset's own samples: not a typo, just not filled yet
        return CacheError(f"{root.url}: no committed shards for namespace {ns!r} (the dataset's codec and "
                          f"preprocessing) yet: fill it, then compact (dataset.fill(); dataset.compact(), "
                          f"or `latentds encode` with the dataset's options)")
    here = (f"the namespaces here are {', '.join(names)}" if names else
            "there is no latentds namespace here (a cache is the folder or URL given to LatentDataset(cache=) "
            "or `latentds encode --cache`, not the image folder)")
    return CacheError(f"{root.url}: no namespace {ns!r}, so no committed shards; {here}; `latentds inspect "
                      f"{root.url}` describes each, and a LatentDataset's is its .namespace (or use from_dataset)")
