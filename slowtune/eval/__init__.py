"""Evaluation: a tuned GGUF scored against its base on the project's held-out probes.

- :mod:`slowtune.eval.probes`: the held-out probes and the open-book prompt;
- :mod:`slowtune.scoring`: one answer's scores (exact match, token F1, key facts, refusals);
- :mod:`slowtune.eval.judge`: the optional LLM judge (a teacher provider) grading answers 1-5;
- :mod:`slowtune.eval.axes`: the three closed-book axes (knowledge, retention, leakage), tuned against base, in
  words, with warnings and examples;
- :mod:`slowtune.eval.report`: the report (summaries, tuned against base, by document, advice), saved reports;
- :mod:`slowtune.eval.pipeline`: :func:`~slowtune.eval.pipeline.run`, the one way to run an evaluation,
  used by ``slowtune eval`` (:mod:`slowtune.eval.command`) and the Chat page's Evaluation tab.

Nothing here imports Qt; llama.cpp (through :mod:`slowtune.chat.model`) and the judge's HTTP client are
imported only inside the functions that use them.
"""
