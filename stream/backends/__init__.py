"""Parser backends, and the choice between them.

``make_backend`` picks the Modal batch endpoint when ``MODAL_API_ENDPOINT`` is
set, else the embedded CPU parser. Each module is imported only when chosen, so
a worker talking to Modal never loads the local models' dependencies.
"""

from __future__ import annotations

import logging

from common.settings import Settings
from stream.backends.base import Backend

__all__ = ["make_backend"]

logger = logging.getLogger(__name__)


def make_backend(settings: Settings) -> Backend:
    if settings.modal_api_endpoint:
        from stream.backends.modal import ModalBackend

        backend: Backend = ModalBackend.from_settings(settings)
    else:
        from stream.backends.local import LocalBackend

        backend = LocalBackend.from_settings(settings)
    logger.info("backend_selected", extra={"backend": backend.name})
    return backend
