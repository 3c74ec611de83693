"""Chat: talking to GGUF models offline (llama.cpp), saved sessions, and evaluation on the held-out probes."""
