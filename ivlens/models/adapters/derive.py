"""Deriving an :class:`~.spec.ArchitectureSpec` from a model's config and module tree.

What a family of decoders has in common is read off the model itself, so that a new Llama-like family needs
a line of data (:mod:`.registry`), not code:

- **module paths** (static): the decoder-layer list is the ``nn.ModuleList`` with ``num_hidden_layers`` blocks;
  the token embedding and unembedding are ``get_input_embeddings()`` / ``get_output_embeddings()``; inside a block
  the attention is the child holding q/k/v (or a fused qkv) and an output projection, the MLP the child holding a
  known pair or triple of projections, each found in a small vocabulary of HF's module names (:data:`ATTN_QKV`,
  :data:`MLP_PROJ`, ...); norms are the block's other leaf modules of a norm class; the final norm is the norm
  beside the layer list; rotary / learned positions are the modules beside it too; GPT-2's ``Conv1D`` by class;
  the cache keyword from the block's ``forward`` signature.
- **norm roles and the residual shape** (one probe forward of four tokens, hooks on block 0), read off the module
  graph, not off the weights: the hooks add to the output of each norm, of the attention and of the MLP a random
  mark of its own, so two modules' values are equal only where the one's output *is* the other's input, whatever
  the weights (at transformers' default init GPT-NeoX's two parallel-residual LayerNorms compute the same function
  of the same input; marked, they no longer look alike). A norm whose output is the attention's input is
  ``attn_in``, one whose input is the attention's output ``attn_out`` (and so for the MLP); the MLP reads the same
  block input as attention → ``parallel_residual``; and the block's output must be its input plus the two
  sublayers' (normed) outputs, else the block does something the vocabulary cannot say (a residual multiplier)
  and the derivation refuses. Values are compared, not guessed from names (``post_attention_layernorm`` is the
  MLP's *input* norm in Llama and the attention's *output* norm in OLMo-2 and Gemma-2).
- **the norm formula** (numerically, on random inputs and random parameters put in place of the module's own
  through ``torch.func.functional_call``, so the user's weight values cannot make two formulas agree): RMS or
  LayerNorm, weight ``w`` or ``1 + w`` (Gemma), or no weight (OLMo-1), with the module's epsilon; checked to
  reproduce the module's output.
- **QK-norm scope**: from the q-norm weight's size (``d_head``: per head, Qwen3 / Gemma-3; ``n_heads · d_head``:
  over the whole projection, OLMo-2 / OLMo-3).

What cannot be read off the tree is the family's data: a fused qkv's row layout (``concat`` vs GPT-NeoX's
``per_head``), an epsilon hard-coded in a forward (OLMo-1), and overrides where a derivation is wrong.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch import nn

from .spec import ArchitectureSpec, Family, NormParams, UnsupportedArchitectureError

#: Separate q/k/v projection names, then fused ones, then output projections (HF's names across families).
ATTN_QKV: tuple[tuple[str, str, str], ...] = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))
ATTN_FUSED: tuple[str, ...] = ("qkv_proj", "query_key_value", "c_attn", "Wqkv")
ATTN_OUT: tuple[str, ...] = ("o_proj", "dense", "c_proj", "out_proj")
QK_NORMS: tuple[tuple[str, str], ...] = (("q_norm", "k_norm"), ("q_layernorm", "k_layernorm"))
#: MLP projections: (kind, gate, in, out); a ``gate`` of None with kind "gated" means ``in`` is a fused [gate; up].
MLP_PROJ: tuple[tuple[str, str | None, str, str], ...] = (
    ("gated", "gate_proj", "up_proj", "down_proj"),
    ("gated", None, "gate_up_proj", "down_proj"),
    ("plain", None, "c_fc", "c_proj"),
    ("plain", None, "dense_h_to_4h", "dense_4h_to_h"),
    ("plain", None, "fc1", "fc2"),
    ("plain", None, "fc_in", "fc_out"),
)
MLP_ACT: tuple[str, ...] = ("act_fn", "act", "activation_fn", "activation")
CACHE_ARGS: tuple[str, ...] = ("cache", "layer_past", "past_key_values", "past_key_value")


def get_module(root: nn.Module, path: str) -> nn.Module:
    """``root.a.b.c`` for ``path="a.b.c"`` (integers index module lists)."""
    mod = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


def text_config(model: nn.Module):
    """The config that describes the decoder (``get_text_config()`` of multimodal configs)."""
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def layer_type_of(config, layer: int) -> str:
    """``full_attention`` or ``sliding_attention`` for decoder layer ``layer`` of ``config`` (a text config): HF's
    ``config.layer_types``; every layer of a model with a ``sliding_window`` and no ``layer_types``, as Mistral, is
    sliding."""
    types = getattr(config, "layer_types", None)
    if types:
        return types[layer]
    return "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"


def sliding_window_of(config, layer: int) -> int | None:
    """Keys a query of layer ``layer`` sees (itself included: HF's ``kv > q − window``), ``None`` for full
    attention. Read from the config alone, so it also holds for models whose weights are elsewhere (NDIF)."""
    if layer_type_of(config, layer) != "sliding_attention":
        return None
    return getattr(config, "sliding_window", None)


def n_layers_of(config) -> int | None:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder blocks of any causal LM: the shallowest ``nn.ModuleList`` with ``num_hidden_layers`` entries
    (any ``ModuleList`` of identical blocks if the config does not say how many). Needs no adapter.

    Returns ``(path, modules)``, e.g. ``("model.layers", …)``, ``("transformer.h", …)``, ``("gpt_neox.layers", …)``.
    """
    n = n_layers_of(text_config(model))
    found = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n is None or len(mod) == n):
            if n is None and len({type(m) for m in mod}) != 1:
                continue
            found.append((name.count("."), name, mod))
    if not found:
        raise UnsupportedArchitectureError(
            f"cannot find the decoder layers of {type(model).__name__}: no nn.ModuleList with "
            f"{n if n is not None else 'identical'} blocks")
    _, name, mod = min(found, key=lambda t: t[:2])
    return name, mod


