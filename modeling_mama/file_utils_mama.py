"""Files written all or nothing: the one way this package writes a file a reader may see.

A reader (another process, a resumed run, a person opening the folder) sees either the previous file or
the complete new one, never a half-written one: the data goes to a temporary name in the same folder
(same file system, so the rename is atomic), is flushed, and then `os.replace`s the target. On any
error, including KeyboardInterrupt, the temporary file is removed and the target is left as it was.

>>> import json, tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> write_json_atomic(folder / "results.json", {"auc": 0.9})
PosixPath('...results.json')
>>> json.loads((folder / "results.json").read_text())
{'auc': 0.9}
>>> with atomic_path(folder / "table.csv") as temporary:
...     _ = temporary.write_text("a,b\\n1,2\\n")
>>> (folder / "table.csv").read_text()
'a,b\\n1,2\\n'
>>> sorted(path.name for path in folder.iterdir())  # no temporary left behind
['results.json', 'table.csv']
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temporary_name(path: str | os.PathLike) -> Path:
    """A unique hidden name next to `path` (`.<name>.<pid>.<random>.partial`), for a file being written."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.partial")


@contextmanager
def atomic_path(path: str | os.PathLike, *, make_parents: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write `path` through; on success it replaces `path`, on error it is removed.

    For writers that take a file name (`pydicom.dcmwrite`, `PIL.Image.save`, `DataFrame.to_csv`...). The
    temporary name ends in `.partial`, so writers that pick a format by suffix need an explicit format.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    try:
        yield temporary
        if not temporary.exists():
            raise FileNotFoundError(f"Nothing was written to the temporary file for {path}.")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` all or nothing; returns the path."""
    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "xb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    return path


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` all or nothing; returns the path."""
    return write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(path: str | os.PathLike, data: Any, *, indent: int | None = 2, **dumps_kwargs) -> Path:
    """Write `data` as JSON (`json.dumps(data, indent=indent, **dumps_kwargs)` plus a newline) all or nothing."""
    return write_text_atomic(path, json.dumps(data, indent=indent, **dumps_kwargs) + "\n")


def record_settings(manifest: str | os.PathLike, settings: Mapping[str, Any],
                    mismatch: Callable[[dict], Exception]) -> None:
    """The resumable-folder rule: the first run writes `settings` to `manifest` (JSON, all or nothing);
    a later run with other settings gets `mismatch(previous_settings)` raised, so two runs never mix."""
    manifest = Path(manifest)
    if manifest.is_file():
        previous = json.loads(manifest.read_text())
        if previous != dict(settings):
            raise mismatch(previous)
    else:
        write_json_atomic(manifest, dict(settings), indent=1, sort_keys=True)


__all__ = ["atomic_path", "record_settings", "temporary_name", "write_bytes_atomic", "write_json_atomic",
           "write_text_atomic"]
