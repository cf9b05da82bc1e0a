"""``dlm serve`` through the stock ``openai`` client: one server per module (a subprocess on a free loopback port,
a random 2-layer model saved as a run, fp64 so that batching is exact), stopped by SIGTERM at the end; and the
batching queue in this process (queue limit, timeout, a client that leaves)."""

from __future__ import annotations

import json
import threading
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serving import dlm_serve, tiny_run  # noqa: E402

KEY = "test-key"
SMALL = {"steps": 8, "block_length": 4}  # 16 tokens in 4 blocks: the committed prefix grows block by block


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("serve") / "run")


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    """The base URL of ``dlm serve`` on the tiny run; SIGTERM at the end must stop it cleanly (exit 0)."""
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    args = ["--name", "tiny", "--dtype", "fp64", "--api-key", KEY, "--batch-window", "0.3", "--max-tokens", "64"]
    with dlm_serve(run_dir, log, *args) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=60)


def post(server, path, body, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, (dict, list)):
        return httpx.post(server + path, json=body, headers=headers, timeout=60, **kw)
    return httpx.post(server + path, content=body, headers=headers, timeout=60, **kw)


def test_models_and_health(server, client):
    assert httpx.get(server + "/health").json()["status"] == "ok"  # no key needed
    [card] = client.models.list().data
    assert card.id == "tiny" and card.model_extra["dlm"]["samplers"] == ["confidence", "ancestral"]
    assert card.model_extra["dlm"]["defaults"]["sampler"] == "confidence"


def test_completion(client):
    kw = dict(model="tiny", prompt="Emma was", max_tokens=16, seed=1, temperature=1.0, extra_body={"dlm": SMALL})
    first = client.completions.create(**kw)
    [choice] = first.choices
    assert isinstance(choice.text, str) and choice.finish_reason in ("length", "stop")
    settings = first.model_extra["dlm"]
    assert settings["seed"] == 1 and settings["sampler"] == "confidence" and settings["steps"] == 8
    assert settings["temperature"] == 1.0 and settings["cache"] == "none"  # the model's default, reported
    assert first.usage.prompt_tokens > 0 and 0 < first.usage.completion_tokens <= 16
    assert client.completions.create(**kw).choices[0].text == choice.text  # same seed, same text
    two = client.completions.create(**{**kw, "n": 2})
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].text == choice.text  # choice c: seed + c


def test_stop_strings_cut_the_text_streamed_or_not(client):
    kw = dict(model="tiny", prompt="Emma was", max_tokens=16, seed=1, temperature=1.0, extra_body={"dlm": SMALL})
    text = client.completions.create(**kw).choices[0].text
    stop = text[6:8]
    cut = client.completions.create(stop=[stop], **kw).choices[0]
    assert cut.text == text[: text.find(stop)] and cut.finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(stop=stop, stream=True, **kw))
    assert streamed == cut.text


def test_a_client_that_leaves_mid_stream_frees_its_rows(server):
    body = {"model": "tiny", "prompt": "Emma", "max_tokens": 64, "seed": 0, "stream": True}
    body["dlm"] = {"steps": 64, "stream_denoising": True}  # a chunk at every step
    headers, before = {"Authorization": f"Bearer {KEY}"}, httpx.get(server + "/health").json()["nfe"]
    with httpx.stream("POST", server + "/v1/completions", json=body, headers=headers, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                break  # the first chunk, then hang up
    for _ in range(200):
        health = httpx.get(server + "/health").json()
        if health["running_rows"] == 0 and health["queued"] == 0:
            break
        time.sleep(0.05)
    assert health["running_rows"] == 0 and health["queued"] == 0
    assert health["nfe"] - before < 16  # of the 64 steps it asked for


def test_chat_completion(client):
    messages = [{"role": "user", "content": "Who is Emma?"}]
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, seed=2)
    assert out.choices[0].message.role == "assistant" and isinstance(out.choices[0].message.content, str)
    assert out.model_extra["dlm"]["seed"] == 2 and out.object == "chat.completion"


