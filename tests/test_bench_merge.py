"""`python -m bench --only S --merge`: a rerun section replaces the full run's, and the report says so."""
from bench.__main__ import merge
from bench.report import render


def test_a_rerun_section_replaces_figures_error_and_duration_and_leaves_the_rest():
    whole = {"started": "2026-12-07 21:08:00 UTC", "rest": {"a": 1}, "attribution": None,
             "errors": {"attribution": "Traceback: collided"}, "durations_s": {"rest": 60, "attribution": 5}}
    rerun = {"started": "2026-12-07 23:31:00 UTC", "attribution": {"ratio": 1.05}, "errors": {},
             "durations_s": {"attribution": 55}}
    merged = merge(whole, rerun, {"attribution"})
    assert merged["attribution"] == {"ratio": 1.05} and merged["rest"] == {"a": 1}
    assert merged["errors"] == {} and merged["durations_s"] == {"rest": 60, "attribution": 55}
    assert merged["reruns"] == {"attribution": "2026-12-07 23:31:00 UTC"}
    assert whole["errors"] == {"attribution": "Traceback: collided"}  # the full run's figures are not mutated


def test_a_rerun_that_fails_keeps_its_error_not_the_old_figures():
    whole = {"started": "t0", "proxy": {"old": True}, "errors": {}, "durations_s": {}}
    rerun = {"started": "t1", "errors": {"proxy": "Traceback: wrk missing"}, "durations_s": {"proxy": 1}}
    merged = merge(whole, rerun, {"proxy"})
    assert "proxy" not in merged and merged["errors"] == {"proxy": "Traceback: wrk missing"}


def test_the_report_names_the_rerun_sections():
    text = render({"started": "t0", "errors": {}, "reruns": {"attribution": "2026-12-07 23:31:00 UTC"}})
    assert "attribution on 2026-12-07 23:31:00 UTC" in text
    assert "Rerun later" not in render({"started": "t0", "errors": {}})
