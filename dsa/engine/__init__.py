"""Generation: the engine over the paged caches, sampling, the options object (EngineArgs) and the LLM API."""