@pytest.mark.parametrize("kind", ["completion", "chat"])
def test_streaming_joins_to_the_non_streamed_text(client, kind):
    kw = dict(model="tiny", max_tokens=16, seed=3, temperature=1.0, extra_body={"dlm": SMALL})
    if kind == "completion":
        create, kw["prompt"] = client.completions.create, "It is a truth"
        text_of = lambda c: c.choices[0].text  # noqa: E731
        whole = lambda r: r.choices[0].text  # noqa: E731
    else:
        create, kw["messages"] = client.chat.completions.create, [{"role": "user", "content": "Hello"}]
        text_of = lambda c: c.choices[0].delta.content if c.choices else None  # noqa: E731
        whole = lambda r: r.choices[0].message.content  # noqa: E731
    pieces = [text_of(chunk) for chunk in create(stream=True, **kw)]
    pieces = [p for p in pieces if p]
    assert len(pieces) > 1
    assert "".join(pieces) == whole(create(**kw))


def test_stream_denoising(client):
    kw = dict(model="tiny", prompt="Emma", max_tokens=16, seed=4, temperature=1.0, stream=True)
    events, text = [], []
    for chunk in client.completions.create(extra_body={"dlm": {**SMALL, "stream_denoising": True}}, **kw):
        extra = (chunk.model_extra or {}).get("dlm") or {}
        if "denoising" in extra:
            events.append(extra["denoising"])
        text.append(chunk.choices[0].text)
    assert len(events) >= 4 and events[-1]["final"] and events[-1]["masked"] == 0
    masked = [e["masked"] for e in events]
    assert masked == sorted(masked, reverse=True) and masked[0] > 0
    assert [e["step"] for e in events[:-1]] == list(range(1, len(events)))
    seen = {}
    for e in events:  # a committed token never changes
        for i, cell in enumerate(e["canvas"]):
            assert cell["state"] in ("committed", "provisional", "masked")
            if cell["state"] == "committed":
                assert seen.setdefault(i, cell["id"]) == cell["id"]
    provisional = [c for e in events for c in e["canvas"] if c["state"] == "provisional"]
    assert provisional and all(0.0 <= c["confidence"] <= 1.0 for c in provisional)
    plain = client.completions.create(extra_body={"dlm": SMALL}, **{**kw, "stream": False})
    assert "".join(text) == plain.choices[0].text


