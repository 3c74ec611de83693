"""PyInstaller hook for llama_cpp (llama-cpp-python; none ships with PyInstaller or its contrib hooks).

llama_cpp loads libllama with ctypes, by path, from the ``lib`` folder beside its own modules, so nothing
imports it and PyInstaller would not collect it. The whole folder is collected at llama_cpp/lib: libllama, the
ggml libraries it links (found through its $ORIGIN / @loader_path run path), and on a Mac the Metal backend
(whose shaders are embedded in libggml-metal; a loose .metal/.metallib file is collected too when a build has one).
"""

from PyInstaller.utils.hooks import collect_data_files, collect_dynamic_libs

binaries = collect_dynamic_libs("llama_cpp", search_patterns=["*.dylib", "*.so", "*.so.*", "*.dll"])
datas = collect_data_files("llama_cpp", includes=["lib/*.metal", "lib/*.metallib"])
# The OpenAI-compatible server needs fastapi and uvicorn, which slowtune does not install.
excludedimports = ["llama_cpp.server"]
