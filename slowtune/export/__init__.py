"""Export: fuse, GGUF writer, llama.cpp quantisation, verification, Ollama Modelfile. Not implemented yet."""
