"""ivlens: instruction vectors, layer patching, probes and exact path tracing for causal LMs."""

__version__ = "0.1.0"
