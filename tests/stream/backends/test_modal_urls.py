from __future__ import annotations

import pytest

from stream.backends.modal_urls import modal_urls

MODAL = (
    "https://myorg--dolphin-parse-batch.modal.run",
    "https://myorg--dolphin-health.modal.run",
)


@pytest.mark.parametrize(
    "base",
    [
        "https://myorg--dolphin",
        "https://myorg--dolphin/",
        "  https://myorg--dolphin  ",
        "https://myorg--dolphin-parse-batch.modal.run",
        "https://myorg--dolphin-health.modal.run/",
        "https://myorg--dolphin.modal.run",
        "myorg--dolphin",
    ],
)
def test_modal_bases_give_modal_hostnames(base: str) -> None:
    assert modal_urls(base) == MODAL


def test_modal_suffix_match_ignores_case_and_keeps_app_name() -> None:
    assert modal_urls("https://MyOrg--Dolphin-Parse-Batch.MODAL.RUN") == (
        "https://MyOrg--Dolphin-parse-batch.modal.run",
        "https://MyOrg--Dolphin-health.modal.run",
    )


def test_environment_suffix_is_part_of_the_app_name() -> None:
    assert modal_urls("https://myorg-dev--dolphin-v2") == (
        "https://myorg-dev--dolphin-v2-parse-batch.modal.run",
        "https://myorg-dev--dolphin-v2-health.modal.run",
    )


@pytest.mark.parametrize(
    ("base", "root"),
    [
        ("http://127.0.0.1:8900", "http://127.0.0.1:8900"),
        ("http://127.0.0.1:8900/", "http://127.0.0.1:8900"),
        ("http://127.0.0.1", "http://127.0.0.1"),
        ("http://localhost:8000", "http://localhost:8000"),
        ("http://localhost", "http://localhost"),
        ("http://10.0.3.7", "http://10.0.3.7"),
        ("http://[::1]:9000", "http://[::1]:9000"),
        ("http://simulator:8900", "http://simulator:8900"),
        ("https://gateway.example.com/dolphin", "https://gateway.example.com/dolphin"),
        ("localhost:8000", "http://localhost:8000"),
        ("127.0.0.1:8000", "http://127.0.0.1:8000"),
    ],
)
def test_local_port_or_path_bases_use_path_routes(base: str, root: str) -> None:
    assert modal_urls(base) == (f"{root}/parse-batch", f"{root}/health")


@pytest.mark.parametrize(
    "base", ["", "   ", "https://", "https://x--y?a=1", "https://x--y#f", "http://h:x"]
)
def test_bad_bases_are_rejected(base: str) -> None:
    with pytest.raises(ValueError):
        modal_urls(base)
