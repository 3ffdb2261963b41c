"""HDF5 files built in memory, so that writing them to disk is one plain, atomic byte write.

h5py writing straight to a file on a full disk can crash inside the HDF5 library; built with the
``core`` driver and no backing store, the file never touches the disk until its bytes go through
:func:`luser_cli.io.atomic.atomic_write_bytes`, where a full disk is one clean error line.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def h5_in_memory() -> Iterator[Any]:
    """An empty, writable ``h5py.File`` that lives in memory only (closed on exit)."""
    import h5py

    name = f"luser-{secrets.token_hex(6)}.h5"  # a name only: nothing is written under it
    f = h5py.File(name, "w", driver="core", backing_store=False)
    try:
        yield f
    finally:
        f.close()


def h5_bytes(f: Any) -> bytes:
    """The complete file image of an in-memory ``h5py.File`` (flushed first)."""
    f.flush()
    return bytes(f.id.get_file_image())
