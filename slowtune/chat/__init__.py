"""Chat: talking to GGUF models offline (llama.cpp) and saved sessions (evaluation is :mod:`slowtune.eval`)."""
