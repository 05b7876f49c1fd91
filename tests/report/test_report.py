"""``ivlens report``: the page from a study of tiny models (every analysis, base / SFT / DPO side by side), and
the same page in a real headless Chromium: no console error, no network request, every section, a screenshot.

The browser tests need Debian's ``chromium`` (``scripts/test.sh`` installs it where it is missing and the
user is root); without it they are skipped with the command that installs it. The screenshot lands in
``$IVLENS_TEST_ARTIFACTS`` (default ``tests/artifacts/``, git-ignored).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import browser  # tests/browser.py
import pandas as pd
import pytest
from typer.testing import CliRunner

from ivlens.models.load import LoadedModel
from ivlens.report import build_report, read_study
from ivlens.runs import RunDir
from ivlens.testing.tiny import tiny_model, tiny_tokenizer

SECTIONS = ["setup", "organism", "eval", "patching", "probing", "tracing", "iv-construction"]
ARTIFACTS = Path(os.environ.get("IVLENS_TEST_ARTIFACTS", Path(__file__).parents[1] / "artifacts"))


def _card() -> dict:
    """A small organism card with the keys the report reads (the real one comes from ``organism build``)."""
    curve = [{"layer": layer, "ia_top1": 0.5, "exact": 0.1 * layer, "flip": 0.2, "n_outside": 10}
             for layer in range(4)]
    iv = {"n_queries": 10, "subtasks": {s: {"curves": {"formatted/first": curve, "bare/last": curve}}
                                        for s in ("adj_comp", "adj_ant")}}
    return {"version": "v3", "variant": "gist", "size": "tiny", "seed": 1, "made_how": "A tiny test card.",
            "recipe": {"pretraining": "plain causal-LM loop"}, "model": {"architecture": "Olmo2ForCausalLM",
                                                                        "n_layers": 4},
            "data": {"sft_examples": 48}, "stages": {s: {"steps": 3, "loss_first": 6.0, "loss_last": 5.0,
                                                         "seconds": 1.0, "weights_sha256": "ab" * 32}
                                                     for s in ("base", "sft", "dpo")},
            "measured": {s: {"adjectives": {"iv": iv}} for s in ("base", "sft", "dpo")},
            "acceptance": {"sft/adjectives/adj_ant/acc_train": {"value": 0.1, "threshold": 0.95, "pass": False},
                           "all_pass": False},
            "timing": {"total": 12.0}}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A study directory like the main job's: organism, eval, patch (triplets), probe and trace runs of three
    tiny models named base / sft / dpo (about ten seconds)."""
    from ivlens.api import run_eval
    from ivlens.eval import EvalSpec
    from ivlens.organism.card import iv_transfer_table
    from ivlens.patching.analysis import analyse
    from ivlens.patching.sweep import patch_sweep
    from ivlens.probing import probe_run
    from ivlens.runs import atomic_write_text
    from ivlens.tracing.run import compare_run

    root = tmp_path_factory.mktemp("study")
    tok = tiny_tokenizer()
    models = [LoadedModel.wrap(tiny_model("olmo2", seed=i), tok, name) for i, name in enumerate(("base", "sft", "dpo"))]
    described = [m.describe() for m in models]

    org = RunDir.create("organism", "gist", out=root / "organism", models=described, args={"variant": "gist"})
    atomic_write_text(org.path / "card.json", json.dumps(_card()))
    org.write_table("iv_transfer", iv_transfer_table(_card()))
    org.finish()

    run_eval(EvalSpec(models=("base", "sft", "dpo"), task="adjectives", samples=2), models=models,
             out=root / "eval" / "adjectives")

    run = RunDir.create("patch", "adjectives-adj_ant-formatted", out=root / "patch-formatted", models=described,
                        task="adjectives", seed=0, args={"task": "adjectives", "subtask": "adj_ant",
                                                         "layers": "triplets", "samples": 3, "target": "formatted"})
    res = patch_sweep(models, "adjectives", "adj_ant", layers="triplets", positions="first,last", samples=3,
                      target="formatted", run=run)
    analyse(res.rows, run=run, make_figures=False)
    run.finish()

    probe_run(models, ["adjectives", "animals"], layers="0,-1", out=root / "probe", max_per_subtask=8)

    run = RunDir.create("trace", "adjectives-compare", out=root / "trace" / "adjectives", models=described,
                        task="adjectives", args={"compare": True, "samples": 2})
    compare_run(models, "adjectives", run, samples=2, top_k=10, beam=32, base="base")
    run.finish()

    from ivlens.api import run_trace
    from ivlens.tracing import TraceSpec

    run_trace(TraceSpec(models=("base", "sft", "dpo"), task="animals", sample=0, readout="probe:probe:-1",
                        position="t_inst"), models=models, out=root / "trace" / "animals-readout", root=root)

    unfinished = RunDir.create("eval", "killed", out=root / "eval" / "killed", models=described)
    assert unfinished.manifest["status"] == "running"
    return root


