"""Decoding the OCR recogniser's per-step class probabilities into text."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

# Space probability between two Latin characters that restores a dropped space:
# on rendered pages 0.05 restored every dropped space, 0.01 split words.
SPACE_THRESHOLD = 0.05


def ctc_decode(
    probs: npt.NDArray[np.float32],
    charset: Sequence[str],
    space_threshold: float = SPACE_THRESHOLD,
) -> tuple[str, float]:
    """Greedy CTC decoding that keeps the spaces between Latin words.

    ``probs`` is time steps x classes, class 0 the CTC blank and the last one
    the space. The Chinese PP-OCR model often lets a blank win over the space
    between two English words ("wholehotel"), though the space still peaks
    well above noise there; a space is put back when its probability between
    two characters reaches ``space_threshold``. CJK text is left as decoded.
    The score is the mean probability of the emitted characters, as RapidOCR's.
    """
    best = probs.argmax(axis=1)
    emitted = best != 0
    emitted[1:] &= best[1:] != best[:-1]
    steps = np.flatnonzero(emitted)
    if steps.size == 0:
        return "", 0.0
    score = float(probs[steps, best[steps]].mean())
    space = len(charset) - 1
    out: list[str] = []
    previous = -1
    for step in steps.tolist():
        char = charset[best[step]]
        if (
            out
            and char != " "
            and out[-1] != " "
            and _latin(out[-1])
            and _latin(char)
            and step - previous > 1
            and float(probs[previous + 1 : step, space].max()) >= space_threshold
        ):
            out.append(" ")
        out.append(char)
        previous = step
    return "".join(out), score


def _latin(char: str) -> bool:
    # Below the CJK radicals block: Latin, digits, punctuation, Greek, Cyrillic.
    return ord(char[0]) < 0x2E80
