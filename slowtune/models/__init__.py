"""Base models: the families slowtune supports, the catalog, Hugging Face downloads, GGUF import, and what llama.cpp
needs to know about a model folder.

- :mod:`slowtune.models.architectures`: the supported families and what differs between them;
- :mod:`slowtune.models.catalog`: recommended models, where they train, what a local folder holds;
- :mod:`slowtune.models.hub`: downloads into the Hugging Face cache, offline look-ups;
- :mod:`slowtune.models.gguf_import`: a GGUF file (or an Ollama model) imported as a base model;
- :mod:`slowtune.models.pretokenizers`: llama.cpp's byte-level pre-tokenizers, and which one a tokenizer behaves like;
- :mod:`slowtune.models.gguf_spec`: a folder's hyperparameters and vocabulary in llama.cpp's terms, and whether the
  GGUF export can write it (asked before training too);
- :mod:`slowtune.models.command`: ``slowtune models``.
"""
