"""Which files a run sends, where each result goes, and which are already done.

A folder given on the command line is searched recursively for page images by
extension; a file given by name is always taken. A result is written next to
its input (``page.png`` -> ``page.png.json``) or, with ``--out DIR``, under DIR
at the input's path relative to the folder it was found in.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp"})
RESULT_SUFFIX = ".json"


class InputError(Exception):
    """The command line names inputs that cannot be run as asked."""


@dataclass(frozen=True, slots=True)
class Input:
    path: Path
    """The image file to send."""
    relative: Path
    """Its path under ``--out``: relative to the folder it was found in."""


def expand_inputs(paths: Iterable[Path]) -> list[Input]:
    """Files named and page images found under folders named, each file once."""
    inputs: list[Input] = []
    seen: set[Path] = set()
    for given in paths:
        if given.is_dir():
            found = [Input(f, f.relative_to(given)) for f in _images_under(given)]
        elif given.is_file():
            found = [Input(given, Path(given.name))]
        else:
            raise InputError(f"{given}: no such file or folder")
        for item in found:
            key = item.path.resolve()
            if key not in seen:
                seen.add(key)
                inputs.append(item)
    return inputs


def _images_under(folder: Path) -> list[Path]:
    # Hidden entries are left out: ``._page.png`` files that macOS leaves on
    # shared drives carry an image suffix but hold no image.
    images: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        images.extend(
            Path(root, name)
            for name in sorted(files)
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
        )
    return images


def result_path(item: Input, out_dir: Path | None) -> Path:
    """Where the result of ``item`` is written."""
    if out_dir is None:
        return item.path.with_name(item.path.name + RESULT_SUFFIX)
    return out_dir / item.relative.with_name(item.relative.name + RESULT_SUFFIX)


def plan(
    inputs: list[Input], out_dir: Path | None, *, force: bool
) -> tuple[list[tuple[Input, Path]], list[Input]]:
    """Inputs to send with their result paths, and inputs skipped as done.

    An input is done when its result file exists; ``force`` sends it again.
    Two inputs that would write the same result file are refused.
    """
    owners: dict[Path, Input] = {}
    todo: list[tuple[Input, Path]] = []
    skipped: list[Input] = []
    for item in inputs:
        target = result_path(item, out_dir)
        if (other := owners.get(target)) is not None:
            msg = (
                f"{other.path} and {item.path} would both write {target}; "
                "run them with different --out folders"
            )
            raise InputError(msg)
        owners[target] = item
        if target.exists() and not force:
            skipped.append(item)
        else:
            todo.append((item, target))
    return todo, skipped


def write_result(target: Path, body: dict[str, Any]) -> None:
    """Write atomically, so an interrupted run never leaves a partial result."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    scratch.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n")
    os.replace(scratch, target)
