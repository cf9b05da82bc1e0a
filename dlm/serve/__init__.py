"""``dlm serve``: an OpenAI-compatible HTTP server for any model ``dlm.load`` reads (docs/SERVING.md).

    dlm serve runs/tiny --port 8000            then: POST /v1/completions, POST /v1/chat/completions,
                                               GET /v1/models, GET /health

``requests`` turns an OpenAI body into a ``Job`` (validated: every mistake is an ``ApiError``, a 4xx), ``batcher``
runs jobs with compatible settings in one batched Engine call, one generator per row, ``stream`` turns a row's
denoising steps into committed-text deltas and canvas events, and ``app`` is the FastAPI application. Only
``app`` imports FastAPI (the ``serve`` extra); ``import dlm`` never imports this package.
"""
