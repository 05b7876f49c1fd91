"""The registry of analyses (:mod:`ivlens.analyses`) is consistent with what reads it: specs, the report's page, the
study's steps, run directories' manifests."""

from __future__ import annotations

import pytest

from ivlens.analyses import ANALYSES, BY_NAME, SPECS, analysis_of, report_sections, spec_from_manifest
from ivlens.report.sections import OMITTED, SECTIONS, setup_section
from ivlens.specs import SpecError


def test_each_entry_names_its_spec_and_the_names_are_distinct():
    assert [a.name for a in ANALYSES] == list(BY_NAME) == list(SPECS)
    assert all(a.spec.analysis == a.name for a in ANALYSES)
    assert [a.order for a in ANALYSES] == sorted({a.order for a in ANALYSES})
    assert all(d in BY_NAME and BY_NAME[d].order < a.order for a in ANALYSES for d in a.depends_on)


def test_the_report_page_is_the_setup_then_each_analysis_sections_in_registry_order():
    assert report_sections() == (setup_section, *[s for a in ANALYSES for s in a.report])
    own = [s for s in report_sections() if s in SECTIONS]  # the sections that live in ivlens.report
    assert tuple(own) == SECTIONS and set(OMITTED) == {s.__name__ for s in SECTIONS[1:]}


def test_a_manifest_names_its_analysis():
    spec = BY_NAME["eval"].spec(models=("m",), task="adjectives", samples=2)
    assert analysis_of(spec).name == "eval"
    assert spec_from_manifest({"command": "eval", "spec": spec.model_dump(mode="json")}) == spec
    with pytest.raises(SpecError, match=f"records no {', '.join(SPECS)} spec"):
        spec_from_manifest({"command": "sweep", "spec": {}})
