"""OpenAI request bodies -> validated ``Job``s; every mistake is an ``ApiError`` (a 4xx that says what to fix).

A completion body (``POST /v1/completions``) or a chat body (``POST /v1/chat/completions``) becomes a ``Job``: the
prompts as token ids, ``n`` choices each, the sampler and its frozen config, the seed, ``max_tokens`` (the canvas
the sampler denoises), stop strings and the streaming flags. dlm's own settings come in the extension object
``"dlm": {"sampler": ..., "stream_denoising": ..., <the sampler's options>}``; what is absent takes the model's
defaults. Choice c of a job (prompt c // n, sample c % n) draws from a generator seeded ``seed + c``.

Fields of the OpenAI schema that dlm cannot honour are accepted only at their neutral value (``logprobs: null``,
``presence_penalty: 0``, ...); any other field is an error that lists the fields this server takes.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass

from dlm.data.chat import DEFAULT_CHAT_TEMPLATE, ChatTemplateError  # noqa: F401 (DEFAULT_CHAT_TEMPLATE: re-exported)
from dlm.data.chat import render_chat as render_conversation
from dlm.errors import DlmError
from dlm.samplers import SAMPLERS, num_blocks_to_generate, user_fields

COMMON = ("model", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "stream", "stream_options", "user", "dlm")
NEUTRAL = {  # OpenAI fields dlm does not implement, accepted at their neutral values only
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "suffix": (None,),  # infilling comes with POST /v1/dlm/infill
    "response_format": (None, {"type": "text"}),
}
FIELDS = {
    "completion": COMMON + ("prompt", "echo", "best_of"),
    "chat": COMMON + ("messages", "max_completion_tokens"),
}
MAX_SEED = 2**63  # seeds are in [0, 2^63) so that seed + choice fits a torch.Generator


class ApiError(Exception):
    """A request the client can fix (or a server state it can wait out): HTTP ``status`` and OpenAI's error JSON."""

    def __init__(self, message: str, *, status=400, type="invalid_request_error", param=None, code=None, headers=None):
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: ``max_tokens`` at most, ``rows`` choices (n x prompts) at most."""

    max_tokens: int = 1024
    rows: int = 16
    default_max_tokens: int = 64  # when the body has none (fewer when the context has less room)


@dataclass
class Job:
    """A validated request: ``prompts`` (token ids, before the model's start token) x ``n`` choices."""

    kind: str  # completion or chat
    prompts: list[list[int]]
    prompt_texts: list[str]
    n: int
    seed: int
    max_tokens: int
    sampler: str
    config: object  # the sampler's frozen config
    options: dict  # the sampler options given (what the Engine is called with)
    stop: tuple[str, ...] = ()
    stream: bool = False
    denoising: bool = False  # dlm.stream_denoising
    include_usage: bool = False  # stream_options.include_usage
    echo: bool = False

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n

    def settings(self) -> dict:
        """What the response reports under ``dlm``: the seed, the sampler and every option it ran with."""
        options = {f: getattr(self.config, f) for f in user_fields(type(self.config))}
        return {"seed": self.seed, "sampler": self.sampler, "max_tokens": self.max_tokens, **options}

    def batch_key(self, padded_batches: bool) -> tuple:
        """Jobs with equal keys run in one batched call: same sampler, config and canvas length (and prompt
        length for samplers that cannot batch left-padded rows)."""
        key = (self.sampler, self.config, self.max_tokens)
        return key if padded_batches else key + (len(self.prompts[0]),)


def parse(kind: str, body, engine, model_id: str, limits: Limits) -> Job:
    """An OpenAI body (``kind``: completion or chat) -> a ``Job``, or an ``ApiError``."""
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    for key in body:
        if key not in FIELDS[kind] and key not in NEUTRAL:
            takes = ", ".join(FIELDS[kind])
            raise ApiError(f"unknown field {key!r}; this endpoint takes: {takes}", param=key)
    for key, neutral in NEUTRAL.items():
        if body.get(key) not in neutral:
            raise ApiError(
                f"{key} is not supported by dlm serve; leave it out (or set it to {neutral[-1]!r})", param=key
            )
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError(f"model is required: the id of the served model, {model_id!r}", param="model")
    if model != model_id:
        raise ApiError(
            f"model {model!r} is not served here; use {model_id!r} (GET /v1/models)",
            status=404,
            param="model",
            code="model_not_found",
        )
    tok = engine.tokenizer
    if kind == "chat":
        texts = [render_chat(tok, messages(body.get("messages")))]
        prompts, param = [tok.encode(texts[0])], "messages"
    else:
        prompts, texts, param = completion_prompts(body.get("prompt"), tok), None, "prompt"
        texts = [tok.decode(p, skip_special_tokens=False) for p in prompts]
    n = integer(body, "n", 1, 1, limits.rows)
    if kind == "completion" and body.get("best_of") not in (None, n):
        raise ApiError("best_of is not supported by dlm serve; leave it out or set it to n", param="best_of")
    if n * len(prompts) > limits.rows:
        raise ApiError(f"n x prompts = {n * len(prompts)} choices; this server takes at most {limits.rows}", param="n")
    max_tokens, tokens_param = requested_max_tokens(body, kind)
    bos = 1 if engine.config.model.logits_shift else 0
    context, longest = engine.config.model.max_seq_len, max(len(p) for p in prompts) + bos
    if max_tokens is None:
        max_tokens = min(limits.default_max_tokens, context - longest)
    if max_tokens > limits.max_tokens:
        raise ApiError(f"{tokens_param} must be at most {limits.max_tokens} on this server", param=tokens_param)
    if longest + max(max_tokens, 1) > context:
        raise ApiError(
            f"the prompt ({longest} tokens) + {tokens_param} ({max_tokens}) exceeds the model's context of "
            f"{context} tokens; shorten the prompt or lower {tokens_param}",
            param=param,
            code="context_length_exceeded",
        )
    ext = body.get("dlm") if body.get("dlm") is not None else {}
    if not isinstance(ext, dict):
        raise ApiError(
            "dlm must be an object of dlm settings, e.g. {'sampler': 'confidence', 'steps': 64}", param="dlm"
        )
    sampler, options = sampler_options(body, ext, engine)
    config = checked_config(engine.sampler_config, sampler, options)
    check_layout(sampler, config, longest, max_tokens)
    stream = boolean(body, "stream", False)
    denoising = boolean(ext, "stream_denoising", False, prefix="dlm.")
    if denoising and not stream:
        raise ApiError("dlm.stream_denoising needs stream: true", param="dlm.stream_denoising")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict) or set(stream_options) - {"include_usage"}:
        raise ApiError("stream_options takes only include_usage (true or false)", param="stream_options")
    if stream_options and not stream:
        raise ApiError("stream_options needs stream: true", param="stream_options")
    seed = body.get("seed")
    if seed is None:
        seed = secrets.randbelow(2**31)
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise ApiError(f"seed must be an integer in [0, 2^63), got {seed!r}", param="seed")
    return Job(
        kind,
        prompts,
        texts,
        n,
        seed,
        max_tokens,
        sampler,
        config,
        options,
        stop=stop_strings(body.get("stop")),
        stream=stream,
        denoising=denoising,
        include_usage=boolean(stream_options, "include_usage", False, prefix="stream_options."),
        echo=kind == "completion" and boolean(body, "echo", False),
    )


