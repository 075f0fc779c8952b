"""Online estimates the batch policy decides by.

``LatencyModel`` learns how long the backend takes for a batch of ``n`` images,
``latency(n) = fixed_s + per_image_s * n``, from the batches that ran: an
exponentially weighted least-squares line, so it follows a backend that warms
up or slows down. A prior line that never decays keeps it sensible when few
batches have run or when they all had the same size (then the slope cannot be
learned from the data and stays near the prior's).

``ArrivalRate`` estimates how many requests arrive per second with an
exponentially decayed event count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LatencyEstimate:
    fixed_s: float
    per_image_s: float
    residual_s: float
    """Weighted RMS error of recent observations around the line."""
    observations: int


class LatencyModel:
    def __init__(
        self,
        *,
        prior_fixed_s: float = 0.5,
        prior_per_image_s: float = 0.05,
        prior_weight: float = 0.02,
        prior_span: int = 32,
        forget: float = 0.97,
    ) -> None:
        if not 0 < forget <= 1:
            raise ValueError(f"forget must be in (0, 1], got {forget}")
        self._forget = forget
        # Weighted sums of 1, n, y, n*n, n*y, y*y over the observations.
        self._w = self._wn = self._wy = self._wnn = self._wny = self._wyy = 0.0
        self._observations = 0
        # The prior enters as two pseudo-observations at n=1 and n=prior_span.
        self._prior: list[tuple[float, float, float]] = [
            (n, prior_fixed_s + prior_per_image_s * n, prior_weight)
            for n in (1.0, float(max(2, prior_span)))
        ]
        self._fit = LatencyEstimate(prior_fixed_s, prior_per_image_s, 0.0, 0)
        self._refit()

    @property
    def estimate(self) -> LatencyEstimate:
        return self._fit

    def latency_s(self, images: float) -> float:
        return self._fit.fixed_s + self._fit.per_image_s * images

    def observe(self, images: int, seconds: float) -> None:
        """Learn from a batch of ``images`` that took ``seconds`` end to end."""
        if images < 1 or not math.isfinite(seconds) or seconds < 0:
            return
        n, y = float(images), seconds
        # Down-weight outliers (a cold start, a stalled connection) so one slow
        # batch does not drag the line: Huber weights beyond 3 residual scales.
        weight = 1.0
        if self._observations >= 3:
            scale = max(self._fit.residual_s, 0.05 * self.latency_s(n), 1e-3)
            error = abs(y - self.latency_s(n))
            if error > 3 * scale:
                weight = 3 * scale / error

        f = self._forget
        self._w = self._w * f + weight
        self._wn = self._wn * f + weight * n
        self._wy = self._wy * f + weight * y
        self._wnn = self._wnn * f + weight * n * n
        self._wny = self._wny * f + weight * n * y
        self._wyy = self._wyy * f + weight * y * y
        self._observations += 1
        self._refit()

    def _refit(self) -> None:
        w, wn, wy = self._w, self._wn, self._wy
        wnn, wny, wyy = self._wnn, self._wny, self._wyy
        for n, y, pw in self._prior:
            w, wn, wy = w + pw, wn + pw * n, wy + pw * y
            wnn, wny, wyy = wnn + pw * n * n, wny + pw * n * y, wyy + pw * y * y

        det = w * wnn - wn * wn
        per_image = (w * wny - wn * wy) / det if det > 1e-12 else 0.0
        fixed = (wy - per_image * wn) / w
        # Latency never shrinks with more images, nor is it negative at n=0.
        if per_image < 0:
            per_image, fixed = 0.0, wy / w
        elif fixed < 0:
            fixed, per_image = 0.0, wny / wnn

        # The error is measured on the observations alone: the prior is a guess,
        # not a sample of how much the backend varies.
        sq = (
            self._wyy
            - 2 * fixed * self._wy
            - 2 * per_image * self._wny
            + fixed * fixed * self._w
            + 2 * fixed * per_image * self._wn
            + per_image * per_image * self._wnn
        )
        residual = math.sqrt(max(sq, 0.0) / self._w) if self._w > 0 else 0.0
        self._fit = LatencyEstimate(fixed, per_image, residual, self._observations)


class ArrivalRate:
    """Requests per second, from an event count decayed with time constant tau.

    In steady state the decayed count holds ``rate * tau`` events; dividing by
    the window actually observed so far keeps the first seconds unbiased.
    """

    def __init__(self, tau_s: float = 2.0) -> None:
        if tau_s <= 0:
            raise ValueError(f"tau_s must be positive, got {tau_s}")
        self._tau_s = tau_s
        self._count = 0.0
        self._last_s: float | None = None
        self._first_s: float | None = None

    def observe(self, now_s: float, events: int = 1) -> None:
        self._count = self._decayed(now_s) + events
        self._last_s = now_s
        if self._first_s is None:
            self._first_s = now_s

    def per_s(self, now_s: float) -> float:
        if self._first_s is None:
            return 0.0
        seen_s = max(now_s - self._first_s, 0.0)
        window_s = self._tau_s * -math.expm1(-seen_s / self._tau_s)
        # A lone first arrival says little; never divide by less than tau/10.
        return self._decayed(now_s) / max(window_s, self._tau_s / 10)

    def _decayed(self, now_s: float) -> float:
        if self._last_s is None:
            return 0.0
        age_s = max(now_s - self._last_s, 0.0)
        return self._count * math.exp(-age_s / self._tau_s)
