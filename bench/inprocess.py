"""Baseline (b): the connector's batcher in one process, no Kafka, no Redis.

The same HTTP contract and the same batching policy and Modal client as the
worker; requests go straight from the handler into the batcher and back. What
the connector spends beyond this is the price of Kafka, Redis and two processes.
Run: ``python -m bench.inprocess --port P --backend http://127.0.0.1:S``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

from common.messages import new_request_id, result_body
from common.settings import load_settings
from stream.backends.base import ItemOutcome, ItemResult
from stream.backends.modal import ModalBackend
from stream.batching.batcher import Batcher
from stream.batching.types import BatchMeta, Pending


def create_app(backend_url: str) -> FastAPI:
    settings = load_settings(modal_api_endpoint=backend_url)
    waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
    state: dict[str, Any] = {}

    async def sink(
        pending: Pending, outcome: ItemOutcome, meta: BatchMeta | None
    ) -> None:
        future = waiting.pop(pending.request_id, None)
        if future is None or future.done():
            return
        if isinstance(outcome, ItemResult) and meta is not None:
            body = result_body(
                request_id=pending.request_id,
                filename=pending.filename,
                elements=outcome.elements,
                batch_id=meta.batch_id,
                processing_time_s=meta.processing_time_s,
            )
        else:
            error = {"code": getattr(outcome, "code", "failed"), "message": ""}
            body = {"success": False, "request_id": pending.request_id, "error": error}
        future.set_result(body)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        backend = ModalBackend.from_settings(settings)
        batcher = Batcher(backend, settings, sink)
        batcher.start()
        state["batcher"] = batcher
        yield
        await batcher.stop(5.0)
        await backend.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/parse")
    async def parse(request: Request) -> Response:
        payload = orjson.loads(await request.body())
        request_id = new_request_id()
        future: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        waiting[request_id] = future
        await state["batcher"].put(
            Pending(
                request_id=request_id,
                filename=payload["filename"],
                image=base64.b64decode(payload["image_data"]),
                deadline_s=time.time() + settings.request_timeout_s,
            )
        )
        body = await future
        status = 200 if body.get("success") else 502
        return Response(orjson.dumps(body), status, media_type="application/json")

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess")
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


if __name__ == "__main__":
    main()
