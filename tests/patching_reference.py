"""Naive, independent reference for layer patching: plain PyTorch forward hooks on the unmodified HF model,
one full forward per layer set and position, one prompt at a time (no padding, no caches, no batching). Each forward
passes ``use_cache=False``: the same logits bit for bit, without the key-value cache that nothing reads (a tenth
of a tiny model's forward).

Used only by the tests, to check :mod:`ivlens.patching.engine` and :func:`ivlens.patching.sweep.patch_sweep`.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def _layers(model):
    """The decoder blocks: the model's ``nn.ModuleList`` of ``num_hidden_layers`` modules (``model.layers``,
    ``transformer.h``, ``gpt_neox.layers``, ...), found without ivlens."""
    n = model.config.num_hidden_layers
    return next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n)


@torch.no_grad()
def run_logits(model, ids) -> torch.Tensor:
    """Last-position logits ``[d_vocab]`` of one unpadded prompt."""
    return model(input_ids=torch.tensor([list(ids)]), use_cache=False).logits[0, -1]


@torch.no_grad()
def source_ivs(model, ids) -> list[torch.Tensor]:
    """Output of every decoder layer at the last token, via forward hooks: ``n_layers`` tensors ``[d_model]``."""
    out: dict[int, torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(_layers(model)):
        def hook(_m, _inp, o, i=i):
            o = o[0] if isinstance(o, tuple) else o
            out[i] = o[0, -1].clone()
        handles.append(layer.register_forward_hook(hook))
    try:
        model(input_ids=torch.tensor([list(ids)]), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [out[i] for i in range(len(out))]


@contextmanager
def edited_layers(model, layers, edit):
    """Forward hooks on the decoder layers ``layers`` that call ``edit(hidden, layer)`` on a clone of each layer's
    output ``[batch, pos, d_model]`` (in place) and return it; removed on exit."""
    handles = []
    for layer_idx in layers:
        def hook(_m, _inp, o, layer_idx=layer_idx):
            t = (o[0] if isinstance(o, tuple) else o).clone()
            edit(t, layer_idx)
            return (t, *o[1:]) if isinstance(o, tuple) else t
        handles.append(_layers(model)[layer_idx].register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _write_at(token, ivs):
    """The patching edit: the layer's IV replaces the residual at ``token``."""
    def edit(t, layer):
        t[0, token] = ivs[layer]
    return edit


@torch.no_grad()
def patched_logits(model, target_ids, ivs, layers, token) -> torch.Tensor:
    """Last-position logits ``[d_vocab]`` of the target with ``ivs[l]`` written at ``token`` after each layer
    ``l`` in ``layers`` (a forward hook replacing the layer's output)."""
    with edited_layers(model, layers, _write_at(token, ivs)):
        return run_logits(model, target_ids)


@torch.no_grad()
def patched_continuation_logprob(model, prompt_ids, continuation, ivs, layers, token) -> float:
    """Teacher-forced log-probability of ``continuation`` after ``prompt_ids`` with the IVs patched in at ``token``
    (of the prompt) after each layer of ``layers``: one hooked forward of ``prompt + continuation``, summing
    ``log softmax(logits[len(prompt) - 1 + i])[continuation[i]]`` in float64."""
    ids = list(prompt_ids) + list(continuation)
    with edited_layers(model, layers, _write_at(token, ivs)):
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].double()  # [pos, d_vocab]
    logp = logits.log_softmax(-1)
    n = len(prompt_ids)
    return float(sum(logp[n - 1 + i, c] for i, c in enumerate(continuation)))


def label_metrics(logits: torch.Tensor, label: int) -> dict[str, float]:
    """logit, probability, rank (1 + #strictly larger logits) and reciprocal rank, written out plainly."""
    logit = float(logits[label])
    prob = float(torch.softmax(logits.double(), -1)[label])
    rank = 1 + int((logits > logits[label]).sum())
    return {"logit": logit, "prob": prob, "rank": rank, "rr": 1.0 / rank}


