"""`dsa serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over the engine (dsa.engine.async_engine).

One job per module:
  command.py    the `dsa serve` flags and command body (checks, ranks, the socket, uvicorn)
  http.py       binding the port, the uvicorn server and its signal handling
  app.py        the FastAPI app: routes, API key, lifespan
  engine.py     EngineHost: loading the model after the port is bound, the AsyncEngine, graceful shutdown
  protocol.py   request bodies -> GenerationRequest (types, SamplingParams, what is refused)
  prompts.py    prompts -> token ids (text, ids, chat template), context checks
  generate.py   the choices of a request as engine requests, their text deltas, stop strings applied
  stream.py     TextStream: incremental decoding with stop strings (tokenizer-dependent, reusable)
  responses.py  response / chunk JSON, usage, logprobs
  sse.py        server-sent events framing
  metrics.py    the Prometheus registry (dsa_* metrics)
  errors.py     OpenAI-style error JSON and the app's exception handlers

Importing this package imports nothing heavy: fastapi / uvicorn / prometheus_client load when a server starts.
"""
