"""The engine as a service: LLMEngine's step loop, the offline LLM, the engine thread and its
request streams, text out of tokens, and what a screen reads (the event feed, metrics over time,
the block map, a request under inspection)."""
