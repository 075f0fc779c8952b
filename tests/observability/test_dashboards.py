"""The Grafana dashboard and the Prometheus configs match what the processes expose.

The dashboard's PromQL is checked against real scrapes of a running API and
worker after traffic of every kind its panels show (parsed pages, a refusal, a
dead letter), so a renamed metric or a label value nobody emits fails here
rather than as an empty panel.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml

from common.settings import Settings
from infra.localstack.procs import REPO_ROOT
from tests.api.images import b64, make_image
from tests.observability.conftest import PARTITIONS, MakeStack
from tests.observability.scrape import Scrape
from tests.stream.worker_kit import client, wait_until

pytestmark = pytest.mark.integration

DASHBOARD = REPO_ROOT / "infra/grafana/dashboards/dolphin-connector.json"
DATASOURCES = REPO_ROOT / "infra/grafana/provisioning/datasources/prometheus.yml"
PROMETHEUS_CONFIGS = ["prometheus.yml", "prometheus-local.yml"]
GRID_COLUMNS = 24

METRIC = re.compile(r"\bdolphin_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(dolphin_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def expressions() -> list[Any]:
    """Each target's PromQL, with an id naming its panel and target."""
    return [
        pytest.param(t["expr"], id=f"panel{p['id']}-{t['refId']}")
        for p in dashboard()["panels"]
        for t in p["targets"]
    ]


@dataclass
class Exposed:
    api: Scrape
    worker: Scrape

    def of(self, metric: str) -> Scrape:
        return self.api if metric.startswith("dolphin_api_") else self.worker


@pytest.fixture(scope="module")
async def exposed(make_stack: MakeStack) -> Exposed:
    """Scrapes after parsed pages, one refused call and one dead letter."""
    stack = await make_stack()
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=120) as http:
        for i in range(4):
            body = {"image_data": b64(make_image(seed=i)), "filename": f"{i}.png"}
            assert (await http.post("/parse", json=body)).status_code == 200
        refused = await http.post("/parse", json={"image_data": "", "filename": "x"})
        assert refused.status_code == 400
    async with client(stack.settings, stack.redis) as kafka:
        await kafka.produce_raw(key=b"not-a-request", value=b"garbage", headers=[])

    async def everything_shown() -> bool:
        worker = await stack.scrape_worker()
        lag = worker.by_label("dolphin_worker_consumer_lag", "partition")
        return worker.has("dolphin_worker_dlq_total") and len(lag) == PARTITIONS

    await wait_until(everything_shown, 60, "the dead letter and the lag gauge")
    return Exposed(await stack.scrape_api(), await stack.scrape_worker())


def test_dashboard_panels_each_query_prometheus() -> None:
    """Every panel has a unique id, a place of its own on the grid, the
    provisioned Prometheus data source and at least one target with PromQL."""
    board = dashboard()
    provisioned = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    uids = {source["uid"] for source in provisioned if source["type"] == "prometheus"}
    panels = board["panels"]

    assert board["uid"] and board["title"]
    assert panels
    assert len({p["id"] for p in panels}) == len(panels)
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert panel["targets"], f"{panel['title']} has no targets"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert METRIC.search(target["expr"]), target["expr"]
            assert target["datasource"]["uid"] in uids, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


@pytest.mark.parametrize("expr", expressions())
def test_dashboard_metric_names_are_exposed(exposed: Exposed, expr: str) -> None:
    """Each series the query reads is exposed by the API or the worker under that
    exact name (a histogram's _bucket, _sum and _count included)."""
    for metric in METRIC.findall(expr):
        assert exposed.of(metric).has(metric), f"nothing exposes {metric}"


@pytest.mark.parametrize("expr", expressions())
def test_dashboard_labels_exist_with_the_values_queried(
    exposed: Exposed, expr: str
) -> None:
    """Labels the query groups by or matches on are labels of its metrics, and a
    value it matches with = or != is one the processes really emit."""
    metrics = METRIC.findall(expr)
    available = {label for m in metrics for label in exposed.of(m).labels(m)}
    for grouping in GROUPING.findall(expr):
        for label in filter(None, (x.strip() for x in grouping.split(","))):
            assert label in available, f"no metric of {expr!r} has label {label}"

    for metric, matchers in SELECTOR.findall(expr):
        scrape = exposed.of(metric)
        for label, op, value in MATCHER.findall(matchers):
            assert label in scrape.labels(metric), f"{metric} has no label {label}"
            if op in ("=", "!="):
                emitted = set(scrape.by_label(metric, label))
                assert value in emitted, f"{metric} never has {label}={value!r}"


@pytest.mark.parametrize("name", PROMETHEUS_CONFIGS)
def test_prometheus_scrapes_the_api_and_the_worker_on_metrics(name: str) -> None:
    """The config is YAML with a scrape job on /metrics for the API's port and
    one for the worker's port, as the settings default them."""
    config = yaml.safe_load((REPO_ROOT / "infra/prometheus" / name).read_text())
    jobs = config["scrape_configs"]
    api_port = Settings.model_fields["api_port"].default
    worker_port = Settings.model_fields["worker_port"].default

    names = [job["job_name"] for job in jobs]
    assert len(set(names)) == len(names)
    assert config["global"]["scrape_interval"]
    scraped: dict[int, str] = {}
    for job in jobs:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                assert host, target
                scraped[int(port)] = job.get("metrics_path", "/metrics")
    assert scraped.get(api_port) == "/metrics"
    assert scraped.get(worker_port) == "/metrics"
