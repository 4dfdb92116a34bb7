"""`dsa bench`: measured speed and memory, side by side in one run.

    ops.py        one layer at the 671B shapes: indexer + sparse MLA against dense MLA (decode, prefill)
    dense_mla.py  the dense absorbed-MLA baseline those are compared with (plain PyTorch, chunked)
    e2e.py        the tiny model end to end: ours against transformers' DeepseekV32ForCausalLM
    cache_bytes.py  KV + index cache bytes per token per layer, measured on PagedCache, against docs/model-and-ops.md
    serving.py    the tiny model served: continuous batching against transformers' static batches, chunked prefill
    serve.py      `dsa bench serve`: the load generator (datasets, Poisson arrivals, TTFT / TPOT / ITL, the plot)
    serve_command.py  its flags and entry: against a server, or --in-process against an engine built here
    common.py     interleaved timing, peak-memory probes, machine description, Markdown tables
    run.py        the command: sections, --quick, --json, --markdown (bench/RESULTS.md)
"""