def resid_from_output(output) -> torch.Tensor:
    """A decoder block's output as the residual tensor ``[batch, pos, d_model]``.

    transformers 5 blocks return the tensor; older ones a tuple whose first item is it.
    """
    return output[0] if isinstance(output, tuple) else output


def _path_of(model: nn.Module, target: nn.Module) -> str | None:
    for name, mod in model.named_modules(remove_duplicate=False):
        if mod is target:
            return name
    return None


def is_norm(mod: nn.Module) -> bool:
    """A normalisation module: ``nn.LayerNorm`` / ``nn.RMSNorm``, or a leaf module whose class is named ``*Norm``
    (HF's ``LlamaRMSNorm``, ``GemmaRMSNorm``, ``OlmoLayerNorm``, ...)."""
    if isinstance(mod, (nn.LayerNorm, nn.RMSNorm)):
        return True
    return not list(mod.children()) and type(mod).__name__.endswith("Norm")


def _child_with(block: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    """The first descendant of ``block`` that has every one of ``names`` as a child."""
    for path, mod in block.named_modules():
        if path and all(isinstance(getattr(mod, n, None), nn.Module) for n in names):
            return path, mod
    return None


@dataclass
class _Draft:
    """What the derivation has found so far, and what it could not find (for the error message)."""

    found: dict = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def need(self, key: str, value, what: str):
        if value is None:
            self.missing.append(what)
        else:
            self.found[key] = value
        return value


# ----------------------------------------------------------------------------------------- the norm formula
def norm_eps(module: nn.Module, fallback: float | None) -> float | None:
    for attr in ("variance_epsilon", "eps", "epsilon", "layer_norm_eps"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)):
            return float(value)
    return fallback


