"""Model organisms: data, tokenizer, gist mask, names, and a cut-down (``--size tiny``) build.

Fast tests run the whole pipeline on the tiny size (seconds of training, too short to learn the tasks);
the real build and its acceptance figures are checked by ``test_organism_build_slow.py`` (``-m slow``).
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from ivlens.organism import data as D
from ivlens.organism.card import organism_split, read_card
from ivlens.organism.gist import gist_attention_mask, instruction_token_span
from ivlens.organism.paths import (
    BUILD_MARKER,
    ORGANISM_VERSION,
    organism_dir,
    parse_organism_name,
    resolve_organism,
)
from ivlens.organism.tokenizer import train_tokenizer
from ivlens.runs import content_hash
from ivlens.tasks.selection import fixed_query_split
from ivlens.testing.tiny import tiny_model


@pytest.fixture(scope="module")
def tasks():
    return D.load_tasks()


@pytest.fixture(scope="module")
def org_tok(tasks):
    return train_tokenizer(D.pretraining_sentences(tasks, 0)[:3000], D.task_words(tasks), 1200)


# ------------------------------------------------------------------------------------------ data
def test_query_split_is_fixed_disjoint_and_complete(tasks):
    for task in tasks.values():
        a, b = D.organism_query_split(task), D.organism_query_split(task)
        assert a == b
        assert not set(a["train"]) & set(a["heldout"])
        assert sorted(a["train"] + a["heldout"]) == sorted(s.query for s in task.samples)
        assert abs(len(a["train"]) / len(task.samples) - D.TRAIN_QUERY_SHARE) < 0.01
    # the organisms' split is the one split rule with the recipe's share and seed, and it is what every organism of
    # this version recorded in its card (the hash was taken before the rule moved to ivlens.tasks.selection)
    assert all(D.organism_query_split(t) == fixed_query_split(t, D.TRAIN_QUERY_SHARE, D.SPLIT_SEED)
               for t in tasks.values())
    assert content_hash({n: D.organism_query_split(t) for n, t in tasks.items()}) == (
        "b2bf0846510c4accf23883b800e0e8e092b72331cb20910d3e71b5186a1d564c")


def test_sft_uses_training_queries_and_phrasings_only(tasks, org_tok):
    ex = D.sft_examples(tasks, org_tok, 0, n_instructed=600, plain_share=0.25, gist_share=0.5, chat_share=0.3)
    held_q = {q for t in tasks.values() for q in D.organism_query_split(t)["heldout"]}
    held_r = {r for t in tasks.values() for s in D.split_rephrasings(t).values() for r in s["heldout"]}
    instructed = [e for e in ex if e.kind != "plain"]
    assert len(instructed) == 600 and abs(sum(e.kind == "plain" for e in ex) / len(ex) - 0.25) < 0.01
    for e in instructed:
        a, b = e.instruction_span
        instruction = e.prompt[a:b]
        assert instruction not in held_r
        query = e.prompt.rsplit(": ", 1)[1].split(".")[0]
        assert query not in held_q, e.prompt
        assert "Answer:" in e.prompt or "<|assistant|>" in e.prompt


def test_pretraining_states_every_fact_without_instruction_format(tasks):
    sents = D.pretraining_sentences(tasks, 0)
    text = "\n".join(sents)
    assert "Answer:" not in text and "Adjective:" not in text
    for s in tasks["adjectives"].samples:
        for a in s.answers["adj_ant"]:
            assert f"the antonym of {s.query} is {a}." in text
    assert "can the penguin fly? no." in text


def test_pretraining_repeats_each_relation_as_its_table_says(tasks):
    from collections import Counter

    counts = Counter(D.pretraining_sentences(tasks, 0))
    crow = next(s for s in tasks["animals"].samples if s.query == "crow")
    big = next(s for s in tasks["adjectives"].samples if s.query == "big")
    assert counts[f"the antonym of big is {big.answers['adj_ant'][0]}."] == D.FACT_REPEATS["adj_ant"]
    assert counts[f"the comparative of big is {big.answers['adj_comp'][0]}."] == D.FACT_REPEATS["adj_comp"]
    assert counts[f"the color of the crow is {crow.answers['anim_color'][0]}."] == D.FACT_REPEATS["anim_color"]
    assert counts["can the crow fly? yes."] == D.FACT_REPEATS["can_fly"]
    n_facts = sum(len(s.answers[sub]) * len(D.COLOUR_FORMS) * D.FACT_REPEATS[sub]
                  for t in tasks.values() for s in t.samples for sub in t.subtasks)
    n_fillers = sum(len(t.samples) for t in tasks.values())
    assert sum(counts.values()) == n_facts + n_fillers


def test_dpo_pairs_are_contrastive(tasks, org_tok):
    pairs = D.dpo_pairs(tasks, org_tok, 0)
    assert pairs and all(p["chosen"] != p["rejected"] for p in pairs)
    assert {p["kind"] for p in pairs} == {"other_subtask", "wrong_fact", "malformed"}
    assert not any(p["prompt"].startswith(org_tok.bos_token) for p in pairs)


# ------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_bos_offsets_and_chat_template(org_tok):
    enc = org_tok("Given an adjective, state its antonym. Adjective: big. Answer:", return_offsets_mapping=True)
    assert enc.input_ids[0] == org_tok.bos_token_id
    assert org_tok.convert_ids_to_tokens(org_tok(" small", add_special_tokens=False).input_ids) == ["Ġsmall"]
    chat = org_tok.apply_chat_template([{"role": "user", "content": "Adjective: big."}], add_generation_prompt=True,
                                       tokenize=False)
    assert chat.startswith(org_tok.bos_token) and chat.endswith("<|assistant|>")
    span = instruction_token_span(enc.offset_mapping, (0, len("Given an adjective, state its antonym.")))
    toks = org_tok.convert_ids_to_tokens(enc.input_ids)
    assert span[0] == 1 and toks[span[1]] == "."
    inst_only = org_tok("Given an adjective, state its antonym.").input_ids
    assert enc.input_ids[: len(inst_only)] == inst_only  # T_inst is the same token in both prompts


# ------------------------------------------------------------------------------------- gist mask
def test_gist_mask_causal_rows_match_2d_mask_and_gist_hides_instruction():
    model = tiny_model("olmo2")
    ids = torch.randint(5, 300, (2, 9))
    am = torch.ones(2, 9, dtype=torch.long)
    am[1, 6:] = 0
    ref = model(ids, attention_mask=am).logits
    causal = model(ids, attention_mask=gist_attention_mask([9, 6], [None, None], 9)).logits
    torch.testing.assert_close(causal[0], ref[0])
    torch.testing.assert_close(causal[1, :6], ref[1, :6])
    gist = model(ids, attention_mask=gist_attention_mask([9, 6], [(1, 4), None], 9)).logits
    torch.testing.assert_close(gist[0, :5], causal[0, :5])  # up to T_inst nothing changes
    assert (gist[0, 5:] - causal[0, 5:]).abs().max() > 1e-3
    m = gist_attention_mask([9], [(1, 4)], 9)[0, 0]  # (q, k)
    assert (m[5:, 1:4] < -1e30).all()  # after T_inst: instruction tokens before T_inst hidden
    assert (m[5:, 0] < -1e30).all()  # and the BOS before the instruction (HIDE_PREFIX)
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    assert (m[5:, 4] == 0).all() and ((m[5:, 5:] == 0) == causal[5:, 5:]).all()  # T_inst and what follows it
    assert ((m[:5] == 0) == causal[:5]).all()  # plain causal up to T_inst


# ---------------------------------------------------------------------------------------- names
def test_names_resolve_to_cache_and_missing_build_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("IVLENS_CACHE", str(tmp_path))
    assert parse_organism_name("organism-sft") == ("gist", "sft")
    assert parse_organism_name("organism-natural-dpo") == ("natural", "dpo")
    assert parse_organism_name("gpt2") is None and resolve_organism("gpt2") is None
    assert organism_dir("natural") == tmp_path / "organism" / ORGANISM_VERSION / "natural"
    with pytest.raises(FileNotFoundError, match="ivlens organism build --variant natural"):
        resolve_organism("organism-natural-base")


# ------------------------------------------------------------------------------- tiny build
@pytest.fixture(scope="module")
def tiny_builds(tiny_organism, tmp_path_factory):
    """Two tiny builds with the same seed: the session's measured one and one more, unmeasured (measuring runs
    after the last stage is saved, so it cannot change the weights the determinism test compares)."""
    from ivlens.organism.build import build_organism

    b = build_organism(out=tmp_path_factory.mktemp("organisms") / "gist", seed=1, size="tiny", measure=False,
                       progress=False)
    return tiny_organism, b


def test_tiny_build_is_deterministic_and_complete(tiny_builds):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ivlens.models.load import load_model

    a, b = tiny_builds
    ca, cb = read_card(a), read_card(b)
    marker = json.loads((a / BUILD_MARKER).read_text())
    assert marker["weights_sha256"] == {s: ca["stages"][s]["weights_sha256"] for s in ("base", "sft", "dpo")}
    # the staging directory (``.gist.building``) was moved into place; under xdist the directory also holds the
    # shared build's marker (tests/run_shared.py)
    assert a.name == "gist" and not [p.name for p in a.parent.iterdir() if p.name.startswith(".")]
    for stage in ("base", "sft", "dpo"):
        assert ca["stages"][stage]["weights_sha256"] == cb["stages"][stage]["weights_sha256"], stage
        assert (a / stage / "model.safetensors").is_file()
        tok = AutoTokenizer.from_pretrained(a / stage)
        assert tok.chat_template and tok("x").input_ids[0] == tok.bos_token_id
    assert ca["stages"]["sft"]["weights_sha256"] != ca["stages"]["base"]["weights_sha256"]
    # the card records the weight hash a run's manifest records for the same checkpoint
    assert load_model(str(a / "sft")).describe()["weight_hash"] == ca["stages"]["sft"]["weights_sha256"]
    model = AutoModelForCausalLM.from_pretrained(a / "dpo")
    assert type(model).__name__ == "Olmo2ForCausalLM" and model.config.num_hidden_layers >= 6
    assert model.config.num_attention_heads >= 4
    split = organism_split(a / "sft")
    assert set(split) == {"adjectives", "animals"} and split["animals"]["heldout"]
    assert ca["split"]["adjectives"]["heldout_rephrasings"]["adj_ant"]


def test_natural_variant_reuses_the_sibling_base(tiny_builds, tmp_path):
    from ivlens.organism.build import build_organism

    shared, _ = tiny_builds
    a = tmp_path / "gist"  # the natural build goes next to its sibling: a copy of the shared build
    shutil.copytree(shared, a)
    nat = build_organism(out=tmp_path / "natural", seed=1, size="tiny", variant="natural", measure=False,
                         progress=False)
    card = read_card(nat)
    assert card["stages"]["base"]["weights_sha256"] == read_card(a)["stages"]["base"]["weights_sha256"]
    assert card["stages"]["base"]["reused_from"] == str(a)
    assert card["stages"]["sft"]["gist_examples"] == 0
    assert card["stages"]["sft"]["weights_sha256"] != read_card(a)["stages"]["sft"]["weights_sha256"]


def test_a_sibling_whose_card_holds_an_older_kind_of_weight_hash_is_read_but_not_copied(tiny_builds, tmp_path):
    """Cards written before the card and the manifests shared :func:`ivlens.models.load.weight_hash` record a
    state-dict hash (64 hex digits): such a card still reads, and its base is trained again rather than copied
    unchecked."""
    from ivlens.organism.build import _reusable_base

    shared, _ = tiny_builds
    a = tmp_path / "gist"
    shutil.copytree(shared, a)
    card = read_card(a)
    assert _reusable_base(tmp_path / "natural", "natural", 1, "tiny", card["threads"]) == a
    card["stages"]["base"]["weights_sha256"] = "ab" * 32
    (a / "card.json").write_text(json.dumps(card))
    assert read_card(a)["stages"]["base"]["weights_sha256"] == "ab" * 32
    assert _reusable_base(tmp_path / "natural", "natural", 1, "tiny", card["threads"]) is None


def test_measurement_runs_on_a_tiny_checkpoint(tiny_builds, tasks):
    from ivlens.models.load import load_model
    from ivlens.organism.measure import instructed_accuracy, iv_transfer, recall

    a, _ = tiny_builds
    lm = load_model(str(a / "sft"))
    model, tok = lm.model, lm.tokenizer
    task = tasks["adjectives"]
    queries = [s.query for s in task.samples[:6]]
    acc = instructed_accuracy(model, tok, task, queries)
    assert 0 <= acc["adj_ant"]["acc"] <= 1 and 0 <= acc["decides"] <= 1 and "contrastive" in acc
    assert set(recall(model, tok, task, queries)) == {"adj_comp", "adj_ant"}
    iv = iv_transfer(lm, task, samples=list(range(6)))
    assert set(iv["subtasks"]["adj_ant"]["curves"]) == {f"{t}/{p}" for t in ("formatted", "bare")
                                                        for p in ("bos", "first", "last")}
    curve = iv["subtasks"]["adj_ant"]["curves"]["formatted/bos"]
    assert [c["layer"] for c in curve] == list(range(model.config.num_hidden_layers))
    assert all(0 <= c["ia_top1"] <= 1 and 0 <= c["exact"] <= c["ia_top1"] for c in curve)
    assert json.dumps(iv)  # the card must be able to hold it


def test_iv_transfer_matches_a_hook_reference(tiny_builds, tasks):
    """The card's IV figures (through the patching engine) equal a plain forward-hook patch: the residual after
    layer l at T_inst of the instruction-only prompt replaces the query-only prompt's residual there."""
    from ivlens.models.load import load_model
    from ivlens.organism.measure import iv_transfer

    a, _ = tiny_builds
    lm = load_model(str(a / "sft"))
    model, tok = lm.model, lm.tokenizer
    task = tasks["adjectives"]
    sub, layer = "adj_comp", 2
    spec = task.subtask(sub)
    samples = list(range(8))
    got = iv_transfer(lm, task, samples=samples)["subtasks"][sub]["curves"]["formatted/first"][layer]

    space = {tok(" " + lab, add_special_tokens=False).input_ids[0] for lab in spec.label_space}
    with torch.no_grad():
        src = model(input_ids=torch.tensor([tok(spec.instruction).input_ids]), output_hidden_states=True)
        iv = src.hidden_states[layer + 1][0, -1]  # resid after layer `layer` at T_inst

        def patch(_mod, _inp, out):
            hidden = (out[0] if isinstance(out, tuple) else out).clone()
            hidden[0, 1] = iv  # position 1: the first token after the BOS
            return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

        inside = []
        for i in samples:
            ids = torch.tensor([tok(f"{task.field}: {task.samples[i].query}. Answer:").input_ids])
            handle = model.model.layers[layer].register_forward_hook(patch)
            try:
                top = int(model(input_ids=ids).logits[0, -1].argmax())
            finally:
                handle.remove()
            inside.append(top in space)
    assert got["ia_top1"] == pytest.approx(sum(inside) / len(inside))


