"""FLOPs of a decoder-only transformer, counted from its Hugging Face config alone.

A FLOP here is one multiply or one add, so a ``[m, k] × [k, n]`` matrix product costs ``2·m·k·n``. Only the matrix
products are counted (they are all but a few percent of the work); norms, rotary embeddings, softmax and the
MLP's activation are element-wise and left out.

One decoder layer evaluated for **one token** that attends to ``n_keys`` keys (itself included) costs

    projections   2·d·(H·dh)  +  2·2·d·(KV·dh)  +  2·(H·dh)·d          q, k, v (GQA: KV heads), o
    attention     2·H·dh·n_keys  +  2·H·dh·n_keys                     scores q·k, then the mix of values
    MLP           3·2·d·d_mlp  (gated: gate, up, down)  or  2·2·d·d_mlp  (plain: in, out)

and one unembedding row ``2·d·d_vocab`` (:func:`unembed_flops`). Everything else (a prompt's forward, the
patching engine's layer-token evaluations, a generation step) is a sum of these two.

Sizes come from :meth:`ModelShape.from_config`, which reads OLMo-2, Llama/SmolLM2, Qwen2 (``hidden_size``,
``num_hidden_layers``, ``num_key_value_heads``, ``intermediate_size``) and GPT-2 (``n_embd``, ``n_layer``,
``n_head``, ``n_inner``) configs; the MLP kind comes from the architecture adapters' table
(:data:`ivlens.models.adapters.ARCHITECTURES`).

>>> from transformers import AutoConfig
>>> shape = ModelShape.from_config(AutoConfig.for_model("llama", hidden_size=576, num_hidden_layers=30,
...     num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536, vocab_size=49152))
>>> layer_flops(shape, n_keys=20)  # one token, one layer
7123968
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


def _first(config, *names, default=None):
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


#: HF ``model_type``s whose MLP is plain ``W_out act(W_in x + b)`` (every other family counted as gated).
PLAIN_MLP_MODEL_TYPES = frozenset({"gpt2", "gpt_neox", "gptj", "starcoder2", "falcon", "bloom", "opt", "phi"})


@dataclass(frozen=True)
class ModelShape:
    """The sizes the cost model needs (one vocabulary: ``layer d_model head kv_head d_head d_mlp d_vocab``).

    ``n_params``: the parameter count (exact when read from a model, else computed from the sizes);
    ``tied``: input and output embeddings share one matrix; ``pos_embed``: learned absolute positions (GPT-2).
    """

    arch: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    gated_mlp: bool = True
    tied: bool = False
    pos_embed: int = 0
    n_params: int = 0

    @classmethod
    def from_config(cls, config, n_params: int | None = None) -> ModelShape:
        """Sizes from an HF config (``PretrainedConfig``); ``n_params`` overrides the computed count."""
        from ivlens.models.adapters import ARCHITECTURES

        config = getattr(config, "text_config", None) or config
        d = _first(config, "hidden_size", "n_embd", "d_model")
        n_heads = _first(config, "num_attention_heads", "n_head")
        archs = getattr(config, "architectures", None) or []
        family = next((ARCHITECTURES[a] for a in archs if a in ARCHITECTURES), None)
        model_type = getattr(config, "model_type", "") or ""
        # From the config alone (no module tree to derive from): the families whose MLP is a plain act(W_in x).
        gated = model_type not in PLAIN_MLP_MODEL_TYPES
        shape = cls(
            arch=family.name if family is not None else model_type,
            n_layers=_first(config, "num_hidden_layers", "n_layer"),
            d_model=d,
            n_heads=n_heads,
            n_kv_heads=_first(config, "num_key_value_heads", default=n_heads),
            d_head=_first(config, "head_dim", default=d // n_heads),
            d_mlp=_first(config, "intermediate_size", "n_inner", default=4 * d),
            d_vocab=config.vocab_size,
            gated_mlp=gated,
            tied=bool(getattr(config, "tie_word_embeddings", False)),
            pos_embed=_first(config, "n_positions", default=0) if not _has_rotary(config, model_type) else 0,
        )
        return shape.with_params(n_params or shape.count_params())

    def with_params(self, n_params: int) -> ModelShape:
        return ModelShape(**{**asdict(self), "n_params": int(n_params)})

    def count_params(self) -> int:
        """Weights of the matrices (norms and biases are under 0.1 % and left out)."""
        d, q, kv = self.d_model, self.n_heads * self.d_head, self.n_kv_heads * self.d_head
        attn = d * q + 2 * d * kv + q * d
        mlp = (3 if self.gated_mlp else 2) * d * self.d_mlp
        embed = self.d_vocab * d * (1 if self.tied else 2) + self.pos_embed * d
        return self.n_layers * (attn + mlp) + embed

    def weight_bytes(self, bytes_per_param: int = 4) -> int:
        return self.n_params * bytes_per_param

    def to_dict(self) -> dict:
        return asdict(self)


def _has_rotary(config, model_type: str) -> bool:
    return model_type != "gpt2" and getattr(config, "n_positions", None) is None


def projection_flops(shape: ModelShape) -> int:
    """q, k, v and o projections of one token in one layer."""
    d, q, kv = shape.d_model, shape.n_heads * shape.d_head, shape.n_kv_heads * shape.d_head
    return 2 * d * q + 2 * 2 * d * kv + 2 * q * d


def attention_flops(shape: ModelShape, n_keys: int) -> int:
    """Scores and value mix of one query token over ``n_keys`` keys, all heads."""
    return 2 * 2 * shape.n_heads * shape.d_head * n_keys


def mlp_flops(shape: ModelShape) -> int:
    """The MLP of one token (gated: gate, up and down projections; plain: in and out)."""
    return (3 if shape.gated_mlp else 2) * 2 * shape.d_model * shape.d_mlp


def layer_flops(shape: ModelShape, n_keys: int) -> int:
    """One decoder layer evaluated for one token that attends to ``n_keys`` keys (itself included)."""
    return projection_flops(shape) + attention_flops(shape, n_keys) + mlp_flops(shape)


def unembed_flops(shape: ModelShape) -> int:
    """One row of logits: ``[1, d_model] × [d_model, d_vocab]``."""
    return 2 * shape.d_model * shape.d_vocab


def prompt_flops(shape: ModelShape, n_tokens: int, logit_rows: int = 1) -> int:
    """A whole causal forward of one ``n_tokens`` prompt (token ``t`` attends to ``t + 1`` keys) through every
    layer, plus ``logit_rows`` unembedding rows (1: the last position; ``n_tokens``: all)."""
    per_layer = n_tokens * (projection_flops(shape) + mlp_flops(shape)) \
        + attention_flops(shape, 1) * n_tokens * (n_tokens + 1) // 2
    return shape.n_layers * per_layer + logit_rows * unembed_flops(shape)


def suffix_layer_flops(shape: ModelShape, n_tokens: int, n_suffix: int) -> int:
    """One layer evaluated for the last ``n_suffix`` tokens of an ``n_tokens`` prompt (the earlier keys come from a
    cache): what one layer-token group of the patching engine costs."""
    start = n_tokens - n_suffix
    keys = n_suffix * (start + 1) + n_suffix * (n_suffix - 1) // 2  # Σ over the suffix of (t + 1)
    return n_suffix * (projection_flops(shape) + mlp_flops(shape)) + attention_flops(shape, 1) * keys
