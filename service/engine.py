"""The inference engine: a bounded queue, micro-batching, one model call at a time in a thread.

Requests wait in a bounded asyncio queue. Admission bounds the queued *work*, not just the
number of requests: a request is admitted only if the decoding already queued plus its own
(``max_length x (draws + a step's fixed part)`` units, the candidates drawn at first, at the
seconds per unit measured on recent model calls: :class:`DecodeCost`) fits in half its time
limit, so that what is admitted can be answered in time; otherwise (or when the queue is full)
:class:`EngineOverloaded`, the app's 503, with a Retry-After of the queued seconds.

A single batcher task takes the oldest request and, when batching is on, whatever else is
queued, up to ``max_batch_size`` samples in all; while that is fewer requests than the previous
batch had, it also waits up to ``max_wait_ms`` for more (see ``_collect``). A lone client is
served at once (a wait would only add latency, and idle cores lose their cached weights to
other processes: measured, a 5 ms pause made the next 50 ms CPU decode ~7 ms slower).

The requests of a batch are grouped by their decoding parameters (``num_samples``,
``max_length``, ``decoding``, ``temperature``, ``options``, ``rerank``: one
``model.reranking.distinct_responses`` call takes one of each); a group's contexts go through
``context_batch`` together, are encoded once and all their draws are decoded in one batched
loop, and so are the further draws for the contexts whose responses repeat. Model calls run in
a single worker thread (the event loop stays free to accept and queue requests), one at a time.

Seeds: a request with a ``seed`` is decoded in a model call of its own, with a fresh
``torch.Generator`` seeded with it drawing both its z noise and (for ``decoding="sample"``) its
words. Its responses therefore never depend on what else was queued, on whether batching is on,
or on floating-point differences between batch shapes: the same seed gives the same responses
(on the same device and checkpoint). (``sample_responses(noise=...)`` could fix a seeded
request's z inside a shared batch, but not its sampled words, which come from one generator per
call, nor the batch-shape float differences that can flip a greedy argmax.) Unseeded requests
share one engine generator, seeded at random at start-up.

Every request has a deadline (``timeout_s``, queueing included; -> :class:`EngineTimeout`, the
app's 504). A request that times out or whose client went away before its batch started is
dropped from the batch instead of being decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model.batch import context_batch, next_speaker
from model.cvae import DialogCVAE, decode_dtype, num_parameters, resolve_device
from model.decoding import PLAIN, DecodingOptions
from model.reranking import NO_RERANKING, RerankOptions, distinct_responses
from model.text import detokenize
from model.timing import Phases
from model.vocab import Vocabulary
from service.config import ServiceConfig, default_torch_threads

log = logging.getLogger("service.engine")

Loader = Callable[[], tuple[DialogCVAE, Vocabulary]]


class EngineError(RuntimeError):
    """A request could not be answered (the app maps each subclass to a status)."""


class EngineNotReady(EngineError):
    """The model is still loading, failed to load, or the engine is shutting down."""

    retry_after = 1


class EngineOverloaded(EngineError):
    """Too much work (or too many requests) is queued to answer this one in time."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class EngineTimeout(EngineError):
    """The request was not answered within ``timeout_s``."""


@dataclass(frozen=True)
class GenerationRequest:
    turns: Sequence[tuple[str, Sequence[str]]]  # (speaker, normalized tokens), oldest first
    num_samples: int = 5
    max_length: int = 40
    decoding: str = "greedy"
    temperature: float = 1.0
    seed: int | None = None
    responder: str | None = None
    options: DecodingOptions = PLAIN
    rerank: RerankOptions = NO_RERANKING

    @property
    def draws(self) -> int:
        """Latent samples drawn at first: the candidates (further ones only for repeats)."""
        return self.rerank.first_draws(self.num_samples)

    def batch_key(self) -> tuple:
        """Requests with equal keys can share one ``distinct_responses`` call."""
        temperature = self.temperature if self.decoding == "sample" else None
        return (
            self.num_samples,
            self.max_length,
            self.decoding,
            temperature,
            self.options,
            self.rerank,
        )


