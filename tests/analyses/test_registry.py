"""The registry of analyses (:mod:`ivlens.analyses`) is consistent with what reads it: specs, the report's page, the
study's steps, run directories' manifests."""

from __future__ import annotations

import pytest

from ivlens.analyses import ANALYSES, BY_NAME, SPECS, analysis_of, report_sections, spec_from_manifest
from ivlens.page import omitted_as
from ivlens.page.setup import setup_section
from ivlens.specs import SpecError


def test_each_entry_names_its_spec_and_the_names_are_distinct():
    assert [a.name for a in ANALYSES] == list(BY_NAME) == list(SPECS)
    assert all(a.spec.analysis == a.name for a in ANALYSES)
    assert [a.order for a in ANALYSES] == sorted({a.order for a in ANALYSES})
    assert all(d in BY_NAME and BY_NAME[d].order < a.order for a in ANALYSES for d in a.depends_on)


def test_the_report_page_is_the_setup_then_each_analysis_sections_in_registry_order():
    assert report_sections() == (setup_section, *[s for a in ANALYSES for s in a.report])
    for a in ANALYSES:  # each section lives in its analysis's package and names that analysis when omitted
        for s in a.report:
            assert s.__module__.split(".")[:2] in (["ivlens", a.spec.__module__.split(".")[1]], ["ivlens", "analyses"])
            assert omitted_as(s)[1].split()[0] == a.name, (s.__name__, omitted_as(s))


def test_the_report_draws_the_registry_sections_by_default():
    """``build_report`` without ``sections=`` draws every registered analysis's sections (the logit lens too), not a
    list of its own; the default is the registry's, read when the page is drawn."""
    import inspect

    from ivlens.report import render_report

    assert inspect.signature(render_report).parameters["sections"].default is None
    names = [s.__name__ for s in report_sections()]
    assert "logit_lens_section" in names and names[0] == "setup_section"


def test_a_manifest_names_its_analysis():
    spec = BY_NAME["eval"].spec(models=("m",), task="adjectives", samples=2)
    assert analysis_of(spec).name == "eval"
    assert spec_from_manifest({"command": "eval", "spec": spec.model_dump(mode="json")}) == spec
    with pytest.raises(SpecError, match=f"records no {', '.join(SPECS)} spec"):
        spec_from_manifest({"command": "sweep", "spec": {}})
