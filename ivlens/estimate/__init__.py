"""Cost estimates without running anything: FLOPs and bytes from a model's config, this device's measured
GEMM rate, and the cost estimates of the long commands (what ``--dry-run`` prints).

- :mod:`ivlens.estimate.flops`: :class:`ModelShape` (sizes read from any supported HF config),
  :func:`layer_flops` (one decoder layer, one token, ``n_keys`` keys), :func:`unembed_flops`,
  :func:`prompt_flops`.
- :mod:`ivlens.estimate.calibrate`: :func:`gemm_rate` (FLOP/s of this device on the model's own matrix shapes,
  a < 1 s micro-benchmark cached per process) and :func:`op_latency`.
- :mod:`ivlens.estimate.model`: :func:`~ivlens.estimate.model.model_info`, a model's sizes from its
  ``config.json`` (or GGUF header) with meta-device weights, and its tokenizer or a stand-in.
- :mod:`ivlens.estimate.costs`: the work of each command (patch, probe, trace, eval, organism build) as counts
  (:class:`~ivlens.estimate.costs.CostEstimate`), and :func:`~ivlens.estimate.costs.seconds` turning counts into time.

Pure maths on counts: nothing here knows the commands. ``--dry-run`` itself is each analysis's cost estimate (prompts,
options: ``ivlens.<analysis>.dry_run``) and its printing (:mod:`ivlens.dry_run`).
"""

from .flops import ModelShape, layer_flops, prompt_flops, unembed_flops

__all__ = ["ModelShape", "layer_flops", "prompt_flops", "unembed_flops"]
