"""The batching queue: jobs with compatible settings run in one batched Engine call, one generator per row.

1. ``submit`` queues a job (a full queue is a 503 with Retry-After) and returns its ``Ticket``.
2. The worker thread waits for a job, lets ``window`` seconds pass so that requests arriving together can join,
   and takes the first job with every waiting job of the same ``Job.batch_key`` (same sampler, config and
   max_tokens), up to ``max_batch`` rows, in arrival order.
3. One ``Engine.generate_ids`` call runs them: choice c of a job draws from a generator seeded ``job.seed + c``
   (the Engine's per-row generators; a left-padded row draws only for its own columns), so a request's answer
   does not depend on the rows it shares the batch with.
4. After every denoising step, ``on_step`` sends each streaming row its new committed text (and, with
   ``stream_denoising``, its canvas), drops jobs whose client left or whose time ran out, and ends the batch
   once no row is still wanted (every row stopped, cancelled or timed out).
5. Each ticket then gets one ``done`` event with its choices (or one ``error`` event).

Infill and edit requests (``dlm.serve.verbs.Task``) wait in the same queue and run alone, one Engine call each.

A batch that fails as a whole (a setting only the sampler checks) is run again job by job, so a bad request
fails alone. Samplers that take one generator for the whole batch (``per_row_generators=False``) run row by row.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from dlm.errors import DlmError
from dlm.samplers import SAMPLERS
from dlm.serve.requests import ApiError, Job
from dlm.serve.stream import CanvasView, RowText, committed_prefix
from dlm.serve.verbs import Task

log = logging.getLogger("dlm.serve")


@dataclass(eq=False)
class Ticket:
    """A queued or running job and how to reach its client: ``deliver(event)`` is called from the worker thread
    (it must be thread-safe). ``cancel()`` (the client left) frees the job's rows at the next step."""

    job: Job
    deliver: Callable[[dict], None]
    deadline: float  # time.monotonic() past which the job times out
    timeout: float
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    cancelled: bool = False
    finished: bool = False  # its done or error event was delivered (or it was cancelled)
    sent: bool = False  # it received a text or canvas event (a failed batch cannot re-run it)
    batch_rows: int = 0  # the rows of the batch it ran in

    def cancel(self) -> None:
        self.cancelled = True

    def send(self, event: dict) -> None:
        if event["type"] in ("text", "denoising"):
            self.sent = True
        else:
            self.finished = True
        try:
            self.deliver(event)
        except RuntimeError:  # the client's event loop is gone
            self.cancelled = True

    def fail(self, error: ApiError) -> None:
        self.send({"type": "error", "error": error})


