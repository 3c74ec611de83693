"""Test helpers that ship with slowtune, used by the test suite, `slowtune bench` and the self-test.

- ``tiny_models``: tiny Hugging Face model folders (and their tokenizers) built in seconds; it imports nothing of
  slowtune's, so every layer may use it (it keeps its own copies of the split regexes it needs);
- ``tiny_project``: a tiny model and a project with a few accepted rows; it writes dataset rows, so it sits with
  the dataset in the layers (tests/test_architecture.py);
- ``fake_openai``: the OpenAI-compatible test server, standard library only; only the benchmarks (and the
  screenshot tour) import it.

Nothing here imports Qt, and the heavy libraries (mlx, mlx_lm, transformers) are only imported inside the
functions that need them, so importing this package stays cheap.
"""
