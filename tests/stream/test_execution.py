"""run_batch: splitting failed batches to isolate the images that spoil them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from stream.backends.base import (
    BackendError,
    BackendHealth,
    BatchItem,
    BatchOutcome,
    ItemError,
    ItemOutcome,
    ItemResult,
)
from stream.execution import PARSE_FAILED, RunAborted, run_batch


@dataclass
class PickyBackend:
    """Fails any batch holding a bad image, as Modal does; counts its calls."""

    bad: set[str] = field(default_factory=set)
    down_after_calls: int | None = None
    name: str = "picky"
    calls: list[list[str]] = field(default_factory=list)

    async def parse_batch(self, items: Sequence[BatchItem]) -> BatchOutcome:
        names = [item.filename for item in items]
        self.calls.append(names)
        if (
            self.down_after_calls is not None
            and len(self.calls) > self.down_after_calls
        ):
            raise BackendError("connection refused")
        spoilers = [name for name in names if name in self.bad]
        if spoilers:
            raise BackendError(f"cannot identify {spoilers[0]}", batch_failed=True)
        results: list[ItemOutcome] = [ItemResult(name, []) for name in names]
        return BatchOutcome(results, f"b{len(self.calls)}", 0.1, 0.1)

    async def health(self) -> BackendHealth:
        return BackendHealth(self.name, True)

    async def aclose(self) -> None:
        return None


def items(count: int) -> list[BatchItem]:
    return [BatchItem(b"png", f"p{i}.png") for i in range(count)]


async def test_a_clean_batch_takes_one_call() -> None:
    """No bad image: one call, outcomes and metas in input order."""
    backend = PickyBackend()
    outcomes, info = await run_batch(backend, items(8))

    assert [o.filename for o in outcomes] == [f"p{i}.png" for i in range(8)]
    assert len(backend.calls) == 1
    assert {meta.batch_id for meta in info.metas} == {"b1"}
    assert info.backend_s == pytest.approx(0.1)


async def test_one_bad_image_among_eight_fails_alone_in_log_calls() -> None:
    """The bad image gets parse_failed with the backend's message, the other
    seven are parsed, and it takes 1 + 2*log2(8) = 7 calls."""
    backend = PickyBackend(bad={"p5.png"})
    outcomes, info = await run_batch(backend, items(8), batch_id="local")

    failed = [o for o in outcomes if isinstance(o, ItemError)]
    assert failed == [ItemError("p5.png", PARSE_FAILED, "cannot identify p5.png")]
    assert sum(isinstance(o, ItemResult) for o in outcomes) == 7
    assert len(backend.calls) == 1 + 2 * int(math.log2(8))
    assert info.metas[5].batch_id == "local"
    assert [call.ok for call in info.calls].count(False) == 4


async def test_two_bad_images_both_fail_alone() -> None:
    """Each bad image is isolated; every good one is still parsed."""
    backend = PickyBackend(bad={"p0.png", "p6.png"})
    outcomes, _ = await run_batch(backend, items(8))

    failed = {o.filename for o in outcomes if isinstance(o, ItemError)}
    assert failed == {"p0.png", "p6.png"}
    assert all(isinstance(o, ItemResult) for o in outcomes if o.filename not in failed)


async def test_halves_run_one_after_the_other() -> None:
    """A split batch holds one backend slot: the halves never overlap."""
    backend = PickyBackend(bad={"p1.png"})
    await run_batch(backend, items(4))
    assert backend.calls == [
        ["p0.png", "p1.png", "p2.png", "p3.png"],
        ["p0.png", "p1.png"],
        ["p0.png"],
        ["p1.png"],
        ["p2.png", "p3.png"],
    ]


async def test_an_unreachable_backend_aborts_with_nothing_done() -> None:
    """A failure other than a rejected batch is raised, not split."""
    backend = PickyBackend(down_after_calls=0)
    with pytest.raises(RunAborted) as caught:
        await run_batch(backend, items(8))

    assert caught.value.completed == {}
    assert len(backend.calls) == 1
    assert not caught.value.batch_failed


async def test_an_outage_mid_split_keeps_the_halves_already_parsed() -> None:
    """Results obtained before the backend went away come back with the error."""
    backend = PickyBackend(bad={"p7.png"}, down_after_calls=2)
    with pytest.raises(RunAborted) as caught:
        await run_batch(backend, items(8))

    assert sorted(caught.value.completed) == [0, 1, 2, 3]
    assert len(caught.value.info.calls) == 3


async def test_a_wrong_number_of_outcomes_is_a_backend_error() -> None:
    """A backend answering 7 outcomes for 8 images fails the run."""

    class ShortBackend(PickyBackend):
        async def parse_batch(self, batch: Sequence[BatchItem]) -> BatchOutcome:
            outcome = await super().parse_batch(batch)
            return BatchOutcome(outcome.items[:-1], outcome.batch_id, 0.1)

    with pytest.raises(RunAborted, match="7 outcomes for 8 images"):
        await run_batch(ShortBackend(), items(8))