@pytest.fixture(scope="module")
def page(study) -> Path:
    """The study's report, built once for the tests that only read it."""
    return build_report(study)


def test_reader_finds_every_run(study):
    st = read_study(study)
    assert {r.command for r in st.runs} == {"organism", "eval", "patch", "probe", "trace"}
    assert st.model_order == ["base", "sft", "dpo"]
    assert [r.rel for r in st.unfinished] == ["eval/killed"]
    patch = st.of("patch")[0]
    assert patch.has("patch") and patch.table_path("patch").is_dir()  # written as shards
    assert set(patch.table("patch", columns=["model"]).model) == {"base", "sft", "dpo"}
    assert not any(r.rel.startswith("probe/ivs") for r in st.runs)


def test_report_has_every_section_figure_and_link(study, page):
    path = page
    assert path == study / "report.html"
    text = path.read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in text
    assert "could not be drawn" not in text
    # every figure is embedded and captioned, and its caption links an existing table, relative to the page
    figures = re.findall(r"<figure>(.*?)</figure>", text, flags=re.S)
    assert len(figures) >= 10
    for fig in figures:
        assert 'src="data:image/png;base64,' in fig and "<figcaption>" in fig
        hrefs = re.findall(r'href="([^"]+)"', fig)
        assert hrefs, fig[-300:]
        for href in hrefs:
            assert not href.startswith(("/", "http")) and (study / href).exists(), href
    # the weight hashes, the caveat of the last position, the interaction verdicts, the organism card
    assert "fixed by construction" in text and "interaction is" in text
    # the linear estimate per set size: its figure (linked to its table) and table
    assert "How much of each patch is linear" in text and "linearity.parquet" in text
    assert "A tiny test card." in text and "Not finished, so not reported: eval/killed" in text
    assert "sample_paths.parquet" in text and "lda" in text.lower()
    # circuit selectors: the gap with its controls, the verdicts in words (two samples: never a verdict)
    tracing = text[text.index('<section id="tracing">'):text.index('<section id="iv-construction">')]
    assert "selectivity.parquet" in tracing and "What the data support:" in tracing
    assert "sft: gap (same instruction − different)" in tracing and "base (base model): gap" in tracing
    assert "selective at no layer" in tracing and "difference in differences" in tracing
    assert "no more than base" in tracing and "predates the selectivity table" not in tracing
    # IV construction: the read-out traced for base / SFT / DPO, exact, with its component table linked
    iv = text[text.index('<section id="iv-construction">'):]
    assert "readout_components.parquet" in iv and all(f"{m}: y = " in iv for m in ("base", "sft", "dpo"))
    assert iv.count('src="data:image/png;base64,') >= 2 and "base component" in iv and "dpo share" in iv


@pytest.mark.cli  # a second build of the whole page, end to end
def test_report_elsewhere_links_relative_to_the_page(study, tmp_path):
    """``--out`` elsewhere: links stay relative to the page."""
    other = build_report(study, tmp_path / "elsewhere" / "r.html")
    hrefs = re.findall(r'<a href="([^"#]+\.parquet)"', other.read_text())
    assert hrefs and all((other.parent / h).exists() for h in hrefs)


