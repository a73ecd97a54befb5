"""Percentiles from bucket counts, as libtpu's distributions carry them."""

from __future__ import annotations

import random

from collectors.tpu.distribution import Buckets, from_samples, quantile

BOUNDS = tuple(2.0**i for i in range(21))  # exponential, scale 1, growth 2


def test_quantiles_of_many_samples_land_within_their_bucket():
    rng = random.Random(3)
    values = [rng.lognormvariate(7.0, 0.4) for _ in range(20_000)]  # median ~1100
    b = Buckets(BOUNDS, from_samples(values, BOUNDS))
    exact = sorted(values)
    for q in (0.5, 0.9, 0.99):
        true = exact[int(q * len(exact))]
        est = quantile(b, q)
        lower = max(b for b in BOUNDS if b <= true)
        assert lower <= est <= lower * 2  # interpolated inside the true value's bucket


def test_no_observations_give_no_quantile():
    assert quantile(Buckets(BOUNDS, (0,) * 22), 0.5) is None


def test_overflow_bucket_answers_its_lower_bound():
    counts = [0] * 22
    counts[-1] = 5
    assert quantile(Buckets(BOUNDS, tuple(counts)), 0.99) == BOUNDS[-1]


def test_cumulative_buckets_difference_is_the_last_interval():
    early = Buckets(BOUNDS, from_samples([10.0] * 100, BOUNDS))
    late = Buckets(BOUNDS, from_samples([10.0] * 100 + [3000.0] * 50, BOUNDS))
    window = late.minus(early)
    assert window is not None and window.total == 50
    assert 2048 <= quantile(window, 0.5) <= 4096


def test_a_reset_distribution_is_not_differenced():
    early = Buckets(BOUNDS, from_samples([10.0] * 100, BOUNDS))
    late = Buckets(BOUNDS, from_samples([10.0] * 5, BOUNDS))
    assert late.minus(early) is None


def test_several_quantiles_in_one_pass_equal_each_alone():
    from collectors.tpu.distribution import quantiles

    rng = random.Random(5)
    for _ in range(50):
        values = [rng.lognormvariate(rng.uniform(0, 12), rng.uniform(0.1, 2)) for _ in range(300)]
        b = Buckets(BOUNDS, from_samples(values, BOUNDS))
        qs = (0.5, 0.9, 0.99)
        assert quantiles(b, qs) == [quantile(b, q) for q in qs]