class Batcher:
    """One worker thread that runs the queued jobs of an ``Engine`` in batches (see the module docstring)."""

    def __init__(self, engine, *, max_batch: int = 16, max_queue: int = 64, window: float = 0.01):
        self.engine, self.max_batch, self.max_queue, self.window = engine, max_batch, max_queue, window
        self.pending: list[Ticket] = []
        self.running: list[Ticket] = []
        self.batches = 0  # batched calls made
        self.rows = 0  # rows they ran
        self.nfe = 0  # model calls they made
        self.stopping = False
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="dlm-batcher", daemon=True)

    def start(self) -> "Batcher":
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel what is queued and running (503: shutting down) and wait for the worker to end."""
        with self._cv:
            self.stopping = True
            self._cv.notify_all()
        self._thread.join(timeout)

    def submit(self, job: Job, deliver: Callable[[dict], None], timeout: float) -> Ticket:
        with self._cv:
            if self.stopping:
                raise ApiError("the server is shutting down", status=503, type="server_error", code="shutting_down")
            if len(self.pending) >= self.max_queue:
                raise ApiError(
                    f"the queue is full ({self.max_queue} requests waiting); retry in a few seconds",
                    status=503,
                    type="server_error",
                    code="queue_full",
                    headers={"Retry-After": "1"},
                )
            ticket = Ticket(job, deliver, time.monotonic() + timeout, timeout)
            self.pending.append(ticket)
            self._cv.notify_all()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """The client left: drop the ticket from the queue, or from its batch at the next step."""
        ticket.cancel()
        with self._cv:
            if ticket in self.pending:
                self.pending.remove(ticket)

    # ------------------------------------------------------------------------------------------- the worker

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self.pending and not self.stopping:
                    self._cv.wait()
                if self.stopping:
                    break
            time.sleep(self.window)  # requests arriving together join the batch
            with self._cv:
                group = self._take()
                self.running = list(group)
            try:
                if group:
                    self._run(group)
            except Exception:  # never let the worker die: every ticket of the batch gets an error
                log.exception("a batch failed")
                for t in group:
                    if not t.finished:
                        t.fail(ApiError("internal error while generating", status=500, type="server_error"))
            finally:
                self.running = []
        with self._cv:
            left, self.pending = self.pending, []
        for t in left:
            t.fail(ApiError("the server is shutting down", status=503, type="server_error", code="shutting_down"))

    def _take(self) -> list[Ticket]:
        """The first waiting job and every waiting job with its batch key, up to ``max_batch`` rows."""
        now, group, rows, key, keep = time.monotonic(), [], 0, None, []
        padded = None
        for t in self.pending:
            if t.cancelled:
                continue
            if now > t.deadline:
                t.fail(timeout_error(t.timeout))
                continue
            if isinstance(t.job, Task) or (group and isinstance(group[0].job, Task)):
                (keep if group else group).append(t)  # an infill or edit runs alone
                continue
            if key is None:
                padded = SAMPLERS.get(t.job.sampler).pads
                key = t.job.batch_key(padded)
            if t.job.batch_key(padded) == key and rows + t.job.rows <= self.max_batch:
                group.append(t)
                rows += t.job.rows
            else:
                keep.append(t)
        self.pending = keep
        return group

    def _run(self, group: list[Ticket]) -> None:
        if isinstance(group[0].job, Task):
            self._call_task(group[0])
            return
        rows = [(t, c) for t in group for c in range(t.job.rows)]
        if not SAMPLERS.get(group[0].job.sampler).per_row_generators:
            for row in rows:  # one generator for the whole batch: one call per row keeps rows independent
                self._call([row])
            return
        try:
            self._call(rows)
        except Exception as e:
            if len(group) == 1 or any(t.sent for t in group):
                raise_as_event(group, e)
                return
            for t in group:  # a bad job fails alone
                try:
                    self._call([(t, c) for c in range(t.job.rows)])
                except Exception as err:
                    raise_as_event([t], err)

    def _call(self, rows: list[tuple[Ticket, int]]) -> None:
        """One batched Engine call for ``rows`` (ticket, choice); events go to the tickets as it runs."""
        engine, tok = self.engine, self.engine.tokenizer
        tickets = list(dict.fromkeys(t for t, _ in rows))
        job = tickets[0].job  # every job here has the same sampler, config and max_tokens
        texts = [RowText(tok, t.job.stop) for t, _ in rows]
        ends: list[int | None] = [None] * len(rows)  # the committed stop token of each row
        done = [False] * len(rows)
        view, last = CanvasView(tok), {"step": 0, "nfe": 0}
        for t in tickets:
            t.batch_rows = len(rows)

        def on_step(state):
            start = state.tokens.shape[1] - job.max_tokens  # the generated region
            last.update(step=state.step, nfe=state.nfe)
            now = time.monotonic()
            for t in tickets:
                if not t.finished and not t.cancelled and now > t.deadline:
                    t.fail(timeout_error(t.timeout))
            wanted = False
            for j, (t, c) in enumerate(rows):
                if done[j] or t.finished or t.cancelled:
                    continue
                if t.job.denoising:
                    t.send({"type": "denoising", "index": c, "data": view.event(state, j, start)})
                if t.job.stream or t.job.stop:
                    tokens, committed = state.tokens[j, start:].tolist(), state.committed[j, start:].tolist()
                    prefix, ends[j] = committed_prefix(tokens, committed, tok.stop_ids)
                    delta = texts[j].update(prefix)
                    if delta and t.job.stream:
                        t.send({"type": "text", "index": c, "text": delta})
                    done[j] = ends[j] is not None or texts[j].stopped
                wanted = wanted or not done[j]
            return False if not wanted or self.stopping else None

        prompts = [t.job.prompts[c // t.job.n] for t, c in rows]
        seeds = [t.job.seed + c for t, c in rows]
        results = engine.generate_ids(
            prompts, job.sampler, seeds, on_step, gen_length=job.max_tokens, batch_size=len(rows), **job.options
        )
        self.batches, self.rows, self.nfe = self.batches + 1, self.rows + len(rows), self.nfe + results[0].nfe
        choices: dict[Ticket, list[dict]] = {t: [] for t in tickets}
        for j, ((t, c), result) in enumerate(zip(rows, results)):
            if t.finished or t.cancelled:
                continue
            if self.stopping:
                t.fail(ApiError("the server is shutting down", status=503, type="server_error", code="shutting_down"))
                continue
            delta = texts[j].update(result.tokens, final=True)
            if delta and t.job.stream:
                t.send({"type": "text", "index": c, "text": delta})
            ended = len(result.tokens) < job.max_tokens or ends[j] is not None
            if t.job.denoising:
                stop_id = (ends[j] if ends[j] is not None else tok.eos_id) if ended else None
                t.send({"type": "denoising", "index": c, "data": view.final(result.tokens, stop_id, **last)})
            stopped = texts[j].stopped
            completion_tokens = len(tok.encode(texts[j].sent)) if stopped else len(result.tokens)
            finish = "stop" if stopped or ended else "length"
            choices[t].append(
                {"index": c, "text": texts[j].sent, "finish_reason": finish, "completion_tokens": completion_tokens}
            )
        for t in tickets:
            if not (t.finished or t.cancelled):
                nfe, seconds = results[0].nfe, results[0].seconds
                t.send({"type": "done", "choices": choices[t], "nfe": nfe, "seconds": seconds, "rows": len(rows)})

    def _call_task(self, t: Ticket) -> None:
        """An infill or edit: one Engine call of its own; its done event carries the response's fields."""

        def on_step(state):  # infill only: stop when the client left, the time ran out or the server stops
            return False if t.cancelled or self.stopping or time.monotonic() > t.deadline else None

        t.batch_rows = 1
        try:
            result = t.job.run(on_step)
        except Exception as e:
            raise_as_event([t], e)
            return
        self.batches, self.rows, self.nfe = self.batches + 1, self.rows + 1, self.nfe + result["nfe"]
        if t.finished or t.cancelled:
            return
        if self.stopping:
            t.fail(ApiError("the server is shutting down", status=503, type="server_error", code="shutting_down"))
        elif time.monotonic() > t.deadline:
            t.fail(timeout_error(t.timeout))
        else:
            t.send({"type": "done", "result": result, "nfe": result["nfe"], "seconds": result["seconds"], "rows": 1})

    def health(self) -> dict:
        with self._cv:
            waiting = len(self.pending)
        running = sum(t.job.rows for t in self.running)
        return {"queued": waiting, "running_rows": running, "batches": self.batches, "rows": self.rows, "nfe": self.nfe}


def timeout_error(seconds: float) -> ApiError:
    return ApiError(
        f"the request ran past the server's timeout of {seconds:g} s; lower max_tokens or dlm.steps, or raise "
        "--timeout",
        status=408,
        type="timeout_error",
        code="timeout",
    )


def raise_as_event(tickets: list[Ticket], error: Exception) -> None:
    """A failed call's error as each ticket's error event: a ``DlmError`` is the client's (400), anything else
    the server's (500, logged)."""
    if isinstance(error, DlmError):
        api = ApiError(str(error).replace("--", "dlm."), param="dlm")
    else:
        log.error("generation failed", exc_info=error)
        api = ApiError("internal error while generating", status=500, type="server_error")
    for t in tickets:
        if not t.finished:
            t.fail(api)
