"""Unit tests for the benchmark's figures: workload 3's fraction of the cores' limit."""

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / 'bench'
sys.path.insert(0, str(BENCH))

from harness.report import compare  # noqa: E402
from harness.workloads import CaseResult, build_workload  # noqa: E402
from harness.wrk import WrkResult  # noqa: E402


def _run(rate: float) -> WrkResult:
    return WrkResult(requests_per_sec=rate, requests=int(rate * 10), non_2xx=0,
                     socket_errors=0)


def _case(rates: list[float], limits: list[float]) -> CaseResult:
    case = CaseResult(server='workgate', label='workgate, 2 workers', stand_in=False)
    case.runs = [_run(rate) for rate in rates]
    case.core_limits = limits
    return case


def test_core_fractions_limits_around_run():
    case = _case([380.0, 360.0, 390.0], [400.0, 380.0, 400.0, 420.0])
    assert case.core_fractions == pytest.approx([380 / 390, 360 / 390, 390 / 410])
    assert case.median_core_fraction == pytest.approx(390 / 410)


def test_core_fractions_case_cut_short():
    # The second server start failed: run_case measured a limit before it
    # and one more after the loop, so the one run keeps both neighbours.
    case = _case([300.0], [400.0, 200.0, 500.0])
    assert case.core_fractions == pytest.approx([300 / 300])


def test_core_fractions_missing_limit_after():
    # Not produced by run_case; a hand-edited result may lack a limit.
    case = _case([300.0], [400.0])
    assert case.core_fractions == pytest.approx([0.75])


def test_core_fractions_without_limits():
    case = _case([300.0], [])
    assert case.core_fractions == []
    assert case.median_core_fraction is None


def test_compare_cpu_row_median_fraction():
    workload = build_workload('cpu', 1000)
    case = _case([380.0, 360.0, 390.0], [400.0, 380.0, 400.0, 420.0])
    rows, ratios = compare(workload, [case], None)
    assert rows[0].ratio == '0.95'
    assert rows[0].reference == "of cores' limit (mean 400 req/s, between runs)"
    assert ratios == [{'server': 'workgate', 'name': 'fraction_of_core_limit',
                       'value': pytest.approx(390 / 410)}]