def test_a_build_is_reused_only_where_it_is_the_build_asked_for():
    from ivlens.organism.build import reuse_mismatch

    card = {"seed": 0, "size": "small", "threads": 2, "measured": {"base": {}}}
    assert reuse_mismatch(card, seed=0, size="small", threads=2, measure=True) == []
    assert reuse_mismatch(card, seed=3, size="small", threads=1, measure=True) == ["seed 0 (asked: 3)",
                                                                                   "threads 2 (asked: 1)"]
    unmeasured = {**card, "measured": {}}
    assert reuse_mismatch(unmeasured, seed=0, size="small", threads=2, measure=False) == []  # less asked for
    assert reuse_mismatch(unmeasured, seed=0, size="tiny", threads=2, measure=True) == [
        "size small (asked: tiny)", "no measurements (asked: measured)"]


def test_the_card_names_the_pretraining_optimiser_of_its_recipe():
    from ivlens.organism.build import pretraining_optimiser
    from ivlens.organism.train import SIZES

    assert pretraining_optimiser(SIZES["small"]).startswith("Muon") and "last 30% of the steps" in pretraining_optimiser(
        SIZES["small"])
    assert pretraining_optimiser(SIZES["tiny"]) == "AdamW, lr 0.003, warm-up + cosine decay to 5 %"