def norm_formula(module: nn.Module, eps: float, d: int) -> tuple[str, float] | None:
    """``(kind, offset)`` such that :class:`NormParams` reproduces ``module`` on random inputs (with a non-zero
    mean, at unit and small scale so that the mean subtraction and epsilon are both tested), or ``None``.

    The module runs with random parameters in place of its own (``torch.func.functional_call``; the module is not
    changed), so the answer depends on what the module computes, not on its weight values: at a default init
    (weights 1, biases 0) or a trained one alike.
    """
    own = dict(module.named_parameters(recurse=False))
    ref = next(iter(own.values()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None else torch.float32
    if device.type == "meta":
        return None
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, d, generator=g) * 1.5 + 0.7
    xs = torch.cat([x, x * 3e-3]).to(device=device, dtype=dtype)
    params = {name: (torch.randn(p.shape, generator=g) * 0.5).to(device=device, dtype=dtype)
              for name, p in own.items()}
    with torch.no_grad():
        y = torch.func.functional_call(module, params, (xs,)).float()
        best = _best_formula(module, params.get("weight"), params.get("bias"), eps, d, device, xs, y)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    return (best[1], best[2]) if best[0] < tol else None


def _best_formula(module, w, b, eps, d, device, xs, y) -> tuple[float, str, float]:
    best = None
    for kind in ("rms", "layer"):
        for offset in ((0.0, 1.0) if isinstance(w, torch.Tensor) else (0.0,)):
            weight = (w.float() + offset) if isinstance(w, torch.Tensor) else torch.ones(d, device=device)
            p = NormParams(module, kind, eps, weight, b if isinstance(b, torch.Tensor) else None, offset)
            err = float(((p.apply(xs) - y).abs() / (y.abs() + 1)).max())
            if best is None or err < best[0]:
                best = (err, kind, offset)
    return best


# --------------------------------------------------------------------------------------------- the probe
def _probe_roles(model: nn.Module, block: nn.Module, attn: nn.Module, mlp: nn.Module, norms: dict[str, nn.Module],
                 last: nn.Module) -> tuple[dict[str, str], bool, list[str], dict[str, torch.Tensor]]:
    """Norm roles and parallel residual from one probe forward (hooks on the first block); also returns what was
    seen (``ids``, ``logits``, the last block's output ``last.out``) for :func:`_check_ends`.

    The hooks add a random mark of its own to the output of every norm, of the attention and of the MLP of the
    first block, so that a value equal to a module's (marked) output is that output, passed on: the roles are the
    block's data flow, which no choice of weights can hide (two norms that compute the same function of the same
    input, as GPT-NeoX's parallel-residual LayerNorms do at their default init, are told apart by their marks).
    Everything recorded downstream (the block output, the logits) is computed from the marked values, so the
    residual and end checks stay consistent.
    """
    seen: dict[str, torch.Tensor] = {}
    marks = torch.Generator().manual_seed(0)

    def first_arg(args, kwargs):
        return args[0] if args else kwargs.get("hidden_states")

    handles = []

    def watch(name: str, mod: nn.Module, mark: bool = False):
        def pre(_m, args, kwargs):
            seen.setdefault(f"{name}.in", first_arg(args, kwargs).detach().clone())

        def post(_m, _args, _kwargs, out):
            if f"{name}.out" in seen:
                return None
            value = resid_from_output(out)
            if mark:  # this module's own signature in everything that reads its output
                value = value + torch.randn(value.shape, generator=marks).to(value)
                out = (value, *out[1:]) if isinstance(out, tuple) else value
            seen[f"{name}.out"] = value.detach().clone()
            return out if mark else None

        handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(mod.register_forward_hook(post, with_kwargs=True))

    watch("block", block)
    watch("last", last)
    watch("attn", attn, mark=True)
    watch("mlp", mlp, mark=True)
    for path, mod in norms.items():
        watch(f"norm:{path}", mod, mark=True)
    cfg = text_config(model)
    vocab = getattr(cfg, "vocab_size", None) or 8
    device = next(model.parameters()).device
    ids = (torch.arange(4, device=device)[None] * 7 + 3) % vocab
    training = [m for m in model.modules() if m.training]  # dropout off for the probe, restored after
    model.eval()
    try:
        with torch.no_grad():
            seen["logits"] = model(input_ids=ids, use_cache=False).logits.detach()
            seen["ids"] = ids
    finally:
        for h in handles:
            h.remove()
        for m in training:
            m.train()

    def same(a: str, b: str) -> bool:
        x, y = seen.get(a), seen.get(b)
        return x is not None and y is not None and x.shape == y.shape and torch.equal(x, y)

    roles: dict[str, str] = {}
    problems = []
    for path in norms:
        n = f"norm:{path}"
        hits = [role for role, ok in (("attn_in", same(f"{n}.out", "attn.in")), ("attn_out", same(f"{n}.in", "attn.out")),
                                      ("mlp_in", same(f"{n}.out", "mlp.in")), ("mlp_out", same(f"{n}.in", "mlp.out")))
                if ok]
        if len(hits) != 1:
            problems.append(f"the role of norm {path!r} (it feeds / follows neither attention nor MLP exactly)"
                            if not hits else f"a single role for norm {path!r} (matches {hits})")
            continue
        if hits[0] in roles.values():
            problems.append(f"one norm per role ({hits[0]} twice)")
        roles[path] = hits[0]
    by_role = {r: p for p, r in roles.items()}
    attn_read = f"norm:{by_role['attn_in']}.in" if "attn_in" in by_role else "attn.in"
    mlp_read = f"norm:{by_role['mlp_in']}.in" if "mlp_in" in by_role else "mlp.in"
    parallel = same(attn_read, "block.in") and same(mlp_read, "block.in")
    if not problems and not _residual_adds_up(seen, by_role, parallel):
        problems.append("a block output equal to its input plus the attention and MLP outputs (after their output "
                        "norms); this block scales or mixes them otherwise (e.g. a residual multiplier)")
    return roles, parallel, problems, seen


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    tol = 1e-4 if b.dtype == torch.float32 else 5e-2
    return a.shape == b.shape and bool(((a.float() - b.float()).abs() <= tol * (1 + b.float().abs())).all())


def _check_ends(model: nn.Module, found: dict, seen: dict[str, torch.Tensor]) -> list[str]:
    """The ends of the network are what the adapter will compute: the first block's input is the token embedding
    (plus learned positions), and the logits are ``unembed(final_norm(last block output))``, soft-capped where the
    config says so. A model that scales either otherwise (Granite's ``embedding_multiplier``, ``logits_scaling``;
    Cohere's ``logit_scale``) is refused."""
    problems = []
    ids = seen["ids"]
    with torch.no_grad():
        h = get_module(model, found["embed"])(ids)
        if found.get("pos_embed"):
            h = h + get_module(model, found["pos_embed"])(torch.arange(ids.shape[1], device=ids.device)[None])
        if not _close(h, seen["block.in"]):
            problems.append("a first layer that reads the token embedding as its embedding module returns it (the "
                            "model scales or transforms it in between)")
        z = get_module(model, found["unembed"])(get_module(model, found["final_norm"])(seen["last.out"]))
        cap = getattr(text_config(model), "final_logit_softcapping", None)
        if cap is not None:
            z = torch.tanh(z / cap) * cap
        if not _close(z, seen["logits"]):
            problems.append("logits equal to unembed(final_norm(last layer output)) (the model scales them "
                            "otherwise)")
    return problems


def _residual_adds_up(seen: dict[str, torch.Tensor], by_role: dict[str, str], parallel: bool) -> bool:
    """The block output is ``x + attn + mlp`` (each after its output norm, if any), up to rounding."""
    attn = seen[f"norm:{by_role['attn_out']}.out"] if "attn_out" in by_role else seen.get("attn.out")
    mlp = seen[f"norm:{by_role['mlp_out']}.out"] if "mlp_out" in by_role else seen.get("mlp.out")
    x, out = seen.get("block.in"), seen.get("block.out")
    if any(t is None for t in (attn, mlp, x, out)):
        return False
    want = (x.float() + attn.float() + mlp.float())
    tol = 1e-4 if out.dtype == torch.float32 else 5e-2
    return bool(((want - out.float()).abs() <= tol * (1 + out.float().abs())).all())


# ------------------------------------------------------------------------------------------ derivation
def derive_spec(model: nn.Module, family: Family) -> ArchitectureSpec:
    """The full :class:`ArchitectureSpec` of ``model``: derived from its config and module tree (see the module
    docstring), completed by ``family``'s data and overrides.

    Raises :class:`UnsupportedArchitectureError` listing what was found and what could not be derived.
    """
    d = _Draft()
    try:
        layers_path, layers = find_decoder_layers(model)
    except UnsupportedArchitectureError as e:
        raise UnsupportedArchitectureError(str(e)) from None
    d.found["layers"] = layers_path
    parent = layers_path.rsplit(".", 1)[0] if "." in layers_path else ""
    block = layers[0]
    cfg = text_config(model)
    over = dict(family.overrides)

    embed = model.get_input_embeddings()
    d.need("embed", _path_of(model, embed) if embed is not None else None, "the token embedding")
    unembed = model.get_output_embeddings()
    d.need("unembed", _path_of(model, unembed) if unembed is not None else None, "the unembedding (lm head)")

    # beside the layer list: final norm, rotary embedding, learned positions
    base = get_module(model, parent) if parent else model
    prefix = f"{parent}." if parent else ""
    finals = [n for n, m in base.named_children() if is_norm(m)]
    d.need("final_norm", prefix + finals[0] if len(finals) == 1 else None,
           f"the final norm beside {layers_path} (found {finals or 'none'})")
    rotary = [n for n, m in base.named_children() if type(m).__name__.endswith("RotaryEmbedding")]
    if rotary:
        d.found["rotary_emb"] = prefix + rotary[0]
    pos = [n for n, m in base.named_children() if isinstance(m, nn.Embedding) and m is not embed]
    if len(pos) == 1:
        d.found["pos_embed"] = prefix + pos[0]
    d.found["rotary"] = bool(rotary)

    # attention
    attn_path = attn = None
    for names in ATTN_QKV:
        hit = _child_with(block, names)
        if hit:
            attn_path, attn = hit
            d.found.update(q=f"{attn_path}.{names[0]}", k=f"{attn_path}.{names[1]}", v=f"{attn_path}.{names[2]}")
            break
    if attn is None:
        for name in ATTN_FUSED:
            hit = _child_with(block, (name,))
            if hit:
                attn_path, attn = hit
                d.found["qkv"] = f"{attn_path}.{name}"
                d.found["qkv_layout"] = family.qkv_layout
                break
    d.need("attn", attn_path, f"the attention module (a child with {ATTN_QKV} or one of {ATTN_FUSED})")
    if attn is not None:
        o = next((n for n in ATTN_OUT if isinstance(getattr(attn, n, None), nn.Module)), None)
        d.need("o", f"{attn_path}.{o}" if o else None, f"the attention output projection (one of {ATTN_OUT})")
        for qn, kn in QK_NORMS:
            if isinstance(getattr(attn, qn, None), nn.Module) and isinstance(getattr(attn, kn, None), nn.Module):
                d.found.update(q_norm=f"{attn_path}.{qn}", k_norm=f"{attn_path}.{kn}")
                break
        lin = get_module(block, d.found.get("q") or d.found.get("qkv", ""))
        from transformers.pytorch_utils import Conv1D

        d.found["conv1d"] = isinstance(lin, Conv1D)

    # MLP
    mlp_path = mlp = None
    for kind, gate, inp, out in MLP_PROJ:
        names = tuple(n for n in (gate, inp, out) if n)
        hit = _child_with(block, names)
        if hit and hit[1] is not attn:
            mlp_path, mlp = hit
            d.found.update(mlp=mlp_path, mlp_kind=kind, mlp_in=f"{mlp_path}.{inp}", mlp_out=f"{mlp_path}.{out}",
                           mlp_gate=f"{mlp_path}.{gate}" if gate else None,
                           mlp_gate_up=kind == "gated" and gate is None)
            break
    d.need("mlp", mlp_path, f"the MLP module (a child with one of {[p[1:] for p in MLP_PROJ]})")
    if mlp is not None:
        act = next((a for a in MLP_ACT if callable(getattr(mlp, a, None))), None)
        d.need("mlp_act", act, f"the MLP activation (an attribute {MLP_ACT} of {type(mlp).__name__})")

    # norms inside the block (outside attention and MLP), their roles and the residual's shape
    inner = tuple(p + "." for p in (attn_path, mlp_path) if p)
    block_norms = {n: m for n, m in block.named_modules() if n and not n.startswith(inner) and is_norm(m)}
    if attn is not None and mlp is not None and "final_norm" in d.found:
        roles, parallel, problems, seen = _probe_roles(model, block, attn, mlp, block_norms, layers[-1])
        ends_known = {"embed", "unembed"} <= d.found.keys()
        d.missing += problems or (_check_ends(model, d.found, seen) if ends_known else [])
        d.found["norms"] = {r: p for p, r in roles.items()}
        d.found["parallel_residual"] = parallel
        # the norm formula, the same for every norm of the model
        eps_default = family.norm_eps
        dm = embed.weight.shape[1] if embed is not None else getattr(cfg, "hidden_size", None)
        formula = None
        for path, mod in [(d.found["final_norm"], get_module(model, d.found["final_norm"])), *block_norms.items()]:
            eps = norm_eps(mod, eps_default)
            if eps is None:
                d.missing.append(f"the epsilon of norm {path!r} ({type(mod).__name__} exposes none: give the "
                                 "family's norm_eps)")
                break
            f = norm_formula(mod, eps, dm)
            if f is None:
                d.missing.append(f"the formula of norm {path!r} ({type(mod).__name__} matches neither RMSNorm nor "
                                 "LayerNorm with weight w, 1 + w or none)")
                break
            if formula is not None and f != formula:
                d.missing.append(f"one norm formula for the whole model ({path!r} computes {f}, others {formula})")
                break
            formula = f
        if formula is not None:
            d.found["norm_kind"], d.found["norm_weight_offset"] = formula
        if family.norm_eps is not None:
            d.found["norm_eps"] = family.norm_eps
    if "q_norm" in d.found and "q" in d.found:
        H = getattr(cfg, "num_attention_heads", None)
        qw = getattr(get_module(block, d.found["q_norm"]), "weight", None)
        rows = get_module(block, d.found["q"]).weight.shape[0]
        if qw is not None and H and qw.numel() * H == rows:
            d.found["qk_norm_scope"] = "head"
        elif qw is not None and qw.numel() == rows:
            d.found["qk_norm_scope"] = "full"
        else:
            d.missing.append("the scope of the QK-norm (its weight is neither d_head nor n_heads · d_head wide)")

    params = inspect.signature(type(block).forward).parameters
    cache_arg = next((a for a in CACHE_ARGS if a in params), None)
    d.need("cache_arg", cache_arg, f"the decoder layer's cache keyword (one of {CACHE_ARGS})")

    d.found.update(over)
    if d.missing:
        found = ", ".join(f"{k}={v!r}" for k, v in d.found.items() if k in ("layers", "embed", "attn", "mlp",
                                                                              "final_norm", "norms", "unembed"))
        raise UnsupportedArchitectureError(
            f"cannot derive an adapter for {type(model).__name__}: missing " + "; ".join(d.missing)
            + f". Derived so far: {found}.")
    fields = set(ArchitectureSpec.__dataclass_fields__)
    extra = set(d.found) - fields
    if extra:
        raise ValueError(f"unknown ArchitectureSpec fields in the overrides of {family.name}: {sorted(extra)}")
    return ArchitectureSpec(name=family.name, class_names=family.classes, notes=family.notes,
                            **{k: v for k, v in d.found.items() if k not in ("name", "class_names", "notes")})
