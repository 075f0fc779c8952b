"""The online latency model and the arrival-rate estimate."""

from __future__ import annotations

import random

import pytest

from stream.batching.model import ArrivalRate, LatencyModel


def test_learns_fixed_and_per_image_cost_from_noisy_batches() -> None:
    """Batches of mixed sizes around 0.4 s + 25 ms/image recover both terms."""
    model = LatencyModel()
    rng = random.Random(3)
    for _ in range(200):
        n = rng.randint(1, 32)
        model.observe(n, 0.4 + 0.025 * n + rng.gauss(0, 0.01))

    estimate = model.estimate
    assert estimate.fixed_s == pytest.approx(0.4, abs=0.02)
    assert estimate.per_image_s == pytest.approx(0.025, abs=0.002)
    assert estimate.residual_s == pytest.approx(0.01, abs=0.005)
    assert model.latency_s(32) == pytest.approx(1.2, abs=0.03)


def test_reports_the_prior_before_any_batch() -> None:
    """With no observations the estimate is the prior line, with no error."""
    model = LatencyModel(prior_fixed_s=0.5, prior_per_image_s=0.05)
    assert model.estimate.fixed_s == pytest.approx(0.5)
    assert model.estimate.per_image_s == pytest.approx(0.05)
    assert model.estimate.residual_s == 0.0
    assert model.estimate.observations == 0


def test_one_size_only_keeps_the_prior_slope_and_fits_that_size() -> None:
    """Batches that all have one size pin its latency; the slope stays sensible."""
    model = LatencyModel(prior_fixed_s=0.5, prior_per_image_s=0.05)
    for _ in range(10):
        model.observe(1, 0.3)

    assert model.latency_s(1) == pytest.approx(0.3, abs=0.01)
    assert model.estimate.per_image_s == pytest.approx(0.05, abs=0.01)
    assert model.estimate.fixed_s >= 0


def test_a_single_slow_batch_barely_moves_a_trained_model() -> None:
    """A cold start taking 20 s is down-weighted as an outlier."""
    model = LatencyModel()
    for n in [4, 8, 16, 32] * 10:
        model.observe(n, 0.4 + 0.025 * n)
    model.observe(8, 20.0)

    assert model.latency_s(8) == pytest.approx(0.6, abs=0.1)


def test_follows_a_backend_that_slows_down() -> None:
    """Old observations fade, so a slower backend is learned within ~100 batches."""
    model = LatencyModel()
    for n in [4, 8, 16, 32] * 25:
        model.observe(n, 0.4 + 0.025 * n)
    for n in [4, 8, 16, 32] * 25:
        model.observe(n, 0.8 + 0.05 * n)

    assert model.estimate.fixed_s == pytest.approx(0.8, abs=0.05)
    assert model.estimate.per_image_s == pytest.approx(0.05, abs=0.005)


@pytest.mark.parametrize("bad", [0, -1], ids=["empty-batch", "negative-size"])
def test_ignores_impossible_observations(bad: int) -> None:
    """Batches without images teach nothing."""
    model = LatencyModel()
    model.observe(bad, 1.0)
    assert model.estimate.observations == 0


def test_arrival_rate_tracks_a_poisson_stream_and_decays_when_it_stops() -> None:
    """50 requests/s read as about 50/s; ten quiet seconds later, near zero."""
    rate = ArrivalRate(tau_s=2.0)
    rng = random.Random(5)
    now_s = 0.0
    for _ in range(1000):
        now_s += rng.expovariate(50.0)
        rate.observe(now_s)

    assert rate.per_s(now_s) == pytest.approx(50.0, rel=0.25)
    assert rate.per_s(now_s + 10.0) < 1.0


def test_arrival_rate_is_unbiased_in_its_first_second() -> None:
    """Before a full time constant has passed the rate is not underestimated."""
    rate = ArrivalRate(tau_s=2.0)
    for i in range(50):
        rate.observe(i * 0.02)  # 50/s for one second
    assert rate.per_s(0.98) == pytest.approx(50.0, rel=0.15)


def test_arrival_rate_is_zero_before_any_arrival() -> None:
    """No arrivals yet: nothing is expected."""
    assert ArrivalRate().per_s(123.0) == 0.0