@dataclass(frozen=True)
class Generated:
    text: str  # for display: the tokens detokenized
    tokens: list[str]
    log_prob: float
    finished: bool  # ended with </s>, not cut at max_length
    fit: float | None = None  # the reranking method's score (higher fits better)


@dataclass(frozen=True)
class GenerationResult:
    responses: list[Generated]  # pairwise distinct, best first; fewer if the draws ran out
    responder: str
    drawn: int = 0  # latent samples drawn
    distinct: int = 0  # distinct responses among them


@dataclass
class _Pending:
    request: GenerationRequest
    responder: str
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    units: int = 0  # its cost (DecodeCost.units) in the engine's backlog; 0 once out of it
    decoding: bool = False  # its model call has started
    ahead_s: float = 0.0  # the estimated model time queued before it when it was admitted
    started: float | None = None  # when its model call started (perf_counter)


class DecodeCost:
    """Estimated model seconds of a call that decodes ``rows`` latent draws (the draws of its
    requests, ``GenerationRequest.draws``) for up to ``steps`` words (their ``max_length``):
    ``seconds_per_unit * units(rows, steps)``, with ``units = steps * (rows + step_overhead)``.

    ``step_overhead`` is a decoding step's fixed part, in rows (the step loop and its kernel
    calls cost as much for one row as for several), measured at warm-up. Without it, narrow
    requests were priced far too low: on 1 thread of an AMD EPYC a step costs about seven rows'
    worth before its first row, so a request for 1 response (2 candidate rows) costs 4-5 times
    its rows x steps, and a mix of small requests was admitted into 504s. ``seconds_per_unit``
    follows the load (batch sizes, early stops, other processes on the machine): a
    unit-weighted average over the calls that forgets (each call weighs FORGET times less than
    the next), set by the large calls a backlog is made of. (The latest call's rate, when
    higher, was tried as a quicker reaction to a machine that just got busier; one slow tiny
    call then priced a backlog of small requests at 15 s and refused them. What the estimate
    misses is shed when its model call starts: ``_shed_late``.)
    """

    FORGET = 0.9

    def __init__(self, seconds_per_unit: float, step_overhead: float = 0.0):
        self.step_overhead = step_overhead
        self._seconds, self._units = seconds_per_unit, 1.0

    @classmethod
    def from_timings(
        cls, narrow: tuple[int, int, float], wide: tuple[int, int, float]
    ) -> DecodeCost:
        """From the (rows, steps, seconds) of two calls, each decoding all its steps: the cost
        of a row-step (the slope of a step's time over its rows) and a step's fixed part."""
        (r1, s1, t1), (r2, s2, t2) = narrow, wide
        per_step_1, per_step_2 = t1 / s1, t2 / s2
        if not per_step_2 > per_step_1:  # too noisy to tell the fixed part apart
            return cls(per_step_2 / r2)
        per_row_step = (per_step_2 - per_step_1) / (r2 - r1)
        return cls(per_row_step, step_overhead=max(0.0, per_step_1 / per_row_step - r1))

    def units(self, rows: int, steps: int) -> int:
        """What a call (or a request, counted as if alone) of ``rows`` x ``steps`` costs, in
        whole units: the engine's backlog adds and subtracts them, and must come back to 0."""
        return round(steps * (rows + self.step_overhead))

    def observe(self, seconds: float, rows: int, steps: int) -> None:
        self._seconds = self._seconds * self.FORGET + seconds
        self._units = self._units * self.FORGET + self.units(rows, steps)

    @property
    def seconds_per_unit(self) -> float:
        return self._seconds / self._units


# Admitted work must fit in this share of timeout_s: the margin for the cost estimate's errors.
ADMIT_SHARE = 0.5
# Softmax temperature of the warm-up's timed decodes: near-uniform over ~10k words, so the end
# of a reply is drawn about once in 10k steps and every row runs to max_length.
FULL_LENGTH_TEMPERATURE = 1000.0


