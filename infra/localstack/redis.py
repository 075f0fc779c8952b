"""A Redis server from Debian's ``redis-server``, on a chosen port and dir."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from .procs import spawn


class RedisNotInstalled(RuntimeError):
    pass


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        msg = "redis-server is not installed; `./dev setup` installs it with apt-get"
        raise RedisNotInstalled(msg)
    return path


def start_redis(port: int, data_dir: Path, log_file: Path) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        redis_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--daemonize", "no",
        "--protected-mode", "yes",
    ]  # fmt: skip
    return spawn(argv, log_file)


def wait_redis(port: int, timeout_s: float = 15.0) -> None:
    """Ready means a PING answered, not an open port."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.ping():
                client.close()
                return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"redis on port {port} not ready in {timeout_s}s"
                ) from None
            time.sleep(0.1)
