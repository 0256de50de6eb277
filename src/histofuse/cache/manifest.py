"""A feature store's manifest (the mark of a finished store) and its provenance.

The manifest ``{shard}.manifest.json`` beside ``{shard}.zarr`` is written last, atomically, once
the store is in place; readers accept a store only if its manifest exists and agrees with the
store's provenance (the root attributes under :data:`ATTRS_KEY`).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from histofuse.atomic import write_json
from histofuse.errors import HistofuseError

FORMAT_VERSION = 2
"""The store format this package writes and reads. 2: every chunk written, each with a crc32c
(1 had neither, so a damaged chunk read as data)."""
ATTRS_KEY = "histofuse"


def manifest_path(store: str | Path) -> Path:
    """Returns the manifest path of a store (``x.zarr`` → ``x.manifest.json``)."""
    store = Path(store)
    return store.with_name(store.name.removesuffix(".zarr") + ".manifest.json")


def rebuild_hint(store: str | Path) -> str:
    """The advice that rebuilds a store: its embed (or tokens) job, forced to run again."""
    man = manifest_path(store)
    with contextlib.suppress(ValueError):  # outside the working folder: named as given
        man = man.resolve().relative_to(Path.cwd().resolve())
    return f"re-run its embed job: snakemake --forcerun {man}"


def write_manifest(store: Path, cache_key: str, samples: dict[str, int]) -> None:
    """Writes the manifest of a store now in place (atomically: all of it or nothing).

    Args:
        store: The store path.
        cache_key: The store's cache key (as in its provenance).
        samples: Tiles per sample, in store order.
    """
    manifest = {
        "store": store.name,
        "cache_key": cache_key,
        "samples": samples,
        "n_tiles": sum(samples.values()),
        "format_version": FORMAT_VERSION,
    }
    write_json(manifest, manifest_path(store))


def read_manifest(store: str | Path) -> dict[str, Any]:
    """Returns a finished store's manifest.

    Raises:
        HistofuseError: If the store or its manifest is missing (an unfinished store).
    """
    store = Path(store)
    man = manifest_path(store)
    if not store.is_dir() or not man.is_file():
        raise HistofuseError(
            f"feature store {store} is missing or unfinished (no {man.name}); re-run its embed job"
        )
    try:
        manifest = json.loads(man.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        manifest = None
    if not isinstance(manifest, dict):
        raise HistofuseError(
            f"feature store {store}: its manifest {man} is damaged (not a JSON object); "
            f"{rebuild_hint(store)}"
        )
    _check_format(store, manifest.get("format_version"))
    return manifest


def _check_format(store: Path, version: Any) -> None:
    """Refuses a store of another format than :data:`FORMAT_VERSION`, with the fix."""
    if version == FORMAT_VERSION:
        return
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise HistofuseError(
            f"feature store {store} has format version {version}, newer than this histofuse "
            f"reads ({FORMAT_VERSION}); upgrade histofuse, or rebuild the store with this one: "
            f"{rebuild_hint(store).removeprefix('re-run its embed job: ')}"
        )
    raise HistofuseError(
        f"feature store {store} has format version {version}, older than this histofuse reads "
        f"({FORMAT_VERSION}: every chunk checksummed); {rebuild_hint(store)}"
    )


def read_provenance(store: str | Path) -> dict[str, Any]:
    """Returns the provenance attributes of a finished store."""
    import zarr

    read_manifest(store)
    return dict(zarr.open_group(str(store), mode="r").attrs[ATTRS_KEY])
