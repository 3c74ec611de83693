"""Logging: a rotating file in the logs folder, stderr for the CLI, and secrets redacted everywhere.

Redaction happens in the formatter, on the final text, so a key that reaches a message through ``%s``
arguments, an exception's text or a traceback is caught as well as one put in the message itself.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
from pathlib import Path

from slowtune import paths
from slowtune.secrets import known_secrets

LOG_FILE_NAME = "slowtune.log"
REDACTED = "[REDACTED]"

# Shapes of keys worth hiding even when slowtune never saw the value (pasted into a URL, an error, ...).
_KEY_PATTERNS = [
    re.compile(r"\bsk-[A-Za-z0-9_\-]{12,}"),  # OpenAI and many OpenAI-compatible providers
    re.compile(r"\bhf_[A-Za-z0-9]{16,}"),  # Hugging Face
    re.compile(r"\bgsk_[A-Za-z0-9]{16,}"),  # Groq
    re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._\-]{12,}"),
    re.compile(r"(?i)\b(api[_-]?key[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9._\-]{12,}"),
]


def redact(text: str) -> str:
    for secret in sorted(known_secrets(), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    for pattern in _KEY_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED, text)
    return text


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"


def setup_logging(verbose: bool = False, log_file: Path | None = None) -> Path:
    """Send slowtune's logs to a rotating file (always at DEBUG) and to stderr (WARNING, or DEBUG)."""
    log_file = log_file or paths.log_dir() / LOG_FILE_NAME
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_slowtune", False):
            root.removeHandler(handler)
            handler.close()
    file_handler = logging.handlers.RotatingFileHandler(
        log_file, maxBytes=2_000_000, backupCount=5, encoding="utf-8", delay=True
    )
    file_handler.setFormatter(RedactingFormatter(_FILE_FORMAT))
    file_handler.setLevel(logging.DEBUG)
    console = logging.StreamHandler()
    console.setFormatter(RedactingFormatter("%(levelname)s: %(message)s"))
    console.setLevel(logging.DEBUG if verbose else logging.WARNING)
    for handler in (file_handler, console):
        handler._slowtune = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    # Chatty libraries stay at INFO in our file; their debug lines can include request headers.
    for name in ("httpx", "httpcore", "httpx2", "httpcore2", "openai", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    return log_file