BAD = [  # (body, status, the param the error names)
    ({"model": "tiny", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "dlm": {"wings": 2}}, 400, "dlm.wings"),
    ({"model": "tiny", "prompt": "x", "dlm": {"cache": "triple"}}, 400, "dlm"),
    ({"model": "tiny", "prompt": "x", "dlm": {"steps": "many"}}, 400, "dlm.steps"),
    ({"model": "tiny", "prompt": "x", "dlm": {"sampler": "ar"}}, 400, "dlm.sampler"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 10, "dlm": {"block_length": 4}}, 400, "dlm"),
    ({"model": "tiny", "prompt": "x " * 60, "max_tokens": 40}, 400, "prompt"),
    ({"model": "tiny", "prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"model": "tiny", "prompt": "x", "n": 100}, 400, "n"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 65}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "bogus": 1}, 400, "bogus"),
    ({"model": "tiny", "prompt": "x", "logprobs": 3}, 400, "logprobs"),
    ({"model": "tiny", "prompt": "x", "dlm": {"stream_denoising": True}}, 400, "dlm.stream_denoising"),
    ({"model": "tiny", "messages": []}, 400, "messages"),
    ({"model": "gpt-4", "prompt": "x"}, 404, "model"),
    ({"prompt": "x"}, 400, "model"),
    ('{"model": "tiny", "prompt": ', 400, None),
    ("[1, 2]", 400, None),
]


@pytest.mark.parametrize("body,status,param", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_get_an_openai_error(server, body, status, param):
    path = "/v1/chat/completions" if isinstance(body, dict) and "messages" in body else "/v1/completions"
    r = post(server, path, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["param"] == param


def test_limits_unknown_paths_and_the_client_errors(server, client):
    r = post(server, "/v1/completions", json.dumps({"model": "tiny", "prompt": "x" * (2 << 20)}))
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    r = httpx.get(server + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and "/v1/completions" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="tiny", prompt="x " * 60, max_tokens=40)
    r = post(server, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 4})
    assert r.status_code == 200  # bad requests harmed nothing


def test_api_key(server, client):
    body = {"model": "tiny", "prompt": "x", "max_tokens": 4}
    for key in (None, "wrong", KEY + "x"):
        r = post(server, "/v1/completions", body, key=key)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0).models.list()


def test_a_request_gives_the_same_text_alone_and_among_seven_others(server):
    """Batch invariance: one generator per row, seeded from the request; padding only hides columns."""
    body = {"model": "tiny", "prompt": "Emma was", "max_tokens": 16, "seed": 7, "temperature": 1.0, "dlm": SMALL}
    alone = post(server, "/v1/completions", body).json()
    others = [
        {**body, "prompt": p, "seed": s, "n": n}
        for p, s, n in [("It", 1, 1), ("The family of Dashwood", 2, 2), ("", 3, 1), ("a", 4, 1)]
        + [("Sussex", 5, 1), ("handsome, clever", 6, 1), ("x", 8, 1)]
    ]
    replies, barrier = [None] * 8, threading.Barrier(8)

    def send(i, request):
        barrier.wait()
        replies[i] = post(server, "/v1/completions", request).json()

    threads = [threading.Thread(target=send, args=(i, b)) for i, b in enumerate([body, *others])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert replies[0]["dlm"]["batch_rows"] > 1, "the concurrent requests did not share a batch"
    assert replies[0]["choices"][0]["text"] == alone["choices"][0]["text"]
    assert replies[0]["dlm"]["seed"] == 7


# ------------------------------------------------------------------------------- the queue, in this process


@pytest.fixture(scope="module")
def engine(run_dir):
    import dlm

    return dlm.Engine.load(run_dir, dtype="fp64")


def job(engine, **body):
    from dlm.serve.requests import Limits, parse

    return parse("completion", {"model": "tiny", "prompt": "Emma", "max_tokens": 16, **body}, engine, "tiny", Limits())


def test_the_engine_takes_one_seed_per_prompt(engine):
    """What the queue relies on: ``seed=[...]`` seeds prompt i with ``seed[i]``, whatever its batch company."""
    prompts = [engine.tokenizer.encode(p) for p in ("Emma was", "The family of Dashwood")]
    kw = dict(gen_length=8, temperature=1.0, steps=8, block_length=4)
    together = engine.generate_ids(prompts, None, [11, 5], **kw)
    assert [r.tokens for r in together] == [
        engine.generate_ids([p], None, [s], **kw)[0].tokens for p, s in zip(prompts, [11, 5])
    ]
    with pytest.raises(Exception, match="one seed per prompt"):
        engine.generate_ids(prompts, None, [1], **kw)


def test_a_full_queue_answers_503_with_retry_after(engine):
    from dlm.serve.batcher import Batcher
    from dlm.serve.requests import ApiError

    batcher = Batcher(engine, max_queue=1)  # not started: nothing leaves the queue
    batcher.submit(job(engine), lambda e: None, timeout=10)
    with pytest.raises(ApiError) as e:
        batcher.submit(job(engine), lambda e: None, timeout=10)
    assert e.value.status == 503 and e.value.headers["Retry-After"] and e.value.code == "queue_full"


def test_timeout_and_a_client_that_leaves(engine):
    """A job past its deadline gets a 408; a job whose client leaves mid-stream ends its batch at the next step."""
    from dlm.serve.batcher import Batcher

    batcher = Batcher(engine, window=0.0).start()
    try:
        got, finished = [], threading.Event()

        def deliver(event):
            got.append(event)
            if event["type"] in ("done", "error"):
                finished.set()

        batcher.submit(job(engine), deliver, timeout=0.0)
        assert finished.wait(30) and got[-1]["type"] == "error" and got[-1]["error"].status == 408

        got.clear()
        finished.clear()
        ticket = None

        def leave(event):
            got.append(event)
            ticket.cancel()  # the client is gone after its first event

        ticket = batcher.submit(job(engine, stream=True, dlm={"stream_denoising": True}), leave, timeout=30)
        for _ in range(300):
            if batcher.batches == 1:
                break
            time.sleep(0.1)
        assert batcher.batches == 1 and len(got) == 1  # the batch ended at the step after the cancel
    finally:
        batcher.stop()


def test_chat_prompts_use_the_tokenizer_template_or_the_default(engine):
    from dlm.serve.requests import ApiError, render_chat

    tok = engine.tokenizer
    chat = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "?"},
    ]
    assert render_chat(tok, chat) == "User: Hi\nAssistant: Hello\nUser: ?\nAssistant:"
    try:
        tok.chat_template = (
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}"
        )
        assert render_chat(tok, chat[:1]) == "<user>Hi<|endoftext|><assistant>"
        tok.chat_template = "{{ raise_exception('roles must alternate') }}"
        with pytest.raises(ApiError, match="roles must alternate"):
            render_chat(tok, chat)
    finally:
        tok.chat_template = None