def requested_max_tokens(body: dict, kind: str) -> tuple[int | None, str]:
    name = "max_completion_tokens" if kind == "chat" and body.get("max_completion_tokens") is not None else "max_tokens"
    if body.get(name) is None:
        return None, name
    return integer(body, name, None, 1, None), name


def checked_config(configure, sampler: str, options: dict):
    """``configure(sampler, **options)`` (an Engine's ``sampler_config`` or ``infill_sampler_config``) -> the
    sampler's config; an unknown or mistyped setting is a 400 naming the ``dlm.`` field."""
    try:
        return configure(sampler, **options)[1]
    except DlmError as e:
        raise ApiError(str(e).replace("--", "dlm."), param="dlm") from None
    except (TypeError, ValueError) as e:
        raise ApiError(f"a dlm setting has the wrong type: {e}", param="dlm") from None


def sampler_options(body: dict, ext: dict, engine) -> tuple[str, dict]:
    """(sampler name, its options) from ``dlm`` and the top-level temperature / top_p."""
    sampler = ext.get("sampler", engine.samplers[0])
    if sampler not in engine.samplers:
        raise ApiError(
            f"dlm.sampler {sampler!r} cannot run this model (objective {engine.config.train.objective}); "
            f"use one of: {', '.join(engine.samplers)}",
            param="dlm.sampler",
        )
    if engine.tokenizer.mask_id is None and sampler != "ar":
        raise ApiError(f"the {sampler} sampler needs a mask token; this model has none", param="dlm.sampler")
    entry = SAMPLERS.get(sampler)
    fields = {f.name: f for f in dataclasses.fields(entry.config) if f.name in user_fields(entry.config)}
    options = {}
    for key, value in ext.items():
        if key in ("sampler", "stream_denoising"):
            continue
        if key not in fields:
            takes = ", ".join(["sampler", "stream_denoising", *fields])
            raise ApiError(
                f"dlm.{key} is not a setting of the {sampler} sampler; it takes: {takes}", param=f"dlm.{key}"
            )
        options[key] = typed(value, fields[key], f"dlm.{key}")
    for key in ("temperature", "top_p"):
        if body.get(key) is None:
            continue
        if key not in fields:
            raise ApiError(f"{key} does not apply to the {sampler} sampler; leave it out", param=key)
        if key in ext:
            raise ApiError(f"{key} is given twice (top level and dlm.{key}); give it once", param=key)
        options[key] = typed(body[key], fields[key], key)
    return sampler, options


