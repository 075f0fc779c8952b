"""Run the whole local stack: ``python -m infra.localstack up|down|status|logs|lag``.

Kafka, Redis, the worker and the API run as detached processes whose pids and
logs live under ``.run/``. Every command is idempotent: ``up`` starts only what is
not running, ``down`` stops whatever is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from common.kafka import ensure_topics
from common.settings import ConfigError, Settings, load_settings

from . import kafka, redis
from .procs import RUN_DIR, alive, port_open, read_pid, stop_group

PIDS = RUN_DIR / "pids"
LOGS = RUN_DIR / "logs"
ORDER = ("kafka", "redis", "worker", "api")
HEALTH_TIMEOUT_S = 180.0


def _ports(settings: Settings) -> tuple[int, int]:
    kafka_port = int(settings.kafka_bootstrap_servers.split(",")[0].rsplit(":", 1)[1])
    redis_port = urlsplit(settings.redis_url.get_secret_value()).port or 6379
    return kafka_port, redis_port


def _pid_file(name: str) -> Path:
    return PIDS / f"{name}.pid"


def _start(name: str, proc: subprocess.Popen[bytes]) -> None:
    PIDS.mkdir(parents=True, exist_ok=True)
    _pid_file(name).write_text(str(proc.pid))
    print(f"  {name}: started (pid {proc.pid}, log {LOGS / (name + '.log')})")


def _running(name: str) -> int | None:
    pid = read_pid(_pid_file(name))
    if pid is not None:
        print(f"  {name}: already running (pid {pid})")
    return pid


def _refuse_foreign(name: str, port: int) -> None:
    if port_open(port):
        sys.exit(
            f"{name}: port {port} is taken by a process this stack did not start; "
            "stop it or choose another port in the settings"
        )


def up(settings: Settings) -> None:
    kafka_port, redis_port = _ports(settings)
    print("starting the local stack")

    if _running("kafka") is None:
        _refuse_foreign("kafka", kafka_port)
        started = time.monotonic()
        proc = kafka.start_kafka(
            kafka_port, kafka_port + 1, RUN_DIR / "kafka", LOGS / "kafka.log"
        )
        _start("kafka", proc)
        kafka.wait_kafka(settings.kafka_bootstrap_servers)
        print(f"  kafka: ready in {time.monotonic() - started:.1f}s")

    if _running("redis") is None:
        _refuse_foreign("redis", redis_port)
        _start(
            "redis",
            redis.start_redis(redis_port, RUN_DIR / "redis", LOGS / "redis.log"),
        )
        redis.wait_redis(redis_port)

    asyncio.run(ensure_topics(settings))

    python = sys.executable
    if _running("worker") is None:
        _start("worker", _spawn_service([python, "-m", "stream.main"], "worker"))
    if _running("api") is None:
        _refuse_foreign("api", settings.api_port)
        _start("api", _spawn_service([python, "-m", "api.main"], "api"))

    _wait_health(settings)


def _spawn_service(argv: list[str], name: str) -> subprocess.Popen[bytes]:
    from .procs import spawn

    return spawn(argv, LOGS / f"{name}.log")


def _wait_health(settings: Settings) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    worker = f"http://{settings.worker_host}:{settings.worker_port}/health"
    _wait_url(worker, deadline, show=False)
    _wait_url(f"http://{settings.api_host}:{settings.api_port}/health", deadline)


def _wait_url(url: str, deadline: float, show: bool = True) -> None:
    last = "no answer"
    while time.monotonic() < deadline:
        for name in ("worker", "api"):
            if read_pid(_pid_file(name)) is None:
                sys.exit(f"{name} exited during start-up; see {LOGS / (name + '.log')}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                body = answer.read().decode()
                print(f"healthy: {url}" + (f"\n{body}" if show else ""))
                return
        except urllib.error.HTTPError as exc:
            last = exc.read().decode(errors="replace")
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    sys.exit(f"{url} did not report healthy within {HEALTH_TIMEOUT_S:.0f}s: {last}")


def down() -> None:
    for name in reversed(ORDER):
        pid = read_pid(_pid_file(name))
        if pid is not None:
            stop_group(pid)
            print(f"  {name}: stopped (pid {pid})")
        _pid_file(name).unlink(missing_ok=True)
    leftover = [n for n in ORDER if (p := read_pid(_pid_file(n))) and alive(p)]
    if leftover:
        sys.exit(f"still running: {leftover}")
    print("the local stack is down")


def status() -> None:
    report = {name: read_pid(_pid_file(name)) for name in ORDER}
    print(json.dumps({n: ("running" if p else "stopped") for n, p in report.items()}))


def logs(lines: int) -> None:
    for name in ORDER:
        path = LOGS / f"{name}.log"
        if path.exists():
            print(f"==> {path} <==")
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            print("\n".join(tail))


def lag(settings: Settings) -> None:
    argv = kafka.consumer_groups_command(
        settings.kafka_bootstrap_servers,
        "--describe",
        "--group",
        settings.consumer_group,
    )
    sys.exit(subprocess.run(argv).returncode)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m infra.localstack")
    parser.add_argument(
        "command", choices=["up", "down", "status", "logs", "lag", "resolve"]
    )
    parser.add_argument("-n", "--lines", type=int, default=40)
    args = parser.parse_args()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.exit(str(exc))
    if args.command == "up":
        up(settings)
    elif args.command == "down":
        down()
    elif args.command == "status":
        status()
    elif args.command == "logs":
        logs(args.lines)
    elif args.command == "lag":
        lag(settings)
    else:
        print(kafka.resolve())


if __name__ == "__main__":
    main()
