"""Model loading: local directories, safety rules, clear errors, GGUF (SmolLM2, slow)."""

from __future__ import annotations

import time

import pytest
import torch
from bad_models import KINDS

from ivlens.models.load import ModelLoadError, load_model, resolve_name, weight_hash


def test_load_local_directory(tiny_dir, arch):
    """Every family round-trips through a model directory: its adapter derives the same spec as the saved model's
    and the loaded model computes the same logits on a prompt longer than the sliding window (so windows and
    soft-caps survive config.json). The analyses' maths is checked per family in memory (test_patching_engine,
    test_probing_collect, test_tracing_*); their CLI paths run on two families (test_families_cli.py)."""
    from ivlens.models.adapters import get_adapter
    from ivlens.testing.tiny import tiny_model

    d = tiny_dir(arch)
    lm = load_model(str(d))
    assert lm.adapter.spec.name == arch
    saved = tiny_model(arch, n_layers=4)  # what tiny_dir saved (save_tiny_checkpoint's defaults)
    assert lm.adapter.spec == get_adapter(saved).spec
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]])  # longer than the sliding window
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, saved(ids).logits, rtol=0, atol=1e-5)
    assert lm.tokenizer.padding_side == "left" and lm.tokenizer.pad_token_id is not None
    desc = lm.describe()
    assert desc["weight_hash"] == weight_hash(str(d)) and len(desc["weight_hash"]) == 16
    assert desc["dtype"] == "float32" and desc["n_layers"] == 4
    assert not lm.model.training


def test_bfloat16(tiny_dir):
    lm = load_model(str(tiny_dir("llama")), dtype="bfloat16")
    assert lm.adapter.embed.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("arch", ["gemma2", "gpt_neox", "olmo"])
def test_bfloat16_adapters_derive(tiny_dir, arch):
    """The adapter derives in bfloat16 too (norm formula within bf16 tolerance), and its logits are the model's."""
    lm = load_model(str(tiny_dir(arch)), dtype="bfloat16")
    ad = lm.adapter
    assert ad.spec.norm_weight_offset == (1.0 if arch == "gemma2" else 0.0)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad(), ad.capture_resid([ad.n_layers - 1]) as cache:
        logits = lm.model(ids).logits
    torch.testing.assert_close(ad.logits(cache[ad.n_layers - 1]), logits, rtol=0, atol=0)


def test_load_without_adapter(tiny_dir):
    """Any causal LM loads; the adapter is asked for only by the analyses that need it."""
    from ivlens.models.adapters import UnsupportedArchitectureError

    lm = load_model(str(tiny_dir("stablelm")))
    desc = lm.describe()
    assert desc["architecture"] == "StableLmForCausalLM" and desc["adapter"] is None
    assert (desc["n_layers"], desc["d_model"], lm.n_layers) == (4, 64, 4) and not lm.has_adapter
    with pytest.raises(UnsupportedArchitectureError, match="no architecture adapter for StableLmForCausalLM"):
        _ = lm.adapter


def test_pickle_only_directory_is_refused(tmp_path, tiny_dir):
    d = tiny_dir("llama")
    for f in d.glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(ModelLoadError, match="pickled"):
        load_model(str(d))


def test_clear_errors():
    with pytest.raises(ModelLoadError, match="float32"):
        load_model("x", dtype="float8")
    t = time.perf_counter()
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE|could not load"):
        load_model("some-org/definitely-not-local-model")
    assert time.perf_counter() - t < 20  # offline: fails fast instead of retrying the hub


def test_organism_name_resolution_errors_when_unbuilt(monkeypatch, tmp_path):
    import ivlens.organism  # noqa: F401  (registers the organism names, as every entry point does)

    monkeypatch.setenv("IVLENS_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="ivlens organism build"):
        load_model("organism-sft")


def test_an_organism_name_before_ivlens_organism_is_imported_says_what_to_import(monkeypatch):
    from ivlens import providers

    monkeypatch.setattr(providers, "_MODEL_NAMES", {})  # as in a process that imported only ivlens.models
    with pytest.raises(ModelLoadError, match=r"'organism-sft' is an organism name.*`import ivlens.organism` first"):
        load_model("organism-sft")


def test_gguf_path_resolution(tmp_path):
    g = tmp_path / "model.gguf"
    g.write_bytes(b"GGUF")  # the magic bytes: a single file is accepted only as GGUF
    assert resolve_name(str(g)) == (str(tmp_path), "model.gguf")
    assert resolve_name("repo/id", str(g)) == (str(tmp_path), "model.gguf")
    assert resolve_name("repo/id", "inside.gguf") == ("repo/id", "inside.gguf")


@pytest.mark.slow
def test_smollm2_gguf_loads_as_llama_and_answers():
    lm = load_model("smollm2-135m-instruct")
    assert type(lm.model).__name__ == "LlamaForCausalLM"
    assert (lm.adapter.n_layers, lm.adapter.n_heads, lm.adapter.n_kv_heads, lm.adapter.d_model) == (30, 9, 3, 576)
    ids = lm.tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = lm.model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in lm.tokenizer.decode(out[0, ids.shape[1]:])


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory):
    from bad_models import make_bad_models

    return make_bad_models(tmp_path_factory.mktemp("bad-models"))


