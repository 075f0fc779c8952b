"""The embedded CPU parser backend (layout detection plus OCR, all local).

backend = LocalBackend.from_settings(settings)
outcome = await backend.parse_batch([BatchItem(png_bytes, "page-1.png")])
"""

from stream.backends.local.backend import (
    INFERENCE_FAILED,
    LocalBackend,
    available_cpus,
    plan_parallelism,
)
from stream.backends.local.images import (
    EMPTY_IMAGE,
    IMAGE_TOO_LARGE,
    UNDECODABLE_IMAGE,
)
from stream.backends.local.models import (
    ModelFilesMissing,
    ModelIncompatible,
    ModelPaths,
)

__all__ = [
    "EMPTY_IMAGE",
    "IMAGE_TOO_LARGE",
    "INFERENCE_FAILED",
    "UNDECODABLE_IMAGE",
    "LocalBackend",
    "ModelFilesMissing",
    "ModelIncompatible",
    "ModelPaths",
    "available_cpus",
    "plan_parallelism",
]
