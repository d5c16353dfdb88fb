"""Continuous batching: the rows of concurrent requests decoded together, one forward per step.

A `BatchDecoder` owns a background thread and, for a `MiniLLM` (or a module wrapping one: a
`ModelConfig` as `config` and a `new_cache`), a `SlotKVCache` of `max_batch` rows. A submitted
row waits until a slot is free, gets its own prefill (the prompt's forward written straight into
its slot), and from then on shares each step's forward with every other live row: its last token
goes in, one position is added to its cache, the logits of every row come out together. Rows
join and leave between steps: a row leaves on a stop id, at its token budget, when its
`cancel` event is set or when its reader calls `Row.leave` (checked before every step, so a
cancelled row holds its slot for at most the step in flight). A leaving row's slot is refilled
by the last live row (one cache copy), so live rows are always 0..n-1 and a step reads views.

Each row samples with its own `Sampler` (`inference.sample_rows`): its own params and seeded
generator, so a seeded row draws the same tokens whatever else is in the batch, and a greedy row
gives the tokens of a single-sequence `generate` (in float32; other dtypes round differently at
different batch sizes).

Readers get events on the queue they passed, tagged with their `tag`: ("token", id, info) for
every token (info: None, or the log-probabilities asked for with `logprobs`), then ("end",
reason) with reason "stop" (a stop id, the last token), "length" (budget) or "cancelled"; or
("error", exception) when the forward failed (every live row gets it).

A model without a KV cache (the tests' hand-built modules) runs each row's whole context
every step instead, with the same scheduling and events.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from minillm_core.inference import Sampler, SamplingParams, device_of, logits_of, sample_rows
from minillm_core.model import ModelConfig, SlotKVCache

MAX_LOGPROBS = 20  # OpenAI's top_logprobs bound


@dataclass(eq=False)
class Row:
    """One sequence being decoded: what it was asked, where its events go, how far it is."""

    prompt: list[int]
    budget: int
    sampler: Sampler
    out: queue.SimpleQueue[tuple[Any, ...]]
    tag: Any
    logprobs: int | None = None
    cancel: threading.Event | None = None
    n: int = 0
    last: int = 0
    context: list[int] = field(default_factory=list)  # cache-less models only
    left: bool = False

    def leave(self) -> None:
        """Ask to be dropped before the next step (the reader stopped listening)."""
        self.left = True

    @property
    def gone(self) -> bool:
        return self.left or (self.cancel is not None and self.cancel.is_set())

    def put(self, *event: Any) -> None:
        self.out.put((self.tag, *event))


class BatchDecoder:
    """Decodes the rows of every submitted request together; see the module docstring."""

    def __init__(self, model: torch.nn.Module, max_batch: int, max_len: int):
        if max_batch < 1:
            raise ValueError(f"max_batch {max_batch} must be >= 1")
        self.model, self.max_batch, self.max_len = model, max_batch, max_len
        self.device = device_of(model)
        cfg = getattr(model, "config", None)
        self.config = cfg if isinstance(cfg, ModelConfig) else None
        self.cached = self.config is not None and callable(getattr(model, "new_cache", None))
        self._cache: SlotKVCache | None = None
        self.rows: list[Row] = []  # live, in slot order
        self._pending: list[Row] = []
        self._joining: list[Row] = []  # taken from pending, prefill not yet done
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def stats(self) -> dict[str, int]:
        with self._lock:
            running = len(self.rows) + len(self._joining)
            return {"running": running, "waiting": len(self._pending)}

    def submit(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        params: SamplingParams,
        out: queue.SimpleQueue[tuple[Any, ...]],
        tag: Any = None,
        *,
        logprobs: int | None = None,
        cancel: threading.Event | None = None,
    ) -> Row:
        """Queue one row; its events go to `out`. The budget is cut to what the context leaves."""
        if logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
            raise ValueError(f"logprobs {logprobs} must be in [0, {MAX_LOGPROBS}]")
        prompt = [int(t) for t in prompt]
        budget = min(max_new_tokens, self.max_len - len(prompt))
        row = Row(prompt, budget, Sampler(params, self.device), out, tag, logprobs, cancel)
        if budget <= 0 or not prompt:
            row.put("end", "length")
            return row
        with self._lock:
            self._pending.append(row)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="batch-decoder", daemon=True)
                self._thread.start()
        return row

    # ------------------------------------------------------------------------ the decode loop

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while self._cycle():
                    pass
        except BaseException as exc:  # a fault of the loop itself: no reader may wait forever
            with self._lock:
                stranded = self.rows + self._joining + self._pending
                self.rows, self._joining, self._pending = [], [], []
                if self._cache is not None:
                    self._cache.rows = 0
                self._thread = None
            for row in stranded:
                row.put("error", exc)
            raise

    def _cycle(self) -> bool:
        """Between steps: drop cancelled rows, prefill joining ones, then one step for all.
        False when there is nothing left to do (the thread then ends)."""
        with self._lock:
            for row in [r for r in self.rows if r.gone]:
                self._drop(row, "cancelled")
            cancelled = [r for r in self._pending if r.gone]
            self._pending = [r for r in self._pending if not r.gone]
            joining = self._pending[: self.max_batch - len(self.rows)]
            del self._pending[: len(joining)]
            self._joining = list(joining)
            idle = not joining and not self.rows
            if idle:
                self._thread = None  # the next submit starts a new loop
        for row in cancelled:
            row.put("end", "cancelled")
        if idle:
            return False
        for row in joining:
            self._guarded([row], self._prefill, row)
            with self._lock:
                if row in self._joining:  # its prefill failed
                    self._joining.remove(row)
        if self.rows:
            self._guarded(list(self.rows), self._step)
        return True

    def _guarded(self, rows: list[Row], fn: Any, *args: Any) -> None:
        """Run fn; if it fails, every row it was for gets the error and leaves."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - handed to each reader, who re-raises it
            with self._lock:
                for row in rows:
                    if row in self.rows:
                        self._drop(row, None)
            for row in rows:
                row.put("error", exc)

    def _prefill(self, row: Row) -> None:
        prompt = torch.tensor([row.prompt], dtype=torch.long, device=self.device)
        if self.cached and self.config is not None:
            if self._cache is None:
                w = next(self.model.parameters())
                self._cache = SlotKVCache(
                    self.config, self.max_batch, self.max_len, w.device, w.dtype
                )
            slot = len(self.rows)
            logits = logits_of(self.model(prompt, self._cache.row_view(slot)))[:, -1].float()
            self._cache.lengths[slot] = len(row.prompt)
        else:
            logits = logits_of(self.model(prompt))[:, -1].float()
            row.context = list(row.prompt)
        row.sampler.observe_prompt(prompt, logits.shape[-1])
        with self._lock:
            self.rows.append(row)
            self._joining.remove(row)
            if self._cache is not None:
                self._cache.rows = len(self.rows)
        self._emit([row], logits)

    def _step(self) -> None:
        rows = list(self.rows)
        if self._cache is not None:
            ids = torch.tensor([[r.last] for r in rows], dtype=torch.long, device=self.device)
            logits = logits_of(self.model(ids, self._cache))[:, -1].float()
        else:
            contexts = [torch.tensor([r.context], device=self.device) for r in rows]
            logits = torch.cat([logits_of(self.model(c))[:, -1].float() for c in contexts])
        self._emit(rows, logits)

    def _emit(self, rows: list[Row], logits: torch.Tensor) -> None:
        """Sample each row's next token from logits [len(rows), V], send it, retire ended rows."""
        tokens = sample_rows([r.sampler for r in rows], logits)
        ended: list[tuple[Row, str]] = []
        for i, (row, tok) in enumerate(zip(rows, tokens, strict=True)):
            row.n, row.last = row.n + 1, tok
            if not self.cached:
                row.context.append(tok)
            if tok in row.sampler.params.stop_ids:
                row.put("token", tok, None)
                ended.append((row, "stop"))
                continue
            row.put("token", tok, _logprobs(logits[i], tok, row.logprobs))
            if row.n >= row.budget:
                ended.append((row, "length"))
        if ended:
            with self._lock:
                for row, reason in ended:
                    self._drop(row, reason)

    def _drop(self, row: Row, reason: str | None) -> None:
        """Remove a live row (lock held): the last live row moves into its slot."""
        slot = self.rows.index(row)
        last = len(self.rows) - 1
        if slot != last and self._cache is not None:
            self._cache.move(last, slot)
        self.rows[slot] = self.rows[last]
        self.rows.pop()
        if self._cache is not None:
            self._cache.rows = len(self.rows)
        if reason is not None:
            row.put("end", reason)


def _logprobs(logits: torch.Tensor, tok: int, k: int | None) -> dict[str, Any] | None:
    """The chosen token's log-probability and the k most likely, from the raw logits [V]
    (before penalties and temperature, as OpenAI reports them)."""
    if k is None:
        return None
    lp = torch.log_softmax(logits.float(), dim=-1)
    top = torch.topk(lp, k) if k else None
    pairs = list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top else []
    return {"id": tok, "logprob": float(lp[tok]), "top": pairs}