# --- infill and edit (POST /v1/dlm/infill, POST /v1/dlm/edit) -------------------------------------------------

HOLED = "It is a truth [MASK*4] acknowledged, that a single man"


def test_infill_fills_the_holes_as_the_engine_does(server, engine):
    body = {"model": "tiny", "text": HOLED, "seed": 3, "dlm": {"steps": 4}}
    r = post(server, "/v1/dlm/infill", body)
    assert r.status_code == 200, r.text
    out = r.json()
    expected = engine.infill(HOLED, seed=3, steps=4)
    assert out["object"] == "dlm.infill" and out["text"] == expected.text and out["fills"] == expected.fills
    assert out["holes"] == [list(h) for h in expected.holes] and out["holes"][0][1] - out["holes"][0][0] == 4
    assert out["text"].startswith("It is a truth") and out["text"].endswith(" acknowledged, that a single man")
    assert out["dlm"]["seed"] == 3 and out["dlm"]["sampler"] == "confidence" and out["dlm"]["nfe"] == expected.nfe
    assert out["usage"]["completion_tokens"] == 4
    searched = post(server, "/v1/dlm/infill", {**body, "lengths": [2, 3], "nelbo_samples": 2}).json()
    assert [set(table) for table in searched["nelbo"]] == [{"2", "3"}]
    assert searched["holes"][0][1] - searched["holes"][0][0] in (2, 3)


def test_edit_regenerates_the_named_span_or_the_least_likely_tokens(server, engine):
    text = "It is a truth universally acknowledged"
    r = post(server, "/v1/dlm/edit", {"model": "tiny", "text": text, "spans": [[8, 13]], "seed": 1})
    assert r.status_code == 200, r.text
    out, expected = r.json(), engine.edit(text, seed=1, spans=[(8, 13)])
    assert out["object"] == "dlm.edit" and out["text"] == expected.text and out["original"] == expected.original
    assert out["positions"] == expected.positions and out["diff"] == expected.diff and out["positions"]
    scored = post(server, "/v1/dlm/edit", {"model": "tiny", "text": text, "remask_k": 2, "rounds": 2}).json()
    assert len(scored["rounds"]) == 2 and all(len(r) == 2 for r in scored["rounds"])


@pytest.mark.parametrize(
    "path, body, status, param",
    [
        ("infill", {"text": "no holes here"}, 400, "text"),
        ("infill", {"text": "a [MASK*0] b"}, 400, "text"),
        ("infill", {"text": "a [MASK] b", "dlm": {"sampler": "ar"}}, 400, "dlm.sampler"),
        ("infill", {"text": "a [MASK] b", "dlm": {"stream_denoising": True}}, 400, "dlm"),
        ("infill", {"text": "a [MASK*90] b"}, 400, "text"),
        ("infill", {"text": "a [MASK] b", "lengths": [0]}, 400, "lengths"),
        ("infill", {"text": "a [MASK] b", "nelbo_samples": 2}, 400, "nelbo_samples"),
        ("infill", {"text": "a [MASK] b", "prompt": "x"}, 400, "prompt"),
        ("edit", {"text": "abc", "spans": [[2, 9]]}, 400, "spans"),
        ("edit", {"text": "abc", "below": 0.1, "remask_k": 1}, 400, "below"),
        ("edit", {"text": "abc", "rounds": 0}, 400, "rounds"),
        ("edit", {"text": ""}, 400, "text"),
        ("edit", {"text": "abc", "model": "other"}, 404, "model"),
    ],
)
def test_bad_infill_and_edit_requests_get_an_openai_error(server, path, body, status, param):
    r = post(server, f"/v1/dlm/{path}", {"model": "tiny", **body})
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["message"]
    assert post(server, f"/v1/dlm/{path}", {"model": "tiny", **body}, key=None).status_code == 401
