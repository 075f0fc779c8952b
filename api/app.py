"""The FastAPI application and the start and stop of what it shares.

The lifespan starts the Kafka producer and the reply router before the app takes
traffic, so no request can be produced before its reply could be read. Redis is
not required at start: while it is down, requests fail fast with 503.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from redis.exceptions import RedisError

from common.settings import Settings

from .context import ApiContext
from .errors import install_handlers
from .ops import router as ops_router
from .routes import router as parse_router

logger = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # aiokafka clients bind to the running loop, so they are built here.
    ctx = ApiContext.build(app.state.settings)
    app.state.ctx = ctx
    async with AsyncExitStack() as stack:
        stack.push_async_callback(ctx.redis.aclose)
        try:
            await ctx.redis.ping()
        except (RedisError, OSError) as exc:
            logger.warning("redis_unavailable_at_start", extra={"error": repr(exc)})

        # The producer probes Kafka through the inspector: start that first.
        await ctx.inspector.start()
        stack.push_async_callback(ctx.inspector.stop)
        await ctx.producer.start()
        stack.push_async_callback(ctx.producer.stop)
        await ctx.router.start()
        stack.push_async_callback(ctx.router.stop)

        logger.info("api_ready")
        yield
        logger.info("api_stopping")


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="Dolphin connector",
        summary="Parse document pages: synchronous HTTP in front of a batched "
        "GPU parser, through Kafka.",
        version="1.0.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_handlers(app)
    app.include_router(parse_router)
    app.include_router(ops_router)
    return app
