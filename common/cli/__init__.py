"""The ``dolphin`` command line: bulk parsing over HTTP or Kafka, and status.

dolphin parse scans/ --out results/
dolphin produce scans/ --bootstrap 127.0.0.1:9092
dolphin status --url http://127.0.0.1:8080
"""

from .app import build_parser, main

__all__ = ["build_parser", "main"]
