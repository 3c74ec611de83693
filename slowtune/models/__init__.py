"""Base models: catalog, Hugging Face download, memory and speed preflight. Not implemented yet."""