def reference_rows(model, tok, task, subtask, sample_ids, layer_sets, positions, mode, target, source_model=None):
    """Per (sample, position name, layer set): the reference's metrics of the instructed label, for the prompts
    :func:`ivlens.patching.sweep.patch_sweep` builds (one naive hooked forward per row)."""
    from ivlens.tasks import instructed_prompt, instruction_prompt, label_token_ids, query_prompt

    src_model = source_model or model
    a = task.subtask(subtask)
    b = task.other(subtask)
    ivs = source_ivs(src_model, instruction_prompt(tok, a.instruction).input_ids)
    out = {}
    for i in sample_ids:
        s = task.samples[i]
        instructed = instructed_prompt(tok, task, s, a.instruction)
        tgt = (query_prompt(tok, task, s, query_style=target) if mode == "transfer"
               else instructed_prompt(tok, task, s, task.subtask(b).instruction))
        label = label_token_ids(tok, instructed, s.answer(subtask))[0]
        space = {label_token_ids(tok, instructed, lab)[0] for lab in a.label_space}
        alt = label_token_ids(tok, instructed, s.answer(b))[0]
        base_t = run_logits(model, tgt.input_ids)
        base_i = run_logits(model, instructed.input_ids)
        for pos in positions:
            tok_idx = {"first": 0, "last": len(tgt) - 1, "t_inst": tgt.t_inst}.get(pos, pos)
            tok_idx = tok_idx % len(tgt) if isinstance(tok_idx, int) else tok_idx
            for layers in layer_sets:
                lg = patched_logits(model, tgt.input_ids, ivs, layers, tok_idx)
                m = label_metrics(lg, label)
                m["logit_diff"] = float(lg[label] - lg[alt])
                m["delta_logit_vs_target"] = m["logit"] - float(base_t[label])
                m["delta_logit_vs_instructed"] = m["logit"] - float(base_i[label])
                m["acc_top1"] = int(lg.argmax()) == label
                m["ia_top1"] = int(lg.argmax()) in space
                out[(i, str(pos), ",".join(map(str, layers)))] = m
    return out


def first_order_terms(model, target_ids, ivs, token, label, alt=None):
    """``[n_layers]`` float64 per-layer first-order terms ``∂y/∂resid_post[l][token] · (ivs[l] − resid_post[l][token])``
    of one unpadded target (``y = z_label``, or ``z_label − z_alt`` with ``alt``), by autograd through forward hooks
    that add a zero leaf to each decoder layer's output at ``token`` (the model as it is, its own forward)."""
    n = len(_layers(model))
    leaves = [torch.zeros(ivs[0].shape[-1], dtype=ivs[0].dtype, requires_grad=True) for _ in range(n)]
    clean: dict[int, torch.Tensor] = {}

    def edit(t, layer):
        clean[layer] = t[0, token].detach().clone()
        t[0, token] = t[0, token] + leaves[layer]

    with torch.enable_grad(), edited_layers(model, range(n), edit):
        z = model(input_ids=torch.tensor([list(target_ids)]), use_cache=False).logits[0, -1]
        y = z[label] - (z[alt] if alt is not None else 0)
        grads = torch.autograd.grad(y, leaves)
    return torch.stack([(g.double() * (ivs[i].double() - clean[i].double())).sum() for i, g in enumerate(grads)]).numpy()


def reference_estimates(model, tok, task, subtask, sample_ids, positions, target):
    """Per (sample, position name): ``{"logit": [n_layers], "logit_diff": [n_layers]}`` per-layer first-order terms
    (:func:`first_order_terms`) for the transfer-mode prompts :func:`ivlens.patching.sweep.patch_sweep` builds."""
    from ivlens.tasks import instructed_prompt, instruction_prompt, label_token_ids, query_prompt

    a, b = task.subtask(subtask), task.other(subtask)
    ivs = source_ivs(model, instruction_prompt(tok, a.instruction).input_ids)
    out = {}
    for i in sample_ids:
        s = task.samples[i]
        instructed = instructed_prompt(tok, task, s, a.instruction)
        tgt = query_prompt(tok, task, s, query_style=target)
        label = label_token_ids(tok, instructed, s.answer(subtask))[0]
        alt = label_token_ids(tok, instructed, s.answer(b))[0]
        for pos in positions:
            tok_idx = {"first": 0, "last": len(tgt) - 1}[pos]
            out[(i, pos)] = {"logit": first_order_terms(model, tgt.input_ids, ivs, tok_idx, label),
                             "logit_diff": first_order_terms(model, tgt.input_ids, ivs, tok_idx, label, alt)}
    return out
