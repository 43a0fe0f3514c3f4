"""Files: atomic writes (a crash or Ctrl-C leaves the old file or the new one, never half of one) and file identity."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import ShopeeError

LOW_SPACE = 1 << 20  # below this many free bytes, a failed write is taken for a full disk


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; rename it over `dest` only if the block succeeds."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as e:
        raise ShopeeError(f"{dest.parent}: cannot write here ({e.strerror}); choose a writable output folder") from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 (and writers such as safetensors recreate the file): set the mode any new file gets
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, dest)
    except OSError as e:
        raise ShopeeError(f"{dest}: writing failed ({e.strerror}); free disk space or choose another folder") from e
    except RuntimeError as e:  # torch.save reports a full disk as a RuntimeError ("iostream error")
        free = shutil.disk_usage(dest.parent).free
        if free >= LOW_SPACE:
            raise
        raise ShopeeError(f"{dest}: writing failed (No space left on device: {free:,} bytes free); "
                          "free disk space or choose another folder") from e
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(dest: Path, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def write_json(dest: Path, obj: Any) -> None:
    write_text(dest, json.dumps(obj, indent=2, default=str) + "\n")


def write_npy(dest: Path, array: np.ndarray) -> None:
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def file_key(src: Path) -> str:
    """Identity of a file's current content for caches: absolute path, size, modification time."""
    st = Path(src).stat()
    return hashlib.sha1(f"{Path(src).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]


def digest(src: Path) -> str:
    """A short hash of a file's bytes: binds a derived file (a model's ONNX graphs) to the exact file it came from."""
    h = hashlib.sha256()
    with open(src, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:24]
