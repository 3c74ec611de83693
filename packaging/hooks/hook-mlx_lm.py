"""PyInstaller hook for mlx_lm (none ships with PyInstaller or its contrib hooks).

mlx_lm imports modules by name at run time, which PyInstaller cannot see: each model architecture
(``importlib.import_module(f"mlx_lm.models.{model_type}")``), and the chat-template and tool-call helpers a model's
tokenizer config names. Collect those packages whole, so any base model that mlx_lm supports loads in the app.
"""

from PyInstaller.utils.hooks import collect_submodules

hiddenimports = [
    name
    for package in ("mlx_lm.models", "mlx_lm.chat_templates", "mlx_lm.tool_parsers", "mlx_lm.kernels",
                    "mlx_lm.processors", "mlx_lm.tuner")
    for name in collect_submodules(package)
]
