"""Test utilities shipped with ivlens: tiny random models of every supported architecture and a small BPE
tokenizer trained in milliseconds. Used by the test-suite and handy for users writing their own tests."""

#: Every architecture with a tiny random model, one per supported family (tests parametrise over these). Here, not in
#: :mod:`ivlens.testing.tiny`, so that naming them imports no model code (a test-suite's parametrisation, pytest-xdist's
#: controller process).
ARCHS = ("olmo2", "llama", "qwen2", "gpt2", "gemma", "gemma2", "gemma3", "qwen3", "olmo3", "olmo", "mistral", "phi3",
         "gpt_neox", "starcoder2")
#: Tiny models of classes that have *no* adapter (eval and IV collection must still work on them).
NO_ADAPTER_ARCHS = ("stablelm",)
