"""Which files a run sends, where results go, and which inputs are skipped."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from common.cli.inputs import (
    Input,
    InputError,
    expand_inputs,
    plan,
    result_path,
    write_result,
)


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_folders_are_searched_recursively_by_image_extension(tmp_path: Path) -> None:
    """Every image suffix, in any case, is found at any depth; others are not."""
    _touch(
        tmp_path,
        "a.png",
        "b.JPG",
        "deep/er/c.jpeg",
        "d.tif",
        "e.tiff",
        "f.webp",
        "notes.txt",
        "a.png.json",
        "scan.pdf",
    )

    found = expand_inputs([tmp_path])

    assert [item.relative.as_posix() for item in found] == [
        "a.png",
        "b.JPG",
        "d.tif",
        "e.tiff",
        "f.webp",
        "deep/er/c.jpeg",
    ]


def test_hidden_files_and_folders_are_left_out_of_folder_search(
    tmp_path: Path,
) -> None:
    """``._page.png`` droppings and ``.cache/`` folders are not pages."""
    _touch(tmp_path, "page.png", "._page.png", ".cache/page.png")

    found = expand_inputs([tmp_path])

    assert [item.relative.as_posix() for item in found] == ["page.png"]


def test_a_file_named_is_taken_whatever_its_suffix(tmp_path: Path) -> None:
    """Naming a file asks for it; the service decides whether it is an image."""
    _touch(tmp_path, "scan.pdf")

    (item,) = expand_inputs([tmp_path / "scan.pdf"])

    assert item == Input(tmp_path / "scan.pdf", Path("scan.pdf"))


def test_a_file_reached_twice_is_sent_once(tmp_path: Path) -> None:
    """A folder and a file inside it on one command line give one input."""
    _touch(tmp_path, "pages/a.png")

    found = expand_inputs([tmp_path / "pages", tmp_path / "pages" / "a.png"])

    assert len(found) == 1


def test_a_missing_path_is_refused(tmp_path: Path) -> None:
    """A typo stops the run before anything is sent."""
    with pytest.raises(InputError, match="no such file or folder"):
        expand_inputs([tmp_path / "nope"])


@pytest.mark.parametrize(
    ("out", "expected"),
    [
        pytest.param(None, "scans/batch/page.png.json", id="next-to-input"),
        pytest.param("results", "results/batch/page.png.json", id="mirrored-in-out"),
    ],
)
def test_result_path(tmp_path: Path, out: str | None, expected: str) -> None:
    """Results sit next to the input, or under --out at its relative path."""
    item = Input(tmp_path / "scans/batch/page.png", Path("batch/page.png"))

    target = result_path(item, tmp_path / out if out else None)

    assert target == tmp_path / expected


def test_inputs_with_a_result_are_skipped_unless_forced(tmp_path: Path) -> None:
    """A result file marks its input done; --force sends it again."""
    _touch(tmp_path, "a.png", "b.png", "a.png.json")
    inputs = expand_inputs([tmp_path])

    todo, skipped = plan(inputs, None, force=False)
    forced, none_skipped = plan(inputs, None, force=True)

    assert [item.path.name for item, _ in todo] == ["b.png"]
    assert [item.path.name for item in skipped] == ["a.png"]
    assert len(forced) == 2 and none_skipped == []


def test_two_inputs_writing_one_result_are_refused(tmp_path: Path) -> None:
    """Two folders with the same relative page would overwrite each other."""
    _touch(tmp_path, "one/page.png", "two/page.png")
    inputs = expand_inputs([tmp_path / "one", tmp_path / "two"])

    with pytest.raises(InputError, match="would both write"):
        plan(inputs, tmp_path / "out", force=False)


def test_results_are_written_whole_with_their_folders(tmp_path: Path) -> None:
    """The result lands complete, folders created, no scratch file left over."""
    target = tmp_path / "out" / "deep" / "page.png.json"

    write_result(target, {"success": True, "elements": []})

    assert orjson.loads(target.read_bytes()) == {"success": True, "elements": []}
    assert [p.name for p in target.parent.iterdir()] == ["page.png.json"]
