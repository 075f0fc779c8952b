"""The processes a benchmark runs: real Kafka and Redis, the simulator, the
connector's worker and API, and the baselines, each on a free port."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from infra.localstack import kafka, redis
from infra.localstack.procs import free_port, spawn, stop_group

PY = sys.executable


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    url: str = ""

    def rss_mb(self) -> float:
        """Resident memory of the process and its children, in MiB."""
        try:
            root = psutil.Process(self.popen.pid)
            procs = [root, *root.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs) / 2**20
        except psutil.Error:
            return 0.0

    def stop(self) -> None:
        stop_group(self.popen.pid, 15)


@dataclass
class Stack:
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-")))
    procs: dict[str, Proc] = field(default_factory=dict)
    kafka_bootstrap: str = ""
    redis_url: str = ""

    def start_services(self) -> None:
        port, controller = free_port(), free_port()
        self.procs["kafka"] = Proc(
            "kafka",
            kafka.start_kafka(port, controller, self.root / "kafka", self.log("kafka")),
        )
        self.kafka_bootstrap = f"127.0.0.1:{port}"
        redis_port = free_port()
        self.procs["redis"] = Proc(
            "redis",
            redis.start_redis(redis_port, self.root / "redis", self.log("redis")),
        )
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        kafka.wait_kafka(self.kafka_bootstrap)
        redis.wait_redis(redis_port)

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def start_simulator(self, **cost: float) -> Proc:
        self.stop("simulator")
        port = free_port()
        argv = [PY, "-m", "bench.simulator", "--port", str(port)]
        for name, value in cost.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        proc = Proc("simulator", spawn(argv, self.log("simulator")))
        proc.url = f"http://127.0.0.1:{port}"
        self.procs["simulator"] = proc
        _wait_http(proc, "/health")
        return proc

    def connector_env(self, namespace: str, **extra: str) -> dict[str, str]:
        simulator = self.procs["simulator"].url
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "REDIS_URL": self.redis_url,
            "MODAL_API_ENDPOINT": simulator,
            "LOG_LEVEL": "WARNING",
            "DOLPHIN_REQUESTS_TOPIC": f"{namespace}.requests",
            "DOLPHIN_REPLIES_TOPIC": f"{namespace}.replies",
            "DOLPHIN_DLQ_TOPIC": f"{namespace}.dlq",
            "DOLPHIN_CONSUMER_GROUP": f"{namespace}-connector",
            "DOLPHIN_REDIS_KEY_PREFIX": namespace,
            **extra,
        }

    def start_connector(self, namespace: str, **extra: str) -> tuple[Proc, Proc]:
        for name in ("api", "worker"):
            self.stop(name)
        env = self.connector_env(namespace, **extra)
        worker_port, api_port = free_port(), free_port()
        worker = Proc(
            "worker",
            spawn(
                [PY, "-m", "stream.main"],
                self.log("worker"),
                env=_clean({**env, "DOLPHIN_WORKER_PORT": str(worker_port)}),
            ),
            f"http://127.0.0.1:{worker_port}",
        )
        self.procs["worker"] = worker
        _wait_http(worker, "/health")
        api = Proc(
            "api",
            spawn(
                [PY, "-m", "api.main"],
                self.log("api"),
                env=_clean({**env, "DOLPHIN_API_PORT": str(api_port)}),
            ),
            f"http://127.0.0.1:{api_port}",
        )
        self.procs["api"] = api
        _wait_http(api, "/health")
        return api, worker

    def start_direct_proxy(self) -> Proc:
        self.stop("direct")
        port = free_port()
        argv = [PY, "-m", "bench.direct_proxy", "--port", str(port)]
        argv += ["--backend", self.procs["simulator"].url]
        proc = Proc(
            "direct", spawn(argv, self.log("direct")), f"http://127.0.0.1:{port}"
        )
        self.procs["direct"] = proc
        _wait_http(proc, "/docs")
        return proc

    def start_inprocess(self, **extra: str) -> Proc:
        self.stop("inprocess")
        port = free_port()
        argv = [PY, "-m", "bench.inprocess", "--port", str(port)]
        argv += ["--backend", self.procs["simulator"].url]
        env = _clean({"MODAL_API_ENDPOINT": self.procs["simulator"].url, **extra})
        proc = Proc(
            "inprocess",
            spawn(argv, self.log("inprocess"), env=env),
            f"http://127.0.0.1:{port}",
        )
        self.procs["inprocess"] = proc
        _wait_http(proc, "/health")
        return proc

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            proc.stop()

    def stop_connector(self) -> None:
        self.stop("api")
        self.stop("worker")

    def stop_all(self) -> None:
        for name in list(self.procs)[::-1]:
            self.stop(name)


def _clean(env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DOLPHIN_")}
    base.pop("CONFIG_PATH", None)
    return {**base, **env}


def _wait_http(proc: Proc, path: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}")
        try:
            if httpx.get(proc.url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{proc.name} did not answer {path} in {timeout_s}s")