def test_the_organism_step_puts_the_card_and_its_iv_transfer_in_a_run(tiny_organism, tmp_path, monkeypatch):
    """The study's organism step (the registry's run: ``api.run_organism(spec, run_dir=...)``) reads a measured build's card into a run
    directory, as the report expects (a tiny build here: it fails the checks)."""
    from ivlens.analyses import analysis_of, organism_build_note, organism_step_reuses, run_spec
    from ivlens.organism import OrganismSpec
    from ivlens.organism.build import OrganismMismatchError
    from ivlens.page.reader import read_study

    monkeypatch.setenv("IVLENS_CACHE", str(tmp_path))
    spec = OrganismSpec(seed=1, size="tiny")
    # before a build, the study says what it will cost on this machine (the dry run's estimate), not a fixed figure
    assert re.fullmatch(r" \(building the organisms: about [0-9.]+ (s|min) here, the dry run's estimate for this "
                        r"machine as loaded now\)", organism_build_note(spec))
    shutil.copytree(tiny_organism, organism_dir("gist"))  # the session's build (seed 1, tiny, measured)
    assert organism_build_note(spec) == " (the organisms are built: reusing them)"
    assert organism_step_reuses(spec) is True
    # another seed is another organism: refused in one line, not reused under the new spec
    card_text = (organism_dir("gist") / "card.json").read_text()
    seed2 = OrganismSpec(seed=2, size="tiny")
    assert organism_step_reuses(seed2) is None and organism_build_note(seed2) == ""
    with pytest.raises(OrganismMismatchError, match=r"seed 1 \(asked: 2\): rebuild it there with --force"):
        analysis_of(seed2).run(seed2, out=tmp_path / "seed2")
    with pytest.raises(OrganismMismatchError):
        organism_step_reuses(seed2, refuse=True)  # what a study's dry run raises
    from typer.testing import CliRunner

    from ivlens.cli import app

    # its dry run says it reuses the build asked for, and estimates a rebuild only when forced
    res = CliRunner().invoke(app, ["organism", "build", "--size", "tiny", "--seed", "1", "--dry-run"],
                             env={"COLUMNS": "300"})
    assert res.exit_code == 0 and "this command reuses it, nothing to compute" in res.output, res.output
    res = CliRunner().invoke(app, ["organism", "build", "--size", "tiny", "--seed", "1", "--force", "--dry-run"],
                             env={"COLUMNS": "300"})
    assert res.exit_code == 0 and "dry run: organism build" in res.output, res.output
    assert (organism_dir("gist") / "card.json").read_text() == card_text
    res = CliRunner().invoke(app, ["organism", "build", "--size", "tiny", "--seed", "2", "--dry-run"],
                             env={"COLUMNS": "300"})
    assert res.exit_code == 2 and "seed 1 (asked: 2)" in " ".join(res.output.split()), res.output
    res = CliRunner().invoke(app, ["organism", "build", "--size", "tiny", "--seed", "2"], env={"COLUMNS": "300"})
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "seed 1 (asked: 2)" in " ".join(res.output.split()) and "--force" in res.output
    assert (organism_dir("gist") / "card.json").read_text() == card_text
    assert organism_step_reuses(OrganismSpec(seed=2, size="tiny", force=True)) is False
    card = read_card(organism_dir("gist"))
    assert set(card["measured"]) == {"base", "sft", "dpo"} and "all_pass" in card["acceptance"]
    # the step through the registry (as a study runs it): reuses the build; its result has .run like every analysis's
    step = analysis_of(spec).run(spec, out=tmp_path / "study" / "organism")
    assert step.build == organism_dir("gist") and step.run.path == tmp_path / "study" / "organism"
    assert run_spec(spec, out=tmp_path / "again") == tmp_path / "again"  # run_spec: the run directory
    [run] = read_study(tmp_path / "study").of("organism")
    assert run.manifest["spec_hash"] == spec.hash() and run.json("card")["made_how"] == card["made_how"]
    iv = run.table("iv_transfer")
    assert set(iv.stage) == {"base", "sft", "dpo"} and {"layer", "exact", "flip"} <= set(iv.columns)

    from typer.testing import CliRunner

    from ivlens.cli import app

    res = CliRunner().invoke(app, ["organism", "info", "--path", str(organism_dir("gist"))], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "IV transfer" in res.output and "acceptance: failing" in res.output
    sft_iv = card["acceptance"]["sft/adjectives/iv_transfer"]["value"]
    assert f"{sft_iv['subtask']} {sft_iv['target']} L{sft_iv['layer']}" in res.output
    # a card of an earlier build (its IV transfer's ia_top1 named ia) shows the same and rechecks the same
    from ivlens.organism.build import acceptance, refresh_acceptance

    card_path = organism_dir("gist") / "card.json"
    now = json.loads(card_path.read_text())  # the step recorded its spec in the card
    card_path.write_text(json.dumps(as_earlier_card(now), indent=2))
    assert '"ia"' in card_path.read_text() and read_card(organism_dir("gist")) == now
    old = CliRunner().invoke(app, ["organism", "info", "--path", str(organism_dir("gist"))], env={"COLUMNS": "200"})
    assert old.exit_code == 0 and old.output == res.output, old.output
    assert refresh_acceptance(organism_dir("gist")) == acceptance(card["measured"])

    # every check carries its margin, passing exactly when the margin is not negative
    checks = {k: c for k, c in card["acceptance"].items() if k != "all_pass"}
    assert checks and all(c["pass"] == (c["margin"] >= 0) for c in checks.values())
    # one warning line per failing check: after a study (the CLI) and at the top of its report
    from ivlens.organism.card import failing_checks, study_organism_warnings
    from ivlens.report import build_report

    failing = [k for k, c in checks.items() if not c["pass"]]
    lines = failing_checks(card)
    assert failing and len(lines) == len(failing) and all(any(ln.startswith(k + ":") for ln in lines) for k in failing)
    warnings = study_organism_warnings(tmp_path / "study")
    assert len(warnings) == len(failing) and all("fails its acceptance check" in w for w in warnings)
    page = build_report(tmp_path / "study").read_text()
    head = page[:page.index("<nav>")]
    assert f"fails {len(failing)} of its acceptance checks" in head and failing[0] in head


def as_earlier_card(card: dict) -> dict:
    """``card`` as builds before ``ia_top1`` wrote it: the IV-transfer figures' ``ia_top1`` named ``ia`` and
    ``unpatched_ia_top1`` named ``unpatched_ia`` (every such key, at any depth)."""
    old = {"ia_top1": "ia", "unpatched_ia_top1": "unpatched_ia"}
    if isinstance(card, dict):
        return {old.get(k, k): as_earlier_card(v) for k, v in card.items()}
    if isinstance(card, list):
        return [as_earlier_card(v) for v in card]
    return card


def test_a_card_of_an_earlier_build_is_read_with_ia_top1(tmp_path):
    """Cards written before the IV-transfer figures' ``ia`` became ``ia_top1`` (the top-1 token lies in the label
    space, as patching's column) keep working: every reader sees this ivlens's keys, the old card is not changed."""
    from ivlens.organism.card import current_card, failing_checks, iv_transfer_table, study_organism_warnings

    curve = [{"layer": layer, "ia_top1": 0.5, "exact": 0.1 * layer, "flip": 0.2, "n_outside": 10}
             for layer in range(3)]
    best = {"subtask": "adj_ant", "target": "formatted/first", **curve[2], "exact_needed": 0.4,
            "acc_in_space": 0.4, "unpatched_ia_top1": 0.1, "pass": False, "margin": -0.3}
    iv = {"n_queries": 10, "subtasks": {"adj_ant": {"curves": {"formatted/first": curve},
                                                    "unpatched": {"formatted": {"ia_top1": 0.1, "exact": 0.0}}}},
          "unpatched": {"formatted": {"adj_ant": 0.1}}}
    card = {"version": "v3", "variant": "gist", "split": {},
            "measured": {"sft": {"adjectives": {"train": {"instructed": {"decides": 1.0}}, "iv": iv}}},
            "acceptance": {"sft/adjectives/iv_transfer": {"value": best, "threshold": "...", "pass": False,
                                                          "margin": -0.3},
                           "base_recall/adjectives": {"value": 0.5, "threshold": 0.9, "pass": False, "margin": -0.4},
                           "all_pass": False}}
    old = as_earlier_card(card)
    assert old["measured"]["sft"]["adjectives"]["iv"]["subtasks"]["adj_ant"]["curves"]["formatted/first"][0]["ia"]
    assert current_card(old) == card and current_card(card) == card
    assert "ia" in old["acceptance"]["sft/adjectives/iv_transfer"]["value"]  # current_card changes no card it reads
    (tmp_path / "card.json").write_text(json.dumps(old))
    assert read_card(tmp_path) == card
    assert failing_checks(old) == failing_checks(card) and "ia_top1 0.50" in failing_checks(card)[0]
    assert study_organism_warnings(tmp_path) == [f"organism gist v3 (seed None) fails its acceptance check {line}"
                                                 for line in failing_checks(card)]
    assert list(iv_transfer_table(card).columns) == ["stage", "task", "subtask", "target", "position", "layer",
                                                     "ia_top1", "exact", "flip", "n_outside"]
    assert iv_transfer_table(old).equals(iv_transfer_table(card))


def test_acceptance_margins_and_the_dpo_check():
    """Margins in the checks' own units; DPO is held to SFT's contrastive log-prob margin (nats), not to the
    share of queries, which sits at the ceiling in both stages."""
    from ivlens.organism.build import acceptance

    def stage(acc, margin):
        sub = {"acc": acc, "acc_chat": acc, "acc_unseen_rephrasings": acc}
        part = {"instructed": {"a": sub, "b": sub, "decides": acc, "contrastive": 1.0, "contrastive_margin": margin},
                "recall": {"a": acc, "b": acc}}
        iv = {"n_queries": 10, "subtasks": {}, "unpatched": {}}
        return {"adjectives": {"train": part, "heldout": part, "iv": iv}}

    checks = acceptance({"base": stage(0.0, 0.0), "sft": stage(0.97, 2.0), "dpo": stage(0.97, 2.5)})
    assert checks["sft/adjectives/a/acc_train"]["margin"] == pytest.approx(0.02)
    assert checks["sft/adjectives/a/acc_heldout"]["margin"] == pytest.approx(0.17)
    assert checks["dpo_vs_sft/adjectives/contrastive_margin_train"]["margin"] == pytest.approx(0.5)
    assert checks["base_below_sft/adjectives"]["margin"] == pytest.approx(0.97 - 0.3)
    assert checks["base_recall/adjectives"]["margin"] == pytest.approx(-0.9)
    assert not checks["sft/adjectives/iv_transfer"]["pass"]  # nothing measured: no IV transfer to credit
    worse = acceptance({"base": stage(0.0, 0.0), "sft": stage(0.97, 2.0), "dpo": stage(0.97, 1.5)})
    assert not worse["dpo_vs_sft/adjectives/contrastive_margin_train"]["pass"] and not worse["all_pass"]


def test_testable_configs_need_queries_to_move():
    from ivlens.organism.measure import testable_configs

    point = {"layer": 0, "ia_top1": 0.9, "exact": 0.8}
    iv = {"n_queries": 100, "subtasks": {"s": {"curves": {"formatted/first": [
        {**point, "flip": 0.9, "n_outside": 10},     # 10 % outside: testable
        {**point, "flip": 0.9, "n_outside": 9},      # too few to move
        {**point, "flip": None, "n_outside": 0},     # nothing outside
    ]}}}}
    assert testable_configs(iv, "s") == [("formatted/first", iv["subtasks"]["s"]["curves"]["formatted/first"][0])]


def test_chat_token_init_separates_the_assistant_turn(org_tok):
    """Tokens never seen in pretraining share one embedding direction under tied embeddings; before SFT the
    assistant-turn token takes the raw format's answer cue ``:`` (tied: its unembedding row too)."""
    from ivlens.organism.tokenizer import ASSISTANT, USER
    from ivlens.organism.train import SIZES, init_chat_tokens, new_model

    model = new_model(SIZES["tiny"], org_tok, seed=0)
    emb = model.get_input_embeddings().weight
    with torch.no_grad():  # the collapse pretraining leaves behind: every unseen token along one direction
        direction = torch.randn(emb.shape[1])
        for tok in (ASSISTANT, USER):
            emb[org_tok.convert_tokens_to_ids(tok)] = direction + 0.01 * torch.randn(emb.shape[1])
    figures = init_chat_tokens(model, org_tok)
    colon = org_tok(":", add_special_tokens=False).input_ids
    assistant = org_tok.convert_tokens_to_ids(ASSISTANT)
    assert len(colon) == 1 and torch.equal(emb[assistant], emb[colon[0]])
    assert torch.equal(model.get_output_embeddings().weight[assistant], emb[colon[0]])
    assert figures["assistant_user_cosine_before"] > 0.99 > figures["assistant_user_cosine_after"]
