"""``slowtune bench chat``: the chat engine's speed against plain llama-cpp-python on the same model.

A llama-architecture model of realistic shape (134M parameters; ``--quick``: 9M) with seeded random weights
is generated once, written as GGUF F16 and quantised to Q8_0, all cached under the cache folder. Then, with
the same chat prompt and greedy decoding, each side produces exactly the same number of tokens, in
alternating runs:

- **engine**: :meth:`ChatModel.stream` (template rendering, context fitting, its own token loop, stop
  scanning, the OpenAI-shaped chunks, the figures);
- **raw**: ``Llama.create_completion(stream=True)`` on the token ids the engine rendered, on a second
  ``Llama`` opened through the same ``load_gguf`` with the same context size, threads and GPU layers.

Both are timed from the outside in the same way: time to the first piece of text, and tokens per second
between the first and the last piece. Both sides are kept from ending early (every end-of-generation token
banned) and from producing tokens whose text cannot be shown on its own (byte pieces, control and padding
tokens), which a random model otherwise emits and which ``create_completion`` holds back, so that each
piece of text is one token on both sides. The token counts are checked from llama.cpp's own KV-cache position,
and the two texts are compared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

from slowtune.bench.train import bench_model

FULL = {"hidden_size": 768, "intermediate_size": 2048, "num_layers": 12, "num_heads": 12, "num_kv_heads": 12,
        "vocab": 32000, "tokens": 256, "repeats": 5}
QUICK = {"hidden_size": 256, "intermediate_size": 704, "num_layers": 6, "num_heads": 4, "num_kv_heads": 4,
         "vocab": 8000, "tokens": 32, "repeats": 3}
QUANTS = ("Q8_0", "F16")

PROMPT = [
    {"role": "system", "content": "You are a careful assistant for the water utility. Answer from the maintenance "
                                  "handbook, briefly, and say so when the handbook does not cover a question."},
    {"role": "user", "content": "The pump station draws water from the reservoir and sends it to the eastern "
                                "district. How often is each valve checked, what does the log record, and who "
                                "signs it? Please list the steps an engineer follows during the spring check."},
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a small model and fewer tokens: a smoke test of the benchmark")
    p.add_argument("--tokens", type=int, help="tokens per answer (default 256; --quick: 32)")
    p.add_argument("--repeats", type=int, help="timed runs per side, alternating (default 5; --quick: 3)")
    p.add_argument("--quant", choices=QUANTS, default="Q8_0", help="which GGUF of the model to run (default Q8_0)")


def bench_gguf(shape: dict[str, int], quant: str) -> tuple[Path, Path]:
    """(the Hugging Face folder, its GGUF in ``quant``), made once and kept in the cache folder."""
    from slowtune.export.gguf_writer import write_gguf
    from slowtune.export.quantize import quantize

    # ``slowtune bench train``'s model of the same shape (the same seeded model, built once), then its GGUFs.
    folder = bench_model(shape)
    ggufs = folder.with_name(folder.name + "-gguf")
    ggufs.mkdir(exist_ok=True)
    f16 = ggufs / "model-F16.gguf"
    if not f16.exists():
        write_gguf(folder, f16, out_type="f16")  # written under a temporary name and renamed
    if quant == "F16":
        return folder, f16
    target = ggufs / f"model-{quant}.gguf"
    if not target.exists():
        quantize(f16, target, quant)
    return folder, target


def _banned_tokens(llm: Any) -> dict[int, float]:
    """Every end-of-generation token, and every token whose text is empty, is not whole UTF-8 on its own, or
    could start a stop marker: banning them makes both sides write exactly N tokens, one piece of text each."""
    import llama_cpp

    vocab = llm._model.vocab
    banned = {}
    for token in range(llm.n_vocab()):
        piece = llm.detokenize([token])
        try:
            text = piece.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if llama_cpp.llama_vocab_is_eog(vocab, token) or not text or "<" in text:
            banned[token] = float("-inf")
    return banned


def _time_stream(pieces: Any) -> dict[str, Any]:
    """Times, from the outside, a stream of text pieces: ``pieces`` yields text (empty for no text)."""
    start = time.perf_counter()
    first = last = None
    count = 0
    texts = []
    for text in pieces:
        if text:
            last = time.perf_counter()
            first = first or last
            count += 1
            texts.append(text)
    end = time.perf_counter()
    if first is None or last is None:
        raise SystemExit("slowtune bench chat: a run produced no text")
    return {"ttft_ms": (first - start) * 1000, "total_ms": (end - start) * 1000, "pieces": count,
            "tokens_per_s": (count - 1) / (last - first) if count > 1 and last > first else None,
            "text": "".join(texts)}


def _engine_run(model: Any, sampling: Any) -> dict[str, Any]:
    stats: dict[str, Any] = {}

    def pieces() -> Any:
        for part in model.stream(PROMPT, sampling):
            if "slowtune_stats" in part:
                stats.update(part["slowtune_stats"])
            yield part["choices"][0]["delta"].get("content", "")

    model.llm.reset()  # no KV-cache reuse from the previous run: each run evaluates the whole prompt
    result = _time_stream(pieces())
    result["decoded_tokens"] = model.llm.n_tokens - stats["prompt_tokens"] + 1  # the last token is not evaluated
    result["completion_tokens"] = stats["completion_tokens"]
    result["reported_ttft_ms"] = stats["ttft_ms"]
    result["reported_tokens_per_s"] = stats["tokens_per_s"]
    return result


def _raw_run(llm: Any, ids: list[int], tokens: int, bias: dict[int, float], stop: list[str]) -> dict[str, Any]:
    from llama_cpp import LogitsProcessorList

    from slowtune.chat.model import logit_bias_processor

    # The engine's bias processor, not create_completion's logit_bias (a Python loop over every banned token,
    # milliseconds per token here): the ban is the benchmark's, so both sides pay the same for it.
    processors = LogitsProcessorList([logit_bias_processor(bias, llm.n_vocab())])

    def pieces() -> Any:
        for part in llm.create_completion(ids, max_tokens=tokens, temperature=0.0, top_k=1, top_p=1.0,
                                          repeat_penalty=1.0, seed=0, logits_processor=processors, stop=stop,
                                          stream=True):
            yield part["choices"][0]["text"]

    llm.reset()
    result = _time_stream(pieces())
    result["decoded_tokens"] = llm.n_tokens - len(ids) + 1
    return result


def bench_chat(args: argparse.Namespace) -> dict[str, Any]:
    from slowtune.chat.model import ChatModel, Sampling
    from slowtune.llama import load_gguf, repacking_is_safe
    from slowtune.safetensors import parameter_count

    shape = QUICK if args.quick else FULL
    tokens = args.tokens or shape["tokens"]
    repeats = args.repeats or shape["repeats"]
    if tokens < 2:
        raise SystemExit("slowtune bench chat: --tokens must be at least 2")
    if repeats < 1:
        raise SystemExit("slowtune bench chat: --repeats must be at least 1")
    folder, gguf = bench_gguf(shape, args.quant)
    n_ctx = 1024 if tokens <= 512 else tokens + 512

    engine = ChatModel(gguf, n_ctx=n_ctx)
    layers = 0 if engine.backend == "CPU" else -1
    raw = load_gguf(gguf, n_ctx=engine.n_ctx, n_threads=engine.llm.n_threads,
                    n_threads_batch=engine.llm.n_threads_batch, n_gpu_layers=layers)
    try:
        bias = _banned_tokens(raw)
        sampling = Sampling.greedy(tokens)
        sampling.logit_bias = bias
        ids, _ = engine.fit(PROMPT, tokens)

        # One short warm-up each: weights paged in, buffers allocated.
        _engine_run(engine, dataclasses.replace(sampling, max_tokens=4))
        _raw_run(raw, ids, 4, bias, engine.stop)
        runs = []
        for i in range(repeats):
            # Alternate which side goes first, so neither always runs on a warmer (or busier) machine.
            if i % 2 == 0:
                e = _engine_run(engine, sampling)
                r = _raw_run(raw, ids, tokens, bias, engine.stop)
            else:
                r = _raw_run(raw, ids, tokens, bias, engine.stop)
                e = _engine_run(engine, sampling)
            for side, result in (("engine", e), ("raw", r)):
                if result["decoded_tokens"] != tokens or result["pieces"] != tokens:
                    raise SystemExit(f"slowtune bench chat: the {side} run produced {result['decoded_tokens']} "
                                     f"tokens ({result['pieces']} pieces of text), not {tokens}")
            runs.append({"engine": e, "raw": r, "same_text": e["text"] == r["text"]})
        threads = engine.llm.n_threads
    finally:
        engine.close()
        raw.close()

    def median(side: str, key: str) -> float:
        return statistics.median(run[side][key] for run in runs)

    engine_tps, raw_tps = median("engine", "tokens_per_s"), median("raw", "tokens_per_s")
    return {
        "tokens_per_s_ratio": round(engine_tps / raw_tps, 3),
        "engine_tokens_per_s": round(engine_tps, 2),
        "raw_tokens_per_s": round(raw_tps, 2),
        "ttft_ms": round(median("engine", "ttft_ms"), 1),
        "raw_ttft_ms": round(median("raw", "ttft_ms"), 1),
        "engine_reported_ttft_ms": round(median("engine", "reported_ttft_ms"), 1),
        "engine_reported_tokens_per_s": round(median("engine", "reported_tokens_per_s"), 2),
        "tokens": tokens,
        "prompt_tokens": len(ids),
        "same_tokens": True,  # checked above: both sides decoded exactly `tokens` tokens in every run
        "same_text": all(run["same_text"] for run in runs),
        "params": parameter_count(list(folder.glob("*.safetensors"))),
        "gguf": str(gguf),
        "gguf_bytes": gguf.stat().st_size,
        "quant": args.quant,
        "backend": engine.backend,
        "threads": threads,
        "n_ctx": engine.n_ctx,
        "cpu_weight_repacking": repacking_is_safe(),
        "repeats": repeats,
        "banned_tokens": len(bias),
        "runs": [{side: {k: (round(v, 2) if isinstance(v, float) else v) for k, v in run[side].items() if k != "text"}
                  for side in ("engine", "raw")} | {"same_text": run["same_text"]} for run in runs],
    }


def main() -> None:
    """``python -m slowtune.bench.chat [--quick]``: the same as ``slowtune bench chat``."""
    parser = argparse.ArgumentParser(prog="slowtune bench chat")
    add_arguments(parser)
    print(json.dumps(bench_chat(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
