"""The ``dolphin`` command: argument parsing and the three subcommands."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.logging import RichHandler

from common.client import DolphinClient
from common.errors import Unavailable
from common.settings import ConfigError, load_settings

from .http_parse import HttpParser
from .inputs import IMAGE_SUFFIXES, InputError, expand_inputs, plan
from .kafka_produce import KafkaParser
from .run import Job, report, run_jobs
from .status import show_status

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_S = 1800.0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Command = Callable[[argparse.Namespace, Console], Coroutine[Any, Any, int]]

DESCRIPTION = """\
Send page images to the Dolphin connector and save what it parsed.

  dolphin parse scans/ --out results/     every image under scans/, over HTTP
  dolphin produce scans/                  the same, straight over Kafka
  dolphin status                          the API's health and queue
"""

RUN_EPILOG = f"""\
Folders are searched recursively for {", ".join(sorted(IMAGE_SUFFIXES))} files
(hidden ones left out); files named are always sent. Each result is written as
JSON next to its input (page.png -> page.png.json), or under --out DIR at the
input's path relative to the folder it was found in. Inputs whose result file
exists are skipped unless --force, so running the command again retries only
what failed. Exit status: 0 when every input succeeded or was skipped, 1 when
any failed or the service could not be reached, 2 for bad arguments.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dolphin",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what the clients do"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    parse = commands.add_parser(
        "parse",
        help="parse images through the HTTP API (POST /parse)",
        description="Parse page images through the HTTP API, one POST /parse each.",
        epilog=RUN_EPILOG
        + "\nA busy API (429, 503) is waited out as its Retry-After asks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_arguments(parse)
    _add_api_arguments(parse)
    parse.set_defaults(run=_parse)

    produce = commands.add_parser(
        "produce",
        help="parse images over Kafka, without the HTTP API",
        description=(
            "Parse page images by producing them to the requests topic and "
            "reading the replies. Kafka security settings come from the "
            "connector's settings (environment, CONFIG_PATH)."
        ),
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_arguments(produce)
    produce.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        help="Kafka brokers (default: KAFKA_BOOTSTRAP_SERVERS, else 127.0.0.1:9092)",
    )
    produce.add_argument(
        "--requests-topic",
        metavar="TOPIC",
        help="topic to produce to (default: dolphin.parse.requests)",
    )
    produce.add_argument(
        "--reply-topic",
        metavar="TOPIC",
        help="topic to be answered on, created if missing "
        "(default: dolphin.parse.replies)",
    )
    produce.set_defaults(run=_produce)

    status = commands.add_parser(
        "status",
        help="show the API's health and queue",
        description="Print GET /health and GET /queue/status; exit 1 if unhealthy.",
    )
    _add_api_arguments(status)
    status.add_argument(
        "--timeout", type=_positive, default=5.0, metavar="S", help="default: 5"
    )
    status.set_defaults(run=_status)
    return parser


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="image files or folders"
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="write results under DIR"
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=8,
        metavar="N",
        help="inputs in flight at once (default: 8)",
    )
    parser.add_argument(
        "--force", action="store_true", help="parse inputs that have a result too"
    )
    parser.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"seconds to wait for one result (default: {DEFAULT_TIMEOUT_S:g})",
    )


def _add_api_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=DEFAULT_URL,
        help=f"the API's base URL (default: {DEFAULT_URL})",
    )
    parser.add_argument(
        "--api-key", metavar="KEY", help="sent as 'Authorization: Bearer KEY'"
    )


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _headers(args: argparse.Namespace) -> dict[str, str]:
    return {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}


async def _run(args: argparse.Namespace, console: Console, job: Job) -> int:
    try:
        inputs = expand_inputs(args.paths)
        todo, skipped = plan(inputs, args.out, force=args.force)
    except InputError as exc:
        console.print(f"[bold red]{exc}[/]", highlight=False)
        return EXIT_USAGE
    if not inputs:
        console.print("[yellow]no page images found[/]")
        return 0
    console.print(
        f"{len(inputs)} inputs: {len(todo)} to parse, {len(skipped)} skipped "
        "(result exists; --force parses them again)",
        highlight=False,
    )
    summary = await run_jobs(
        todo, job, concurrency=args.concurrency, console=console, skipped=len(skipped)
    )
    report(summary, console)
    return summary.exit_code


async def _parse(args: argparse.Namespace, console: Console) -> int:
    url = args.url.rstrip("/")
    timeout = httpx.Timeout(args.timeout, connect=5.0)
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers=_headers(args), timeout=timeout, limits=limits
    ) as client:
        return await _run(
            args, console, HttpParser(client, url=url, timeout_s=args.timeout)
        )


async def _produce(args: argparse.Namespace, console: Console) -> int:
    overrides = {
        "kafka_bootstrap_servers": args.bootstrap,
        "requests_topic": args.requests_topic,
        "replies_topic": args.reply_topic,
    }
    try:
        settings = load_settings(**{k: v for k, v in overrides.items() if v})
    except ConfigError as exc:
        console.print(f"[bold red]{exc}[/]", highlight=False)
        return EXIT_USAGE
    client = DolphinClient.from_settings(settings, source="/dolphin-connector/cli")
    try:
        await client.start()
    except Unavailable:
        console.print(
            f"[bold red]cannot reach Kafka at {settings.kafka_bootstrap_servers}: "
            "is the stack up? (./dev up)[/]",
            highlight=False,
        )
        return 1
    try:
        return await _run(args, console, KafkaParser(client, timeout_s=args.timeout))
    finally:
        await client.close()


async def _status(args: argparse.Namespace, console: Console) -> int:
    return await show_status(
        args.url.rstrip("/"),
        headers=_headers(args),
        timeout_s=args.timeout,
        console=console,
    )


def _configure_logging(verbose: bool, console: Console) -> None:
    # A program calling main() that has set up logging itself keeps its own.
    if logging.getLogger().handlers:
        return
    handler = RichHandler(console=console, show_path=False)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[handler],
    )
    # aiokafka logs every refused connection as an error; the run says it once.
    if not verbose:
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dolphin`` command; returns its exit status."""
    args = build_parser().parse_args(argv)
    # Messages hold paths and URLs: never wrapped, so they can be copied.
    console = Console(soft_wrap=True)
    _configure_logging(args.verbose, Console(stderr=True))
    command: Command = args.run
    try:
        return asyncio.run(command(args, console))
    except KeyboardInterrupt:
        console.print("interrupted; the results written so far are kept")
        return EXIT_INTERRUPTED