@dataclass
class EngineStats:
    """Counters since the engine started (service/metrics.py publishes them)."""

    admitted: int = 0  # into the queue
    requests: int = 0  # answered
    rejected: int = 0  # overloaded: queue full, or too much decoding queued (the app's 503)
    refused_draining: int = 0  # refused: the service is shutting down (503)
    timeouts: int = 0
    abandoned_queued: int = 0  # the client left while it was queued: no model call for it
    abandoned_decoding: int = 0  # the client left while it was being decoded
    stopped_calls: int = 0  # model calls stopped early: every client of theirs had left
    shed: int = 0  # refused (503) when its model call was to start: it could not end in time
    batches: int = 0  # model calls
    batched_contexts: int = 0
    largest_batch: int = 0  # contexts in one model call
    model_seconds: float = 0.0
    tokens: int = 0  # of the responses decoded (each sample's tokens, </s> not counted)
    # contexts per model call -> how many calls had that many (the batch-size histogram)
    batch_sizes: Counter[int] = field(default_factory=Counter)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "batch_sizes"}
        d["mean_batch"] = self.batched_contexts / self.batches if self.batches else 0.0
        return d


class InferenceEngine:
    def __init__(
        self,
        loader: Loader,
        config: ServiceConfig,
        *,
        device: str | None = None,
        metadata: dict | None = None,
    ):
        self.config = config
        self.device = torch.device(device) if device else resolve_device(config.device)
        self.checkpoint = config.checkpoint
        self.metadata = metadata or {}
        self.state = (
            "stopped"  # -> loading -> ready | failed; drain() -> draining; stop() -> stopped
        )
        self.error: str | None = None  # why the model failed to load
        self.load_seconds: float | None = None  # loading and warming up the model
        self.load_phases = Phases()  # where load_seconds went (model/timing.py)
        self.on_load_failure: Callable[[], None] | None = None  # called when it has
        self.on_ready: Callable[[], None] | None = None  # called once the model is ready
        self.stats = EngineStats()
        self.torch_threads = config.torch_threads or default_torch_threads()
        self.decode_dtype = decode_dtype(config.decode_dtype, self.device)
        self.model: DialogCVAE | None = None
        self.vocab: Vocabulary | None = None
        self._loader = loader
        self._queue: asyncio.Queue[_Pending] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task] = []
        self._batch: list[_Pending] = []  # taken from the queue, not answered yet
        self._carry: _Pending | None = None
        self._last_batch = 0  # requests in the previous batch
        self._generator: torch.Generator | None = None
        self.cost = DecodeCost(0.0)  # measured at warm-up, then on every model call
        self._backlog_units = 0  # of the requests admitted and not yet decoded or dropped
        self._unanswered = 0  # requests admitted whose generate() has not returned

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, config: ServiceConfig) -> InferenceEngine:
        """Load ``config.checkpoint`` onto ``config.device`` when the engine starts."""
        from model.checkpoint import load_config, load_pretrained

        if config.checkpoint is None:
            raise ValueError("config.checkpoint is not set")
        directory, device = Path(config.checkpoint), resolve_device(config.device)
        metadata = {}
        with contextlib.suppress(ValueError):  # a bad config.json is reported by the load itself
            metadata = load_config(directory)[1]
        engine = cls(
            # (``engine`` is bound by the time the loader runs: when the engine starts)
            lambda: load_pretrained(
                directory, device=device, verify=config.verify, phases=engine.load_phases
            ),
            config,
            metadata=metadata,
        )
        return engine

    @classmethod
    def from_model(
        cls, model: DialogCVAE, vocab: Vocabulary, config: ServiceConfig | None = None
    ) -> InferenceEngine:
        """An engine around an already loaded model (tests, benchmarks, notebooks).

        The engine puts the model in eval mode and sets its decode dtype (``config.decode_dtype``).
        """
        config = config or ServiceConfig()
        device = next(model.parameters()).device
        return cls(lambda: (model, vocab), config, device=str(device))

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the batcher and load the model in the worker thread (``state`` -> ready)."""
        if self._tasks:
            return
        self._queue = asyncio.Queue(self.config.queue_size)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bncvae-engine")
        self.state, self.error = "loading", None
        self._tasks = [
            asyncio.create_task(self._load(), name="engine-load"),
            asyncio.create_task(self._batch_loop(), name="engine-batcher"),
        ]

    async def stop(self) -> None:
        self.state = "stopped"
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        waiting = [*self._batch, *([self._carry] if self._carry else [])]
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        self._backlog_units = 0
        for pending in waiting:
            if not pending.future.done():
                pending.future.set_exception(EngineNotReady("the service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def drain(self) -> None:
        """Refuse new requests (EngineNotReady: the app's 503); those admitted are still decoded.

        For a graceful shutdown (service/server.py, on SIGTERM): once :meth:`wait_idle` returns,
        nothing admitted is left to answer."""
        if self.state in ("ready", "loading"):
            self.state = "draining"

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until every admitted request has been answered (or has timed out); False if
        some are still waiting after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self._unanswered and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return not self._unanswered

    def check_ready(self) -> None:
        """Raise EngineNotReady unless the engine takes requests (counting a drain's refusals)."""
        if self.state == "ready" and self._queue is not None:
            return
        if self.state == "loading":
            raise EngineNotReady("the model is still loading; retry shortly")
        if self.state == "draining":
            self.stats.refused_draining += 1
            raise EngineNotReady("the service is shutting down; retry (on another replica)")
        raise EngineNotReady(f"the model is not available ({self.state}): {self.error}")

    def loaded(self) -> tuple[DialogCVAE, Vocabulary]:
        """The model and vocabulary of an engine that has loaded them (a ready one's)."""
        assert self.model is not None and self.vocab is not None, "no model loaded yet"
        return self.model, self.vocab

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.state == "loading" and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self.state != "ready":
            raise EngineNotReady(self.error or f"engine is {self.state}")

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            model, vocab = await loop.run_in_executor(self._executor, self._load_and_warm_up)
        except Exception as e:  # reported by /ready, /health and on_load_failure
            self.state, self.error = "failed", f"{type(e).__name__}: {e}"
            log.error("loading the model failed: %s", self.error)
            if self.on_load_failure is not None:
                self.on_load_failure()
            return
        self.model, self.vocab = model, vocab
        self.load_seconds = time.perf_counter() - started
        if self.state == "loading":  # not if drain() came first
            self.state = "ready"
        log.info(
            "model ready on %s in %.2fs (%s): %s, %d words, %d parameters",
            self.device,
            self.load_seconds,
            self.load_phases,
            model.config.variant,
            len(vocab),
            num_parameters(model),
        )
        if self.on_ready is not None:
            self.on_ready()

    def _load_and_warm_up(self) -> tuple[DialogCVAE, Vocabulary]:
        # Set in this (the worker) thread, which makes every model call. Loading is element-wise
        # work on a few MB (checks, float16 to float32) that a second thread does not speed up,
        # and that stalls when the other core is busy: measured on 2 cores shared with two
        # training runs, 0.05-0.07 s with 1 thread against 0.64-0.70 s with 2.
        torch.set_num_threads(1)
        phases = self.load_phases = Phases()
        model, vocab = self._loader()
        model.eval().set_decode_dtype(self.decode_dtype)
        # the decode dtype set (and all of the loading, for a loader that does not time it)
        phases.lap("dtype")
        torch.set_num_threads(self.torch_threads)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(secrets.randbits(63))
        # One tiny decode, so the first real request does not pay for lazy initialisation; then
        # a narrow and a wide one timed, for the cost estimate (DecodeCost) that admits requests
        # until the first model call is measured. Those two are sampled at a temperature so high
        # that no row ends early, so that every step is timed: greedy replies to the empty
        # context end after two or three words, and timing them priced a request at a tenth of
        # its cost (a cold server then admitted a flood that it answered with 504s).
        batch = context_batch([[]], vocab).to(self.device)
        model.sample_responses(batch, 1, max_length=2, generator=self._generator)
        phases.lap("warm_up")

        def timed(samples: int, steps: int) -> tuple[int, int, float]:
            # Once each: the faster of two timings priced a 5 x 40 request the same within
            # 0-21% (1 thread) and 2% (2 threads), and the second calls took 2.6 s more where
            # 2 threads shared 2 cores with two training runs (docs/deployment.md).
            started = time.perf_counter()
            model.sample_responses(
                batch,
                samples,
                max_length=steps,
                decoding="sample",
                temperature=FULL_LENGTH_TEMPERATURE,
                generator=self._generator,
            )
            return samples, steps, time.perf_counter() - started

        self.cost = DecodeCost.from_timings(timed(1, 10), timed(8, 20))
        phases.lap("calibrate")
        return model, vocab

    # --- requests ---------------------------------------------------------------------------

    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def backlog_units(self) -> int:
        """The cost (DecodeCost.units) of the requests admitted and not answered yet."""
        return self._backlog_units

    def backlog_seconds(self) -> float:
        """The estimated model time of the requests admitted and not answered yet."""
        return self._backlog_units * self.cost.seconds_per_unit

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Queue ``request`` and wait for its responses.

        Raises EngineNotReady, EngineOverloaded (too much queued) or EngineTimeout.
        """
        self.check_ready()
        assert self._queue is not None
        responder = request.responder or next_speaker(list(request.turns))
        units = self._admit(request)
        self.stats.admitted += 1
        pending = _Pending(
            request,
            responder,
            asyncio.get_running_loop().create_future(),
            units=units,
            ahead_s=self.backlog_seconds(),
        )
        self._queue.put_nowait(pending)
        self._backlog_units += units
        self._unanswered += 1
        try:
            # On timeout, or when our caller is cancelled (its client left: see
            # service.app.CancelOnDisconnectMiddleware), the future is cancelled: the batcher
            # skips it if its model call has not started, and a call all of whose requests are
            # cancelled stops at its next step.
            return await asyncio.wait_for(pending.future, self.config.timeout_s)
        except asyncio.TimeoutError:
            self.stats.timeouts += 1
            self._forget(pending)
            waited = (
                "not started"
                if pending.started is None
                else (f"started after {pending.started - pending.enqueued:.2f} s")
            )
            log.warning(
                "no response within %g s: admitted with %.2f s estimated ahead of it and %.2f s "
                "its own; its model call %s",
                self.config.timeout_s,
                pending.ahead_s,
                units * self.cost.seconds_per_unit,
                waited,
            )
            raise EngineTimeout(
                f"no response within {self.config.timeout_s:g} s (the service is busy)"
            ) from None
        except asyncio.CancelledError:
            if pending.decoding:
                self.stats.abandoned_decoding += 1
            else:
                self.stats.abandoned_queued += 1
            self._forget(pending)
            raise
        finally:
            self._unanswered -= 1

    def _forget(self, pending: _Pending) -> None:
        """Take a request that will not be answered out of the backlog at once (admission then
        sees the room it leaves), not when the batcher reaches it."""
        if not pending.decoding:
            self._backlog_units -= pending.units
            pending.units = 0

    def refusal(self) -> EngineOverloaded | None:
        """What any request would be refused with now (the queue is full, or even the smallest
        request would not fit in the decoding budget), else None: for refusing before a
        request's body is read (service.overload.EarlyRefusalMiddleware)."""
        if self.state != "ready" or self._queue is None:
            return None
        return self._overloaded(self.cost.units(1, 1))

    def _admit(self, request: GenerationRequest) -> int:
        """The request's cost in units, if the queue has room and, with what is queued, it can
        be decoded within ADMIT_SHARE of timeout_s (a lone request always can: nothing better
        will come of refusing it); else raise EngineOverloaded."""
        units = self.cost.units(request.draws, request.max_length)
        refused = self._overloaded(units)
        if refused is not None:
            self.stats.rejected += 1
            raise refused
        return units

    def _overloaded(self, units: int) -> EngineOverloaded | None:
        """The refusal of a request of ``units`` now, with a Retry-After of the queued seconds;
        None if it is admitted."""
        assert self._queue is not None
        backlog = self.backlog_seconds()
        budget = self.config.timeout_s * ADMIT_SHARE
        if self._queue.full():
            why = f"{self.config.queue_size} requests waiting"
        elif self._backlog_units and backlog + units * self.cost.seconds_per_unit > budget:
            why = f"about {backlog:.1f} s of decoding queued"
        else:
            return None
        retry_after = max(1, math.ceil(backlog))
        return EngineOverloaded(f"the service is overloaded ({why}); retry later", retry_after)

    def _keep(self, pending: _Pending) -> bool:
        """False for a request that timed out or was cancelled while queued (its work is then
        out of the backlog)."""
        if pending.future.done():
            self._backlog_units -= pending.units
            pending.units = 0
            return False
        return True

    # --- batching ---------------------------------------------------------------------------

    async def _batch_loop(self) -> None:
        assert self._queue is not None
        while True:
            if self._carry is not None:
                first, self._carry = self._carry, None
            else:
                first = await self._queue.get()
            if not self._keep(first):
                continue
            self._batch = [first]
            if self.config.batching:
                await self._collect()
            for group in _groups(self._batch):
                await self._run_group(group)
            self._last_batch = len(self._batch)
            self._batch = []

    async def _collect(self) -> None:
        """Add to ``self._batch`` what is queued, up to max_batch_size samples in all.

        Then, while the batch has fewer requests than the previous one (the recent concurrency),
        wait up to max_wait_ms for more. So a lone client never waits; neither does a loaded
        engine, whose batch fills from the queue that built up during the previous decode (an
        idle wait there would only lower throughput: measured, at 16 clients a fixed 5 ms wait
        gave 588 req/s against 668 without); and synchronised clients are gathered into one
        batch. A request that does not fit is left in ``self._carry``, first in line next time.
        """
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        items = self._batch
        budget = self.config.max_batch_size - items[0].request.draws
        deadline = loop.time() + self.config.max_wait_ms / 1000
        while budget > 0:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if len(items) >= self._last_batch or remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if not self._keep(item):
                continue
            if item.request.draws > budget:
                self._carry = item
                return
            items.append(item)
            budget -= item.request.draws

    async def _run_group(self, group: list[_Pending]) -> None:
        group = self._shed_late([p for p in group if self._keep(p)])
        if not group:
            return
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        rows, steps = _call_size(group)
        units = sum(p.units for p in group)
        estimate = self.cost.units(rows, steps) * self.cost.seconds_per_unit
        for p in group:
            p.decoding, p.started = True, started
        try:
            results = await loop.run_in_executor(self._executor, self._decode, group)
        except Exception as e:
            log.exception("decoding a batch of %d failed", len(group))
            for p in group:
                if not p.future.done():
                    p.future.set_exception(EngineError(f"decoding failed: {type(e).__name__}"))
            return
        finally:
            self._backlog_units -= units
        elapsed = time.perf_counter() - started
        s = self.stats
        s.batches += 1
        s.batched_contexts += len(group)
        s.largest_batch = max(s.largest_batch, len(group))
        s.batch_sizes[len(group)] += 1
        s.model_seconds += elapsed
        if results is None:  # stopped early: nobody waited for it any more
            s.stopped_calls += 1
            return
        self.cost.observe(elapsed, rows, steps)
        s.tokens += sum(len(g.tokens) for result in results for g in result.responses)
        for p, result in zip(group, results, strict=True):
            if not p.future.done():
                s.requests += 1
                p.future.set_result(result)
        log.debug(
            "decoded %d contexts x %d samples in %.1f ms, estimated %.1f (queue %d)",
            len(group),
            group[0].request.num_samples,
            elapsed * 1e3,
            estimate * 1e3,
            self.queue_depth(),
        )

    def _shed_late(self, group: list[_Pending]) -> list[_Pending]:
        """``group`` less the requests its model call, as estimated now, would answer after their
        time limit: the oldest go first, until the rest fit or one is left (alone, it is answered
        as fast as it can be). Those get EngineOverloaded (503 + Retry-After) at once: the
        machine got slower than the estimate that admitted them, and decoding them would end in
        a 504 and take the time of the requests behind them."""
        kept = sorted(group, key=lambda p: p.enqueued)
        now = time.perf_counter()

        def seconds(items: list[_Pending]) -> float:
            return self.cost.units(*_call_size(items)) * self.cost.seconds_per_unit

        while len(kept) > 1 and kept[0].enqueued + self.config.timeout_s < now + seconds(kept):
            p = kept.pop(0)
            self._backlog_units -= p.units
            p.units = 0
            self.stats.shed += 1
            why = "the service is overloaded (it got slower since this request was queued)"
            retry_after = max(1, math.ceil(self.backlog_seconds()))
            p.future.set_exception(EngineOverloaded(f"{why}; retry later", retry_after))
        return kept

    def _decode(self, group: list[_Pending]) -> list[GenerationResult] | None:
        """Runs in the worker thread: one ``distinct_responses`` call for the whole group (its
        contexts encoded once, their draws and any further draws for repeats batched); None if
        it was stopped because every request of the group was cancelled (its client left)."""

        def nobody_waits() -> bool:
            # Read across threads: a future's state is one attribute, set by the event loop.
            return all(p.future.done() for p in group)

        model, vocab = self.loaded()
        req = group[0].request
        if req.seed is None:
            generator = self._generator
        else:
            assert len(group) == 1, "a seeded request is decoded on its own"
            generator = torch.Generator(device=self.device)
            generator.manual_seed(req.seed)
        with torch.inference_mode():
            batch = context_batch(
                [p.request.turns for p in group],
                vocab,
                responders=[p.responder for p in group],
                max_context=model.config.max_context,
                max_utt_len=model.config.max_utt_len,
            ).to(self.device)
            found = distinct_responses(
                model,
                batch,
                req.num_samples,
                key=lambda ids: detokenize(vocab.decode(ids)),
                rerank=req.rerank,
                max_length=req.max_length,
                decoding=req.decoding,
                temperature=req.temperature,
                generator=generator,
                options=req.options,
                stop=nobody_waits,
            )
            if nobody_waits():
                return None
        results = []
        for p, r in zip(group, found, strict=True):
            responses = []
            for c in r.responses:
                tokens = vocab.decode(c.ids)
                responses.append(
                    Generated(detokenize(tokens), tokens, c.log_prob, c.finished, c.fit)
                )
            results.append(GenerationResult(responses, p.responder, r.drawn, r.distinct))
        return results

    # --- naming -----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return Path(self.checkpoint).name if self.checkpoint else "in-memory"


def _call_size(group: list[_Pending]) -> tuple[int, int]:
    """The rows (latent draws) and steps (words at most) of one model call for ``group``."""
    return sum(p.request.draws for p in group), max(p.request.max_length for p in group)


def _groups(items: list[_Pending]) -> list[list[_Pending]]:
    """Split a batch into model calls: equal decoding parameters together, seeded ones alone."""
    groups: dict[object, list[_Pending]] = {}
    for i, p in enumerate(items):
        key = ("seeded", i) if p.request.seed is not None else p.request.batch_key()
        groups.setdefault(key, []).append(p)
    return list(groups.values())
