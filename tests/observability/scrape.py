"""Reading a process's ``/metrics`` the way Prometheus does.

The text is parsed with ``prometheus_client``'s own parser, so a test sees the
families, types and samples a scraper would, not substrings of the page.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

# prometheus_client exposes a ``<name>_created`` gauge next to each counter and
# histogram: when the series started, not a metric of ours.
CREATED_SUFFIX = "_created"
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


@dataclass(frozen=True, repr=False)
class Scrape:
    """One scrape of one process."""

    families: tuple[Metric, ...]

    def __repr__(self) -> str:
        return f"<Scrape of {len(self.families)} families>"

    @classmethod
    def parse(cls, text: str) -> Scrape:
        return cls(tuple(text_string_to_metric_families(text)))

    def ours(self) -> Iterator[Metric]:
        """The connector's families, without the ``_created`` companions."""
        for family in self.families:
            if family.name.startswith("dolphin_") and not family.name.endswith(
                CREATED_SUFFIX
            ):
                yield family

    def samples(self, name: str) -> list[Sample]:
        return [s for f in self.families for s in f.samples if s.name == name]

    def has(self, name: str) -> bool:
        return bool(self.samples(name))

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples named ``name`` whose labels include ``labels``."""
        return sum(
            s.value
            for s in self.samples(name)
            if all(s.labels.get(k) == v for k, v in labels.items())
        )

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """Values of ``name`` keyed by one label (summed over the others)."""
        values: dict[str, float] = {}
        for s in self.samples(name):
            key = s.labels.get(label, "")
            values[key] = values.get(key, 0.0) + s.value
        return values

    def labels(self, name: str) -> set[str]:
        return {key for s in self.samples(name) for key in s.labels}


async def scrape(base_url: str) -> Scrape:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(base_url + "/metrics")
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape.parse(response.text)


def delta(
    before: Scrape, after: Scrape, name: str, labels: Mapping[str, str] | None = None
) -> float:
    """How much a counter (or a histogram's ``_count``/``_sum``) moved."""
    wanted = dict(labels or {})
    return after.value(name, **wanted) - before.value(name, **wanted)
