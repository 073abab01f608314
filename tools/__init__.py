"""Developer tools: host bootstrap, tiny models, the workflow runner."""
