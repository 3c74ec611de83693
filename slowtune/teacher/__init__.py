"""Teacher: OpenAI-compatible providers, prompts, generation, judging, de-duplication and cost.

Not implemented yet; keys go through ``slowtune.secrets`` and rows through ``slowtune.dataset``.
"""
