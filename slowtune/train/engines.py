"""The two training engines behind one interface: ``loss_and_grads(micro_batches) -> StepResult``.

The loss of a step is the masked cross-entropy summed over the assistant tokens of all its micro-batches,
divided by their number, so accumulating micro-batches gives the same gradient as one big batch.

In-memory: the whole model is in memory and one ``nn.value_and_grad`` covers the full graph (optionally
recomputing each block in the backward pass, "gradient checkpointing").

Streamed (the model stays in its own files; one block is in memory at a time): forward loads block i, computes
h[i+1] = block_i(h[i]) for every micro-batch, keeps only the boundary activations, and frees block i. The head
(norm + lm_head + chunked cross-entropy) gives the loss and g = dL/dh[L]. Backward, from the top: load block i
again, take the gradient of sum(block_i(h[i]) * g) with respect to (block i's LoRA parameters, h[i]), which gives
its LoRA gradients and the next g; free it. Blocks below the lowest LoRA block run forward once and are never read
again. The next block's tensors are read on a separate stream while the current one computes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from slowtune.train import arch
from slowtune.train.config import StreamConfig
from slowtune.train.model import TrainModel


class MicroBatch(Protocol):
    inputs: Any  # int32 [B, T]
    targets: Any  # int32 [B, T]
    loss_mask: Any  # float32 [B, T]
    n_loss_tokens: int


@dataclass
class StepResult:
    loss: float  # mean cross-entropy per loss token
    n_tokens: int  # loss tokens in the step
    grads: dict[str, Any]  # flat name -> gradient, the names of TrainModel.lora_parameters()
    io_blocked_s: float = 0.0  # time spent waiting for weights to arrive from disk
    bytes_read: int = 0
    stats: dict[str, Any] = field(default_factory=dict)


def _arrays(batch: MicroBatch) -> tuple[Any, Any, Any]:
    import mlx.core as mx

    return mx.array(batch.inputs), mx.array(batch.targets), mx.array(batch.loss_mask).astype(mx.float32)


def _masks(tm: TrainModel, h: Any) -> dict[bool, Any]:
    return arch.masks(tm, h)


def _embed(tm: TrainModel, inputs: Any) -> Any:
    return arch.embed(tm, inputs)


def head_loss_sum(tm: TrainModel, h: Any, targets: Any, mask: Any, chunk: int) -> Any:
    """Summed masked cross-entropy of the final norm + output layer, ``chunk`` positions at a time.

    Each chunk runs under ``mx.checkpoint``: its logits are recomputed in the backward pass instead of kept,
    so a 150k vocabulary never holds [B, T, V] logits for the whole sequence.
    """
    import mlx.core as mx

    def piece(hc: Any, tc: Any, mc: Any) -> Any:
        # Targets and mask are constants: only hc is an input of the checkpointed function.
        logits = arch.head_logits(tm, hc).astype(mx.float32)
        ce = mx.logsumexp(logits, axis=-1) - mx.take_along_axis(logits, tc[..., None], axis=-1)[..., 0]
        return (ce * mc).sum()

    total = mx.array(0.0, dtype=mx.float32)
    length = h.shape[1]
    for s in range(0, length, chunk):
        e = min(s + chunk, length)
        tc, mc = targets[:, s:e], mask[:, s:e]
        total = total + mx.checkpoint(lambda hc, tc=tc, mc=mc: piece(hc, tc, mc))(h[:, s:e])
    return total


class MemoryEngine:
    name = "memory"

    def __init__(self, tm: TrainModel, *, grad_checkpoint: bool = False, head_chunk: int = 64) -> None:
        self.tm = tm
        self.grad_checkpoint = grad_checkpoint
        self.head_chunk = head_chunk

    def _forward_loss(self, inputs: Any, targets: Any, mask: Any, n_total: int, seed: int = 0) -> Any:
        import mlx.core as mx

        tm = self.tm
        h = _embed(tm, inputs)
        masks = _masks(tm, h)
        for i, layer in enumerate(tm.layers):
            if self.grad_checkpoint:
                def run(params: Any, x: Any, layer: Any = layer, i: int = i) -> Any:
                    # The recomputation in the backward pass must draw the same dropout masks.
                    mx.random.seed(seed + i + 1)
                    layer.update(params)
                    return arch.block_call(tm, i, x, masks)

                mx.random.seed(seed + i + 1)

                h = mx.checkpoint(run)(layer.trainable_parameters(), h)
            else:
                mx.random.seed(seed + i + 1)  # per block, as the other paths do: the same dropout masks
                h = arch.block_call(tm, i, h, masks)
            if i < tm.first_lora_block:
                # Nothing below the lowest LoRA block needs a gradient.
                h = mx.stop_gradient(h)
        return head_loss_sum(tm, h, targets, mask, self.head_chunk) / n_total

    def loss_and_grads(self, batches: list[MicroBatch], step: int = 0) -> StepResult:
        import mlx.core as mx
        import mlx.nn as nn
        from mlx.utils import tree_flatten

        n_total = sum(int(b.n_loss_tokens) for b in batches)
        loss_total, grads = 0.0, None
        for m, batch in enumerate(batches):
            seed = _dropout_seed(step, m)
            value_and_grad = nn.value_and_grad(self.tm.model, lambda *a, seed=seed: self._forward_loss(*a, n_total, seed))
            mx.random.seed(seed)
            loss, g = value_and_grad(*_arrays(batch))
            flat = dict(tree_flatten(g))
            grads = flat if grads is None else {k: grads[k] + v for k, v in flat.items()}
            mx.eval(loss, grads)
            loss_total += loss.item()
        return StepResult(loss_total, n_total, grads or {})

    def loss_only(self, batches: list[MicroBatch]) -> tuple[float, int]:
        """Mean loss per loss token over ``batches``, no gradients (validation)."""
        import mlx.core as mx

        n_total = sum(int(b.n_loss_tokens) for b in batches)
        total = 0.0
        self.tm.model.eval()
        try:
            for batch in batches:
                loss = self._forward_loss(*_arrays(batch), n_total)
                mx.eval(loss)
                total += loss.item()
        finally:
            self.tm.model.train()
        return total, n_total


    # --- weight residency, for slowtune.train.decode: the whole model is resident -------------------------
    @contextlib.contextmanager
    def hold(self, key: Any) -> Iterator[None]:
        yield

    def settle(self, x: Any) -> None:
        """Nothing to do: the graph is evaluated when the decoder reads the next token."""

    def release_all(self) -> None:
        """Nothing to release."""


def _dropout_seed(step: int, micro: int, block: int = -1) -> int:
    # The same dropout masks in a block's forward and in its recomputation during backward.
    return (step * 1_000_003 + micro * 10_007 + block + 1) % (2**31)


class StreamedEngine:
    name = "streamed"

    def __init__(self, tm: TrainModel, stream: StreamConfig | None = None) -> None:
        import mlx.core as mx

        if not tm.streamed:
            raise ValueError("StreamedEngine needs a TrainModel built with streamed=True")
        self.tm = tm
        self.cfg = stream or StreamConfig()
        self.io_stream = mx.new_stream(mx.cpu)  # reads run here, beside the compute stream
        if self.cfg.cache_limit_mb >= 0:
            # MLX keeps freed buffers for reuse; streamed training exists to bound memory, so bound that too.
            mx.set_cache_limit(self.cfg.cache_limit_mb * 2**20)
        self._pending: dict[Any, dict[str, Any]] = {}
        self._loaded: set[Any] = set()
        self.io_blocked_s = 0.0
        self.bytes_read = 0

    # --- weight residency ---------------------------------------------------------------------------
    def _names(self, key: Any) -> list[str]:
        tm = self.tm
        if key == "embed":
            return tm.embed_names
        if key == "head":
            return tm.head_names
        return tm.block_names[key]

    def _request(self, key: Any) -> None:
        """Start reading ``key``'s tensors on the I/O stream (no wait)."""
        import mlx.core as mx

        if key in self._pending or key in self._loaded or key is None:
            return
        arrays = self.tm.cast(self.tm.source.load(self._names(key), stream=self.io_stream))
        if self.cfg.prefetch:
            mx.async_eval(list(arrays.values()))
        self._pending[key] = arrays

    def _acquire(self, key: Any) -> None:
        """Make ``key``'s weights resident in the model, waiting for the read if it is still running."""
        import mlx.core as mx

        if key in self._loaded:
            return
        self._request(key)
        arrays = self._pending.pop(key)
        start = time.perf_counter()
        mx.eval(list(arrays.values()))
        self.io_blocked_s += time.perf_counter() - start
        self.bytes_read += self.tm.source.nbytes(self._names(key))
        self.tm.model.load_weights([(self.tm._path_of[n], a) for n, a in arrays.items()], strict=False)
        self._loaded.add(key)

    def _free(self, key: Any) -> None:
        if key not in self._loaded:
            return
        names = self._names(key)
        self.tm.release(names)
        self._loaded.discard(key)
        if self.cfg.cold:
            self.tm.source.drop_from_page_cache(names)

    def _free_all(self) -> None:
        for key in list(self._loaded):
            self._free(key)
        self._pending.clear()

    def _embed_all(self, data: list[tuple[Any, Any, Any]]) -> tuple[list[Any], dict[bool, Any]]:
        """Embed every micro-batch (the embedding is read once), start reading block 0, build the masks."""
        import mlx.core as mx

        self._acquire("embed")
        self._request(0)
        hs = [_embed(self.tm, inputs) for inputs, _, _ in data]
        mx.eval(hs)
        self._free("embed")
        return hs, _masks(self.tm, hs[0])

    def _after(self, key: Any) -> Any:
        if key == "embed":
            return 0
        if key == "head":
            return "embed"
        return key + 1 if key + 1 < self.tm.num_layers else "head"

    @contextlib.contextmanager
    def hold(self, key: Any) -> Iterator[None]:
        """``key``'s weights resident inside the ``with`` (the next ones are read meanwhile), freed after it."""
        self._acquire(key)
        self._request(self._after(key))
        try:
            yield
        finally:
            self._free(key)

    def settle(self, x: Any) -> None:
        """Compute ``x`` now, while the block it needs is still resident."""
        import mlx.core as mx

        mx.eval(x)

    def release_all(self) -> None:
        self._free_all()

    # --- validation: forward only ----------------------------------------------------------------------
    def loss_only(self, batches: list[MicroBatch]) -> tuple[float, int]:
        import mlx.core as mx

        tm = self.tm
        n_total = sum(int(b.n_loss_tokens) for b in batches)
        data = [_arrays(b) for b in batches]
        tm.model.eval()
        try:
            hs, masks = self._embed_all(data)
            for i in range(tm.num_layers):
                self._acquire(i)
                self._request(i + 1 if i + 1 < tm.num_layers else "head")
                hs = [arch.block_call(tm, i, h, masks) for h in hs]
                mx.eval(hs)
                self._free(i)
            self._acquire("head")
            total = 0.0
            for h, (_, targets, mask) in zip(hs, data, strict=True):
                loss = head_loss_sum(tm, h, targets, mask, self.cfg.head_chunk) / n_total
                mx.eval(loss)
                total += loss.item()
        finally:
            self._free_all()
            tm.model.train()
        return total, n_total

    # --- logits: forward only, block by block (export verification) ----------------------------------------
    def logits(self, sequences: list[list[int]], progress: Any = None,
               plain: list[list[int]] | None = None) -> list[Any] | tuple[list[Any], list[Any]]:
        """Next-token logits (float32 numpy, [len, vocab]) at every position of each token sequence, computed the
        way training runs forward: one block resident at a time, every sequence through it while it is loaded.

        Memory is one or two blocks, the boundary activations and the logits; the model is never whole in memory.
        ``progress`` (a slowtune Progress) is checked between blocks, so a cancel stops at the next block.
        ``plain``: more sequences to run through the same loaded blocks with the LoRA layers switched off (the base
        model as it was); then the return value is (logits with LoRA, logits of ``plain`` without).
        """
        import mlx.core as mx
        import numpy as np

        tm = self.tm
        tm.model.eval()
        try:
            self._acquire("embed")
            self._request(0)
            hs = [_embed(tm, mx.array([seq])) for seq in sequences]
            hp = [_embed(tm, mx.array([seq])) for seq in plain or []]
            mx.eval(hs + hp)
            self._free("embed")
            masks = [_masks(tm, h) for h in hs]
            plain_masks = [_masks(tm, h) for h in hp]
            for i in range(tm.num_layers):
                if progress is not None:
                    progress.check()
                    progress.report("reference", i, tm.num_layers)
                self._acquire(i)
                self._request(i + 1 if i + 1 < tm.num_layers else "head")
                hs = [arch.block_call(tm, i, h, m) for h, m in zip(hs, masks, strict=True)]
                if hp:
                    with _lora_off(tm.layers[i]):
                        hp = [arch.block_call(tm, i, h, m) for h, m in zip(hp, plain_masks, strict=True)]
                        mx.eval(hp)
                mx.eval(hs)
                self._free(i)
            self._acquire("head")

            def head(h: Any) -> Any:
                return np.array(arch.head_logits(tm, h).astype(mx.float32)[0])

            out = [head(h) for h in hs]
            plain_out = [head(h) for h in hp]
        finally:
            self._free_all()
            tm.model.train()
        return (out, plain_out) if plain is not None else out

    # --- one step -------------------------------------------------------------------------------------
    def loss_and_grads(self, batches: list[MicroBatch], step: int = 0) -> StepResult:
        import mlx.core as mx
        from mlx.utils import tree_flatten

        tm = self.tm
        L, k = tm.num_layers, tm.first_lora_block
        self.io_blocked_s, self.bytes_read = 0.0, 0
        n_total = sum(int(b.n_loss_tokens) for b in batches)
        data = [_arrays(b) for b in batches]
        keep = max(0, self.cfg.keep_turnaround)
        split_rows = self.cfg.backward_rows and tm.lora_config.dropout == 0.0
        try:
            hs, masks = self._embed_all(data)

            # Forward, keeping the inputs of LoRA blocks.
            saved: dict[int, list[Any]] = {}
            for i in range(L):
                self._acquire(i)
                # The head (the output matrix, often the largest tensor) is read after the last block, not
                # beside it: reading it alongside would set the step's peak memory.
                self._request(i + 1 if i + 1 < L else None)
                if i >= k:
                    saved[i] = hs
                outs = []
                for m, h in enumerate(hs):
                    mx.random.seed(_dropout_seed(step, m, i))
                    outs.append(arch.block_call(tm, i, h, masks))
                mx.eval(outs)
                hs = outs
                if i < L - keep:
                    self._free(i)

            # Head: loss and the cotangent of the last hidden state, one chunk of positions at a time so
            # that only one chunk's logits (and their gradient) ever exist.
            self._acquire("head")
            loss_total, gs = 0.0, []
            chunk = self.cfg.head_chunk
            for h, (_, targets, mask) in zip(hs, data, strict=True):
                pieces = []
                for s in range(0, h.shape[1], chunk):
                    t, w = targets[:, s : s + chunk], mask[:, s : s + chunk]
                    loss, g = mx.value_and_grad(lambda hc, t=t, w=w: head_loss_sum(tm, hc, t, w, chunk) / n_total)(
                        h[:, s : s + chunk])
                    mx.eval(loss, g)
                    loss_total += loss.item()
                    pieces.append(g)
                gs.append(mx.concatenate(pieces, axis=1))
            self._free("head")
            del hs

            # Backward through the LoRA blocks, from the top.
            grads: dict[str, Any] = {}
            for i in range(L - 1, k - 1, -1):
                self._acquire(i)
                self._request(i - 1 if i - 1 >= k else None)
                layer = tm.layers[i]
                params = layer.trainable_parameters()

                def block_dot(p: Any, x: Any, g: Any, layer: Any = layer, i: int = i) -> Any:
                    layer.update(p)
                    return (arch.block_call(tm, i, x, masks) * g).sum()

                grad_fn = mx.grad(block_dot, argnums=(0, 1))
                block_grads = None
                new_gs = []
                for m, (x, g) in enumerate(zip(saved.pop(i), gs, strict=True)):
                    # Without dropout, one sequence at a time: the gradient is the same sum, and the
                    # backward pass's temporary buffers are a row's, not the whole micro-batch's. (With
                    # dropout the masks were drawn for the whole batch, so it must be recomputed whole.)
                    rows = [(r, r + 1) for r in range(x.shape[0])] if split_rows else [(0, x.shape[0])]
                    pieces = []
                    for a, b in rows:
                        mx.random.seed(_dropout_seed(step, m, i))
                        gp, gx = grad_fn(params, x[a:b], g[a:b])
                        mx.eval(gp, gx)
                        block_grads = gp if block_grads is None else _tree_add(block_grads, gp)
                        pieces.append(gx)
                    new_gs.append(pieces[0] if len(pieces) == 1 else mx.concatenate(pieces, axis=0))
                layer.update(params)
                flat = {f"model.layers.{i}.{n}": v for n, v in tree_flatten(block_grads)}
                mx.eval(list(flat.values()), new_gs)
                grads.update(flat)
                gs = new_gs
                self._free(i)
        finally:
            self._free_all()
        return StepResult(loss_total, n_total, grads, self.io_blocked_s, self.bytes_read)


@contextlib.contextmanager
def _lora_off(block: Any) -> Iterator[None]:
    """The block's LoRA layers add nothing inside the ``with`` (their scale is 0), as the base model computes."""
    saved = [(m, m.scale) for _, m in block.named_modules() if hasattr(m, "lora_a") and hasattr(m, "scale")]
    try:
        for module, _scale in saved:
            module.scale = 0.0
        yield
    finally:
        for module, scale in saved:
            module.scale = scale


def _tree_add(a: Any, b: Any) -> Any:
    from mlx.utils import tree_map

    return tree_map(lambda x, y: x + y, a, b)
