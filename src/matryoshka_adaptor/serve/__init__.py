"""HTTP serving: an OpenAI-compatible embeddings endpoint that applies an adaptor."""
