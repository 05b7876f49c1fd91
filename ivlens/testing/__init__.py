"""Test utilities shipped with ivlens: tiny random models of every supported architecture and a small BPE
tokenizer trained in milliseconds. Used by the test-suite and handy for users writing their own tests."""