@pytest.mark.parametrize("kind", KINDS)
def test_unusable_model_is_one_named_error(bad_models, kind):
    """Every way a handed-over model can be unusable ends in one ModelLoadError naming the file, the fault and the
    fix; never another exception, never a model with weights initialised at random."""
    case = bad_models[kind]
    with pytest.raises(ModelLoadError) as e:
        load_model(case.model)
    msg = " ".join(str(e.value).split())
    for needle in case.needles:
        assert needle in msg, (kind, msg)


@pytest.mark.parametrize("kind", ["config not JSON", "unknown model_type", "truncated safetensors", "missing shard"])
def test_dry_run_estimate_refuses_the_same_files(bad_models, kind):
    """A dry run reads config and headers only, and refuses what loading would (ivlens.estimate.model_info)."""
    from ivlens.estimate.model import model_info

    with pytest.raises(ModelLoadError, match="copy or download|does not know"):
        model_info(bad_models[kind].model)


def test_remote_code_model_names_the_option(tmp_path, tiny_dir):
    """A config whose architecture only the repository's own code defines (auto_map) names --trust-remote-code."""
    import json
    import shutil

    d = tmp_path / "remote"
    shutil.copytree(tiny_dir("llama"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="my_llama", auto_map={"AutoModelForCausalLM": "modeling_my.MyLlama"})
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="'my_llama'.*--trust-remote-code only if you trust"):
        load_model(str(d))


def test_unused_tensors_are_noted_not_refused(tmp_path, tiny_dir, caplog):
    """Extra tensors (a value head, a buffer) are not weights the model lacks: it loads, with a warning."""
    import shutil

    from safetensors.torch import load_file, save_file

    d = tmp_path / "extra"
    shutil.copytree(tiny_dir("llama"), d)
    tensors = load_file(d / "model.safetensors")
    tensors["v_head.weight"] = torch.zeros(1, 64)
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    with caplog.at_level("WARNING", logger="ivlens.models.files"):
        lm = load_model(str(d))
    assert lm.n_layers == 4 and "1 tensor(s) in the weight files are not used by the model (v_head.weight)" in caplog.text


def test_gpt_neox_at_default_init_loads_and_derives(tmp_path):
    """The issue's case: a GPT-NeoX saved at transformers' default init (both parallel-residual LayerNorms with
    weight 1, bias 0) loads and gets its adapter."""
    from ivlens.testing.tiny import tiny_model, tiny_tokenizer

    tiny_model("gpt_neox", randomise=False).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    spec = load_model(str(tmp_path)).adapter.spec
    assert spec.parallel_residual and spec.norms == {"attn_in": "input_layernorm", "mlp_in": "post_attention_layernorm"}


@pytest.mark.slow
def test_a_gguf_is_converted_once_into_the_cache_with_the_same_weights_and_tokenizer():
    """load_model reads a local GGUF through its safetensors conversion in ivlens's cache (made by the first load
    of the test session, or here): the weights, the config and the tokenizer equal transformers' own GGUF load."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ivlens.estimate.flops import ModelShape
    from ivlens.estimate.model import model_info
    from ivlens.models.gguf_cache import COMPLETE, cache_root
    from ivlens.models.load import header_source, smollm2_gguf

    lm = load_model("smollm2-135m-instruct")
    converted = list((cache_root() / "gguf").glob(f"{lm.weight_hash}/{COMPLETE}"))
    assert len(converted) == 1 and (converted[0].parent / "model.safetensors").is_file()
    assert (lm.path, lm.gguf_file) == (str(smollm2_gguf().parent), smollm2_gguf().name)  # identity: the GGUF
    g = smollm2_gguf()
    ref = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32)
    ref_tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
    ours, theirs = lm.model.state_dict(), ref.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    mine, other = lm.model.config.to_dict(), ref.config.to_dict()
    assert {k for k in mine.keys() | other.keys() if mine.get(k) != other.get(k)} == {"quantization_config"}
    chat = [{"role": "user", "content": "Give the antonym: hot"}]
    assert (lm.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            == ref_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))
    text = "The capital of France is Paris, and naïve café — 12345."
    assert lm.tokenizer(text).input_ids == ref_tok(text).input_ids
    assert lm.tokenizer.eos_token == ref_tok.eos_token and lm.tokenizer.bos_token == ref_tok.bos_token
    # its config and tokenizer are read from the conversion (no GGUF header parsed), and a dry run sizes it from
    # there: the GGUF's shape and tokenizer, loaded without dequantising
    assert header_source(*resolve_name("smollm2-135m-instruct")) == (str(converted[0].parent), None)
    info = model_info("smollm2-135m-instruct")
    n_params = sum(p.numel() for p in ref.parameters())
    assert info.shape == ModelShape.from_config(ref.config, n_params=n_params) and not info.gguf
    assert info.tokenizer(text).input_ids == ref_tok(text).input_ids
    assert info.path == str(g.parent) and info.has_adapter