def typed(value, field: dataclasses.Field, param: str):
    """``value`` checked against the type of a sampler config field (int, float, str, bool; or None if allowed)."""
    kind = str(field.type)
    if value is None and "None" in kind:
        return None
    if "bool" in kind and isinstance(value, bool):
        return value
    if "int" in kind and isinstance(value, int) and not isinstance(value, bool):
        return value
    if "float" in kind and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if "str" in kind and isinstance(value, str):
        return value
    raise ApiError(f"{param} must be of type {kind.replace(' | None', ' or null')}, got {value!r}", param=param)


def check_layout(sampler: str, config, prompt_len: int, max_tokens: int) -> None:
    """The block layouts the samplers check only when they run: caught here, so that a bad request never fails
    the batch it would have joined."""
    steps = getattr(config, "steps", None) or max_tokens
    if sampler == "confidence":
        block = config.block_length or max_tokens
        if max_tokens % block:
            raise ApiError(f"max_tokens ({max_tokens}) must be a multiple of dlm.block_length ({block})", param="dlm")
        if steps % (max_tokens // block):
            raise ApiError(
                f"dlm.steps ({steps}) must be a multiple of the number of blocks, max_tokens / dlm.block_length = "
                f"{max_tokens // block}",
                param="dlm.steps",
            )
    if sampler == "block":
        blocks = num_blocks_to_generate(prompt_len, max_tokens, config.block_length or config.block_size)
        if steps < blocks:
            raise ApiError(f"dlm.steps ({steps}) must be at least the number of blocks ({blocks})", param="dlm.steps")


def completion_prompts(prompt, tok) -> list[list[int]]:
    """OpenAI's prompt forms: a string, a list of strings, a list of token ids, a list of lists of token ids."""
    if isinstance(prompt, str):
        return [tok.encode(prompt)]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return [tok.encode(p) for p in prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt):
        prompt = [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        for ids in prompt:
            if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < tok.vocab_size for i in ids):
                raise ApiError(f"token ids in prompt must be integers in [0, {tok.vocab_size})", param="prompt")
        return [list(p) for p in prompt]
    raise ApiError("prompt must be a string, a list of strings, or a list of token ids", param="prompt")


def messages(value) -> list[dict]:
    """Chat messages as {role, content} with text content (OpenAI's text parts joined)."""
    if not isinstance(value, list) or not value:
        raise ApiError("messages must be a non-empty list of {role, content} objects", param="messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(f"messages[{i}] must be an object with a role and a content", param="messages")
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ApiError(f"messages[{i}].content: only text parts are supported", param="messages")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise ApiError(f"messages[{i}].content must be a string (or a list of text parts)", param="messages")
        out.append({"role": m["role"], "content": content})
    return out


def render_chat(tok, messages: list[dict]) -> str:
    """The prompt text of a conversation, by the tokenizer's chat template (``DEFAULT_CHAT_TEMPLATE`` when it has
    none), with the assistant's turn opened (``dlm.data.chat.render_chat``); a template error is a 400."""
    try:
        return render_conversation(tok, messages)
    except ChatTemplateError as e:
        raise ApiError(str(e), param="messages") from None


def stop_strings(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError("stop must be a non-empty string or a list of at most 4 of them", param="stop")
    return tuple(stop)


def integer(body: dict, name: str, default, lo: int, hi: int | None) -> int:
    value = body.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        limit = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
        raise ApiError(f"{name} must be {limit}, got {value!r}", param=name)
    return value


def boolean(body: dict, name: str, default: bool, prefix: str = "") -> bool:
    value = body.get(name, default)
    value = default if value is None else value
    if not isinstance(value, bool):
        raise ApiError(f"{prefix}{name} must be true or false, got {value!r}", param=prefix + name)
    return value
