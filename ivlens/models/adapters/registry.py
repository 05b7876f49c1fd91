"""The supported architecture families: a few lines of data each, registered by HF class.

Everything else about a family (module paths, where its norms sit, fused projections, head layout, QK-norm,
activation, norm formula) is derived from the model by :func:`~.derive.derive_spec`. A Llama-like family needs
only its class name::

    register(Family("mistral", ("MistralForCausalLM",), notes="Llama with sliding-window attention"))

then a tiny random model of it in :mod:`ivlens.testing.tiny` and the tests (``docs/architectures.md``).

The adapter is chosen by the model's class and its base classes (exact class names, so subclasses of a supported
class are supported too), never by a substring of a model or repository name.
"""

from __future__ import annotations

import weakref

from torch import nn

from .adapter import ArchitectureAdapter
from .derive import derive_spec
from .spec import Family, UnsupportedArchitectureError

FAMILIES: tuple[Family, ...] = (
    Family("olmo2", ("Olmo2ForCausalLM",),
           notes="post-norm: x + norm(attn(x)), x + norm(mlp(x)); QK-norm over the whole projection"),
    Family("olmo3", ("Olmo3ForCausalLM",), notes="OLMo-2 with sliding-window layers (layer_types)"),
    Family("olmo", ("OlmoForCausalLM",), norm_eps=1e-5,
           notes="non-parametric LayerNorm (eps 1e-5 in code); q, k, v clamped at clip_qkv"),
    Family("llama", ("LlamaForCausalLM",), notes="pre-norm; 'post_attention_layernorm' is the MLP's input norm"),
    Family("mistral", ("MistralForCausalLM",), notes="Llama with sliding-window attention on every layer"),
    Family("qwen2", ("Qwen2ForCausalLM",), notes="Llama with q/k/v biases"),
    Family("qwen3", ("Qwen3ForCausalLM",), notes="QK-norm per head before RoPE, explicit head_dim"),
    Family("gemma", ("GemmaForCausalLM",),
           notes="(1 + w) RMSNorm in float32, embeddings x sqrt(d_model), GeGLU, tied unembedding"),
    Family("gemma2", ("Gemma2ForCausalLM",),
           notes="Gemma + sandwich norms, query_pre_attn_scalar, attention and final logit soft-caps, "
                 "alternate sliding-window layers"),
    Family("gemma3", ("Gemma3ForCausalLM",),
           notes="Gemma-2 + QK-norm per head, local RoPE base on sliding layers (5:1), no soft-caps by default"),
    Family("phi3", ("Phi3ForCausalLM",), notes="fused qkv_proj [q; k; v] and gate_up_proj [gate; up]"),
    Family("gpt_neox", ("GPTNeoXForCausalLM",), qkv_layout="per_head",
           notes="parallel residual, partial rotary (rotary_pct), query_key_value per head [(q, k, v), d_head], "
                 "LayerNorm and projections with biases, untied embed_out"),
    # Registered with nothing but its class: everything else derives (the example of docs/architectures.md).
    Family("starcoder2", ("Starcoder2ForCausalLM",), notes="LayerNorm with biases, plain GELU MLP, sliding window"),
    Family("gpt2", ("GPT2LMHeadModel",),
           notes="pre-LayerNorm with biases, learned absolute positions, fused Conv1D q/k/v"),
)

#: Registered families, keyed by the HF class name (matched exactly against the model's class and its bases).
ARCHITECTURES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add (or replace) a family for its classes; returns it (usable as a one-liner in user code)."""
    for cls in family.classes:
        ARCHITECTURES[cls] = family
    return family


for _f in FAMILIES:
    register(_f)


def family_of(model: nn.Module) -> Family | None:
    """The registered family of ``model``'s class or one of its base classes, or ``None``."""
    for cls in type(model).__mro__:
        fam = ARCHITECTURES.get(cls.__name__)
        if fam is not None:
            return fam
    return None


_SPECS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_adapter(model: nn.Module):
    """The adapter for ``model``, chosen by its class (and its base classes), never by its name.

    The spec is derived once per model object (one probe forward of four tokens) and memoised.
    Raises :class:`UnsupportedArchitectureError` naming the class, what could not be derived, and how to add it.

    >>> adapter = get_adapter(model)
    >>> adapter.spec.norms, adapter.n_heads, adapter.d_head
    """
    fam = family_of(model)
    if fam is None:
        raise UnsupportedArchitectureError(_unsupported_message(model))
    spec = _SPECS.get(model)
    if spec is None or spec.name != fam.name:
        spec = derive_spec(model, fam)
        _SPECS[model] = spec
    return ArchitectureAdapter(model=model, spec=spec)


def _unsupported_message(model: nn.Module) -> str:
    name = type(model).__name__
    try:
        derive_spec(model, Family(name, (name,)))
        derived = ("Its structure derives cleanly (module paths, norm roles, norm formula), so it may need only "
                   f"registering: ivlens.models.adapters.register(Family('<name>', ('{name}',))) -- check first that "
                   "nothing the adapter vocabulary cannot express (residual multipliers, extra norms, per-layer "
                   "differences) hides in its forward.")
    except Exception as e:  # noqa: BLE001 - the derivation's complaint is the message
        derived = f"Deriving its structure failed: {e}"
    supported = ", ".join(sorted(ARCHITECTURES))
    return (
        f"ivlens has no architecture adapter for {name} (patching and tracing need one; eval and IV "
        f"collection for the probes do not). Supported: {supported}. {derived} "
        "An adapter needs: the decoder layers, the token (and position) embedding, the final norm and "
        "unembedding, the q/k/v/o projections, the MLP projections and activation, and every norm with its role "
        "(attn_in, attn_out, mlp_in, mlp_out). Add a Family for this class to "
        "ivlens.models.adapters.registry.FAMILIES, or register(Family(...)) at run time (docs/architectures.md: "
        "adding an architecture), and run "
        "tests/models/test_adapters.py on a tiny random model of it."
    )
