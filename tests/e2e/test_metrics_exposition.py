"""Checks tessera-metrics-sample's exposition with prometheus_client's parser.

An independent parser catches escaping or formatting mistakes that a test written against
our own expectations of the text would share. The expected values mirror
tests/tools/metrics_sample.cc; keep the two in sync.
"""

import math
import os
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

CONST_LABELS = {"tier": "test"}

# Mirrors kObservations, kNumObserverThreads, kNumRounds and the bucket bounds in the tool.
OBSERVATIONS = [0.00390625, 0.0625, 0.09375, 0.125, 0.5, 1.0, 2.5, 10.0, 12.25, 1024.0]
NUM_OBSERVATIONS_PER_VALUE = 8 * 1000
BUCKET_BOUNDS = [0.005, 0.1, 1.0, 10.0]


@pytest.fixture(scope="module")
def exposition() -> str:
    build_dir = Path(os.environ.get("TESSERA_BUILD_DIR", "build"))
    binary = build_dir / "tests" / "tessera-metrics-sample"
    if not binary.is_file():
        pytest.fail(
            f"{binary} not found: build it with "
            f"`cmake --build {build_dir} --target tessera-metrics-sample`, "
            "or point TESSERA_BUILD_DIR at the build directory that has it",
            pytrace=False,
        )
    result = subprocess.run([str(binary)], capture_output=True, check=True, timeout=60)
    return result.stdout.decode("utf-8")


@pytest.fixture(scope="module")
def families(exposition: str) -> dict:
    parsed = {}
    for family in text_string_to_metric_families(exposition):
        assert family.name not in parsed, f"family {family.name} appears twice"
        parsed[family.name] = family
    return parsed


def samples_by_labels(family) -> dict:
    """{frozenset of non-const labels: (sample name, value)}, after checking const labels."""
    out = {}
    for sample in family.samples:
        labels = dict(sample.labels)
        for name, value in CONST_LABELS.items():
            assert labels.pop(name, None) == value, f"{sample} lacks const label {name}={value}"
        key = (sample.name, frozenset(labels.items()))
        assert key not in out, f"duplicate sample {sample}"
        out[key] = sample.value
    return out


def test_exposition_parses_into_the_expected_families(families):
    # prometheus_client drops a counter's _total suffix from the family name.
    assert sorted(families) == [
        "tessera_sample_inf",
        "tessera_sample_latency_seconds",
        "tessera_sample_nan",
        "tessera_sample_requests",
        "tessera_sample_temperature_celsius",
    ]
    assert families["tessera_sample_requests"].type == "counter"
    assert families["tessera_sample_latency_seconds"].type == "histogram"
    for name in ("tessera_sample_inf", "tessera_sample_nan", "tessera_sample_temperature_celsius"):
        assert families[name].type == "gauge"


def test_counter_keeps_its_total_name_verbatim(exposition):
    assert "# TYPE tessera_sample_requests_total counter\n" in exposition
    assert "# HELP tessera_sample_requests_total " in exposition


def test_help_text_round_trips_backslash_newline_and_quotes(families):
    assert families["tessera_sample_requests"].documentation == (
        'Requests by path.\nA second line with a backslash \\ and "quotes".'
    )
    assert families["tessera_sample_latency_seconds"].documentation == "Latency."
    assert families["tessera_sample_inf"].documentation == "A gauge at +Inf."


def test_counter_label_values_round_trip_escapes_and_utf8(families):
    name = "tessera_sample_requests_total"
    assert samples_by_labels(families["tessera_sample_requests"]) == {
        (name, frozenset({("path", 'say "hi"'), ("note", "back\\slash")})): 1.0,
        (name, frozenset({("path", "line1\nline2"), ("note", "café ✓")})): 2.0,
        (name, frozenset({("path", ""), ("note", "plain")})): 0.5,  # the -7 increment was ignored
    }


def test_gauges_keep_negative_fractional_and_large_values_exactly(families):
    name = "tessera_sample_temperature_celsius"
    assert samples_by_labels(families[name]) == {
        (name, frozenset({("sensor", "negative")})): -12.5,
        (name, frozenset({("sensor", "fraction")})): 0.1,
        (name, frozenset({("sensor", "large")})): 1e20,
        (name, frozenset({("sensor", "moved")})): 2.75,
    }


def test_inf_and_nan_gauges(families):
    (inf_value,) = samples_by_labels(families["tessera_sample_inf"]).values()
    assert inf_value == math.inf
    (nan_value,) = samples_by_labels(families["tessera_sample_nan"]).values()
    assert math.isnan(nan_value)


def test_histogram_buckets_count_and_sum_are_exact(families):
    name = "tessera_sample_latency_seconds"
    op = ("op", "prefill")
    expected = {}
    for bound, le in zip(BUCKET_BOUNDS + [math.inf], ["0.005", "0.1", "1", "10", "+Inf"]):
        num_at_or_below = sum(1 for v in OBSERVATIONS if v <= bound) * NUM_OBSERVATIONS_PER_VALUE
        expected[(name + "_bucket", frozenset({op, ("le", le)}))] = num_at_or_below
    expected[(name + "_count", frozenset({op}))] = len(OBSERVATIONS) * NUM_OBSERVATIONS_PER_VALUE
    # Dyadic observations: this float sum is exact, so == is the right comparison.
    expected[(name + "_sum", frozenset({op}))] = sum(OBSERVATIONS) * NUM_OBSERVATIONS_PER_VALUE

    actual = samples_by_labels(families[name])
    assert actual == expected
    # Spelled-out values guard the mirror above against drifting with the tool.
    assert [actual[(name + "_bucket", frozenset({op, ("le", le)}))] for le in ["0.005", "0.1", "1", "10", "+Inf"]] == [
        8000, 24000, 48000, 64000, 80000,
    ]
    assert actual[(name + "_sum", frozenset({op}))] == 8404281.25


def test_every_sample_line_carries_the_const_labels(exposition):
    sample_lines = [line for line in exposition.splitlines() if line and not line.startswith("#")]
    assert len(sample_lines) == 16
    for line in sample_lines:
        assert '{tier="test"' in line, line
