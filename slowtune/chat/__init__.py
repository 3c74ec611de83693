"""Chat: the one llama.cpp engine module, chat sessions, evaluation. Not implemented yet."""
