"""Baseline (a): a proxy that sends every request to the backend on its own.

Same HTTP contract as the connector's ``POST /parse``; each request becomes a
batch of one. The backend's container limit still applies, so this is what a
caller gets from the backend without any batching.
Run: ``python -m bench.direct_proxy --port P --backend http://127.0.0.1:S``.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

from stream.backends.modal_urls import modal_urls


def create_app(backend: str, timeout_s: float = 600.0) -> FastAPI:
    parse_url, _ = modal_urls(backend)
    client: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=4096, max_keepalive_connections=4096)
        client["http"] = httpx.AsyncClient(timeout=timeout_s, limits=limits)
        yield
        await client["http"].aclose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/parse")
    async def parse(request: Request) -> Response:
        started = time.perf_counter()
        body = orjson.loads(await request.body())
        answer = await client["http"].post(parse_url, json={"images": [body]})
        payload = answer.json()
        if answer.status_code != 200 or "results" not in payload:
            error = {"code": "parse_failed", "message": str(payload)[:200]}
            return Response(orjson.dumps({"success": False, "error": error}), 502)
        result = payload["results"][0]
        reply = {
            "request_id": uuid.uuid4().hex,
            "filename": result["filename"],
            "processing_time_seconds": time.perf_counter() - started,
            "elements": result["elements"],
            "element_count": result["element_count"],
            "batch_id": payload.get("batch_id", ""),
            "success": True,
        }
        return Response(orjson.dumps(reply), media_type="application/json")

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.direct_proxy")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True)
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(args.backend),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=4096,
    )
    sys.exit(0)


if __name__ == "__main__":
    main()