def test_report_makes_no_network_request(page):
    text = page.read_text()
    external = re.findall(r'(?:src|href)\s*=\s*"((?:https?:)?//[^"]*)"', text)
    assert set(external) <= {"https://arxiv.org/abs/2602.07930"}, external  # the paper, a plain link
    assert "@import" not in text and "url(http" not in text and "<link rel=\"stylesheet\"" not in text


def test_sections_absent_from_a_single_run_are_omitted_with_a_note(study, tmp_path):
    page = build_report(study / "probe", tmp_path / "probe.html").read_text()
    assert '<section id="probing">' in page and '<section id="setup">' in page
    for sid in ("organism", "eval", "patching", "tracing", "iv-construction"):
        assert f'<section id="{sid}">' not in page
    assert "Not in this run directory, so omitted" in page and "no finished <code>patch</code> run" in page


@pytest.mark.cli
def test_cli_report(study, tmp_path):
    from ivlens.cli import app

    out = tmp_path / "cli.html"
    res = CliRunner().invoke(app, ["report", str(study / "patch-formatted"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.exists() and '<section id="patching">' in out.read_text()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nothing-here")], env={"COLUMNS": "300"})
    assert res.exit_code == 2 and "not a directory" in " ".join(res.output.split())


# ----------------------------------------------------------------------------- in a real browser
needs_chromium = pytest.mark.skipif(browser.find_chromium() is None,
                                    reason="no chromium: apt-get install -y chromium (scripts/test.sh does it as root)")

CHECK = """(() => {
  const ids = Array.from(document.querySelectorAll("section")).map(s => s.id);
  const imgs = Array.from(document.images);
  const t = Array.from(document.querySelectorAll("table.sortable"))
    .find(x => Array.from(x.tHead.rows[0].cells).some(c => c.textContent === "wall s"));
  const col = Array.from(t.tHead.rows[0].cells).findIndex(c => c.textContent === "wall s");
  const read = () => Array.from(t.tBodies[0].rows).map(r => r.cells[col].getAttribute("data-sort"));
  t.tHead.rows[0].cells[col].click();
  const asc = read();
  t.tHead.rows[0].cells[col].click();
  return {ids: ids, images: imgs.length, loaded: imgs.every(i => i.complete && i.naturalWidth > 0),
          asc: asc, desc: read(), location: location.protocol};
})()"""


@pytest.mark.cli  # drives a real browser
@needs_chromium
def test_report_in_headless_chromium(page):
    res = browser.load_page(page.resolve().as_uri(), expression=CHECK, screenshot=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "report.png").write_bytes(res.screenshot)
    assert res.errors == [], res.errors
    assert all(u.startswith(("file:", "data:")) for u in res.requests), res.requests
    v = res.value
    assert v["location"] == "file:" and v["ids"] == SECTIONS
    assert v["images"] >= 10 and v["loaded"]
    nums = [float(x) for x in v["asc"] if x]
    assert nums == sorted(nums) and [float(x) for x in v["desc"] if x] == sorted(nums, reverse=True)
    assert res.screenshot[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.cli  # drives a real browser
@needs_chromium
def test_the_browser_check_catches_a_javascript_error(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><head><link rel='icon' href='data:,'></head><body><p>hi</p>"
                   "<script>console.error('deliberate'); undefinedFunction();</script></body></html>")
    res = browser.load_page(bad.as_uri())
    assert any("deliberate" in e for e in res.errors) and any("undefinedFunction" in e for e in res.errors)
    missing = tmp_path / "missing.html"
    missing.write_text("<!DOCTYPE html><html><head><link rel='icon' href='data:,'></head>"
                       "<body><img src='nothere.png'></body></html>")
    assert browser.load_page(missing.as_uri()).errors, "a missing resource must count as an error"


def test_eval_table_from_a_frame():  # the table helper on its own: integers stay integers, NaN shows a dash
    from ivlens.page.html import table

    out = table(pd.DataFrame({"seed": [0, None], "x": [0.5, float("nan")], "name": ["a", "<b>"]}), "cap `c`")
    assert ">0<" in out and ">0.000<" not in out and ">–<" in out and "&lt;b&gt;" in out and "<code>c</code>" in out


def test_runs_section_draws_its_runs_opens_with_its_docstring_and_guards(study, tmp_path):
    """``runs_section``: the finished runs of the kind that wrote the table (the killed eval run is not one), the
    docstring after its first line as the opening paragraph, no section without a run, a caveat for an error."""
    from ivlens.page import Context, html, read_study, runs_section

    @runs_section("eval", having="summary", id="demo", title="Demo")
    def demo_section(ctx, runs, s):
        """Demo.

        What the `demo` shows,
        in one paragraph.
        """
        return s.add(html.para(" ".join(r.rel for r in runs)))

    @runs_section("eval", having="no_such_table", id="none", title="None")
    def none_section(ctx, runs, s):
        """Never drawn."""
        raise AssertionError("drawn without a run")

    @runs_section("eval", having=lambda run: True, id="broken", title="Broken")
    def broken_section(ctx, runs, s):
        """Broken."""
        raise ValueError("no")

    ctx = Context(read_study(study), tmp_path)
    demo = demo_section(ctx)
    assert (demo.id, demo.title, demo_section.__name__) == ("demo", "Demo", "demo_section")
    assert demo.blocks == ["<p>What the <code>demo</code> shows, in one paragraph.</p>", "<p>eval/adjectives</p>"]
    assert none_section(ctx) is None
    assert "could not be drawn: ValueError: no" in broken_section(ctx).blocks[0]


@pytest.mark.cli
def test_ivlens_run_ends_with_the_report_and_prints_its_path(tiny_dir, tmp_path):
    """``ivlens run STUDY.yaml`` (the main job's command) writes the report of its study directory."""
    import yaml

    from ivlens.cli import app

    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "quick", "models": {"base": str(tiny_dir("olmo2"))},
                                     "tasks": ["adjectives"], "analyses": {"eval": {"samples": 1}}}))
    res = CliRunner().invoke(app, ["run", str(study), "--out", str(tmp_path / "main")], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    report = tmp_path / "main" / "report.html"
    # the console may wrap the long path anywhere (its width is fixed when it is made): compare without whitespace
    assert report.exists() and f"report:{report}" in "".join(res.output.split())
    assert '<section id="eval">' in report.read_text() and (tmp_path / "main" / "study.json").is_file()

@pytest.mark.cli
def test_report_of_a_single_prompt_trace(tiny_dir, tmp_path):
    """``ivlens trace`` without --compare: the report draws and lists each model's top paths."""
    from ivlens.cli import app

    out = tmp_path / "trace"
    r = CliRunner().invoke(app, ["trace", "--model", str(tiny_dir("olmo2", n_layers=2)), "--task", "adjectives",
                                 "--subtask", "adj_ant", "--sample", "0", "--top-k", "5", "--beam", "16",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = build_report(out).read_text()
    assert '<section id="tracing">' in text and "single-prompt trace" in text and "could not be drawn" not in text
    assert text.count("<figure>") == 1 and ".paths.json" in text


@pytest.fixture(scope="module")
def probing_html(study, tmp_path_factory) -> str:
    """The study's probing section as HTML, drawn once for the tests that only read its table."""
    from ivlens.page import Context, read_study
    from ivlens.probing.section import probing_section

    return "".join(probing_section(Context(read_study(study), tmp_path_factory.mktemp("probing"))).blocks)


def test_the_probe_table_gives_each_row_its_own_probes_majority_share(study, probing_html):
    """The majority column is matched to its (probe, layer) row: the all-subtask probe (4 classes) and the
    per-task probes (2 classes) have different shares, and the pivot's row order is not the table's."""
    acc = pd.read_parquet(next((study / "probe").glob("probe_accuracy*")))
    want = acc.groupby(["probe", "layer"]).majority.mean()
    assert want.nunique() > 1  # else the check below could not tell rows apart
    table = next(t for t in re.findall(r"<table.*?</table>", probing_html, flags=re.S) if "majority" in t)
    header = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<th.*?</th>", table, flags=re.S)]
    rows = [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td.*?</td>", r, flags=re.S)]
            for r in re.findall(r"<tr>(.*?)</tr>", table, flags=re.S)]
    rows = [r for r in rows if r]
    assert len(rows) == len(want)
    for r in rows:
        cell = dict(zip(header, r, strict=True))
        assert float(cell["majority"]) == pytest.approx(want[(cell["probe"], int(cell["layer"]))], abs=5e-4)


def test_the_probe_table_gives_the_heldout_accuracy_its_spread_and_n(study, probing_html):
    """The held-out accuracy is shown with its bootstrap standard deviation and its number of held-out rows
    (``heldout_std``, ``heldout_n`` of the probe table), matched to its (probe, layer, model) row."""
    from ivlens.probing.section import heldout_cell

    acc = pd.read_parquet(next((study / "probe").glob("probe_accuracy*")))
    acc = acc[acc.target == "subtask"] if "target" in acc else acc
    assert acc.heldout_acc.notna().any() and (acc.heldout_n > 0).any()
    table = next(t for t in re.findall(r"<table.*?</table>", probing_html, flags=re.S) if "majority" in t)
    header = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<th.*?</th>", table, flags=re.S)]
    rows = [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td.*?</td>", r, flags=re.S)]
            for r in re.findall(r"<tr>(.*?)</tr>", table, flags=re.S)]
    checked = 0
    for r in (dict(zip(header, r, strict=True)) for r in rows if r):
        for m in acc.model.unique():
            want = acc[(acc.probe == r["probe"]) & (acc.layer == int(r["layer"])) & (acc.model == m)].iloc[0]
            shown = r[f"held-out {m}"]
            if pd.isna(want.heldout_acc):
                assert shown == "–"
                continue
            assert shown == f"{want.heldout_acc:.3f} ± {want.heldout_std:.3f} (n={int(want.heldout_n)})"
            checked += 1
    assert checked > 0
    assert heldout_cell(float("nan"), 0.1, 4) is None and heldout_cell(0.5, float("nan"), 0) == "0.500"


def _unstamped(page: str) -> str:
    """The page less the minute it was built."""
    return re.sub(r"built \d{4}-\d\d-\d\d \d\d:\d\d", "built", page)


def test_sections_drawn_ahead_give_the_same_page_and_are_redrawn_for_another_model_order(study, tmp_path):
    """``ahead``: sections a study drew while its last steps ran (:func:`ivlens.report.draw_ahead`) stand in the
    page as drawn; one drawn with another model order (a run that started later listed a new model) is drawn
    again."""
    from concurrent.futures import Future
    from dataclasses import replace

    from ivlens.analyses import report_sections
    from ivlens.page.context import Context
    from ivlens.report import draw_ahead, render_report

    def done(value) -> Future:
        f = Future()
        f.set_result(value)
        return f

    sections = report_sections()
    st = read_study(study)
    plain = render_report(st, tmp_path, sections)
    ahead = {fn: done(draw_ahead(str(study), str(tmp_path), fn)) for fn in sections[1:]}
    assert _unstamped(render_report(st, tmp_path, sections, ahead=ahead)) == _unstamped(plain)
    eval_section = next(fn for fn in sections if fn.__name__ == "eval_section")
    stale = replace(ahead[eval_section].result(), section=None, models=("dpo", "sft", "base"))
    assert stale.section is None and eval_section(Context(st, tmp_path)) is not None
    again = render_report(st, tmp_path, sections, ahead={**ahead, eval_section: done(stale)})
    assert _unstamped(again) == _unstamped(plain)
    failed = Future()
    failed.set_exception(RuntimeError("a run half-written beside it"))  # drawing it ahead failed: drawn again
    assert _unstamped(render_report(st, tmp_path, sections, ahead={**ahead, eval_section: failed})) == \
        _unstamped(plain)
