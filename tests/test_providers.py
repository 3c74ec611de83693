"""Teacher providers, the capability probe and ``slowtune provider``: real HTTP, the real openai client, the real
(test) keyring, and a check after each that the key went nowhere but the keychain."""

from __future__ import annotations

import argparse
import io
import json
import logging
import secrets as pysecrets
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from slowtune import secrets
from slowtune.teacher import probe as pr
from slowtune.teacher import provider_command
from slowtune.teacher import providers as pv
from slowtune.testing.fake_openai import FakeTeacher, Fault


def _fake_key() -> str:
    return "sk-test" + pysecrets.token_hex(16)


@pytest.fixture
def key() -> str:
    return _fake_key()


@pytest.fixture
def teacher(key: str) -> Iterator[FakeTeacher]:
    with FakeTeacher(api_key=key) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    # Everything at DEBUG is captured (the openai client's and httpx's lines too), so leak checks see it all.
    caplog.set_level(logging.DEBUG)


def _assert_no_leak(key: str, home: Path, *texts: str) -> None:
    for text in texts:
        assert key not in text
    for path in home.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), f"the key leaked into {path}"


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _gguf_file(tmp_path: Path, magic: bytes = b"GGUF") -> Path:
    path = tmp_path / "teacher.gguf"
    path.write_bytes(magic + b"\x03\x00\x00\x00" + b"\x00" * 32)
    return path


# ---------------------------------------------------------------------------------------------------------
# The registry and the keychain


def test_presets_cover_the_services() -> None:
    assert set(pv.PRESETS) == {"openai", "openrouter", "together", "fireworks", "groq", "ollama", "lmstudio",
                               "llamacpp", "custom", "gguf"}
    assert pv.PRESETS["groq"].base_url == "https://api.groq.com/openai/v1"
    assert pv.PRESETS["fireworks"].base_url == "https://api.fireworks.ai/inference/v1"
    for local in ("ollama", "lmstudio", "llamacpp", "gguf"):
        assert pv.PRESETS[local].local and not pv.PRESETS[local].needs_key
    for remote in ("openai", "openrouter", "together", "fireworks", "groq"):
        p = pv.PRESETS[remote]
        assert p.needs_key and not p.local and p.key_hint.startswith("https://")
    assert pv.PRESETS["custom"].base_url is None and pv.PRESETS["gguf"].base_url is None


def test_add_list_remove_keeps_the_key_in_the_keychain_only(slowtune_home: Path, key: str,
                                                            keyring_root: Path) -> None:
    provider = pv.add_provider("openai", "openai", model="gpt-4o-mini", key=key)
    assert provider.base_url == "https://api.openai.com/v1" and provider.needs_key
    assert [p.id for p in pv.list_providers()] == ["openai"]
    got = pv.get_provider("openai")
    assert got.default_model == "gpt-4o-mini" and got.added_at.endswith("Z")
    assert pv.key_status(got) == "keychain"
    assert pv.api_key(got) == key
    assert key in secrets.known_secrets()  # so the log formatter redacts it
    assert pv.destination(got) == "api.openai.com" and pv.is_remote(got)

    registry = json.loads(pv.registry_file().read_text())
    assert registry["version"] == 1 and registry["providers"][0]["id"] == "openai"
    _assert_no_leak(key, slowtune_home)
    assert any(p.is_file() for p in keyring_root.rglob("*")), "the key went to the test keyring's file"

    assert pv.remove_provider("openai") is True
    assert pv.list_providers() == []
    assert secrets.get_secret(secrets.provider_key_name("openai")) is None
    with pytest.raises(pv.ProviderError, match="'openai'"):
        pv.get_provider("openai")


def test_unknown_id_names_it_and_the_known_ones() -> None:
    pv.add_provider("local", "ollama")
    with pytest.raises(pv.ProviderError, match=r"No provider 'nope'\. Known providers: local\."):
        pv.get_provider("nope")
    with pytest.raises(pv.ProviderError, match="'nope'"):
        pv.remove_provider("nope")


@pytest.mark.parametrize("bad_id", ["", "OpenAI", "has space", "x" * 41, "dot.ted", "é", "a/b"])
def test_bad_ids_are_refused(bad_id: str) -> None:
    with pytest.raises(pv.ProviderError, match="lowercase letters"):
        pv.add_provider(bad_id, "ollama")


def test_an_id_of_40_characters_is_fine() -> None:
    assert pv.add_provider("a-b_c" + "9" * 35, "ollama").id == "a-b_c" + "9" * 35


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("ftp://example.com/v1", "http:// or https://"),
        ("localhost:8080/v1", "http:// or https://"),
        ("https:///v1", "http:// or https://"),
        ("https://user:secretpass@example.com/v1", "user name or password"),
        ("https://example.com/v1?api_key=abcdef", "query string"),
        ("http://example.com:99999/v1", "port"),
    ],
)
def test_bad_urls_are_refused(url: str, match: str) -> None:
    with pytest.raises(pv.ProviderError, match=match) as info:
        pv.add_provider("x", "custom", base_url=url)
    assert "secretpass" not in str(info.value)
    assert pv.list_providers() == []


def test_presets_and_urls_are_checked() -> None:
    with pytest.raises(pv.ProviderError, match=r"Unknown preset 'openia'.*openai"):
        pv.add_provider("x", "openia")
    with pytest.raises(pv.ProviderError, match="needs a base URL"):
        pv.add_provider("x", "custom")
    custom = pv.add_provider("x", "custom", base_url="https://llm.example.org:8443/v1/")
    assert custom.base_url == "https://llm.example.org:8443/v1" and not custom.needs_key
    assert pv.key_status(custom) == "optional"  # none stored, and the server may not want one
    assert pv.destination(custom) == "llm.example.org:8443"
    # A preset's URL can be pointed elsewhere (a proxy, a regional endpoint).
    assert pv.add_provider("oa", "openai", base_url="https://eu.example.com/v1").base_url == "https://eu.example.com/v1"


def test_an_existing_id_is_replaced_only_on_request_and_keeps_its_key(key: str) -> None:
    first = pv.add_provider("or", "openrouter", key=key)
    with pytest.raises(pv.ProviderError, match="exists already"):
        pv.add_provider("or", "openrouter", model="other")
    with pytest.raises(pv.ProviderError, match="empty"):
        pv.add_provider("or", "openrouter", key="  ", replace=True)
    second = pv.add_provider("or", "openrouter", model="meta/llama", replace=True)
    assert second.default_model == "meta/llama" and second.added_at == first.added_at
    assert pv.api_key(second) == key  # no key given: the saved one stays
    new_key = _fake_key()
    pv.add_provider("or", "openrouter", key=new_key, replace=True)
    assert pv.api_key(pv.get_provider("or")) == new_key
    assert pv.get_provider("or").default_model == "meta/llama"  # a new key alone keeps the model
    assert len(pv.list_providers()) == 1
    # A custom provider's URL is kept too, so the "store a key" hint works as printed.
    pv.add_provider("mine", "custom", base_url="https://llm.example.org/v1", model="m1")
    pv.add_provider("mine", "custom", key=new_key, replace=True)
    kept = pv.get_provider("mine")
    assert kept.base_url == "https://llm.example.org/v1" and kept.default_model == "m1"
    assert pv.api_key(kept) == new_key


def test_local_servers_are_described_as_this_machine() -> None:
    ollama = pv.add_provider("ollama", "ollama")
    assert pv.destination(ollama) == "a server on this machine (localhost:11434)"
    assert not pv.is_remote(ollama) and not ollama.needs_key and pv.key_status(ollama) == "not needed"
    lan = pv.add_provider("lan", "custom", base_url="http://127.0.0.1:9000/v1")
    assert pv.destination(lan) == "a server on this machine (127.0.0.1:9000)" and not pv.is_remote(lan)
    other = pv.add_provider("box", "custom", base_url="http://192.168.1.20:8080/v1")
    assert pv.is_remote(other) and pv.destination(other) == "192.168.1.20:8080"


def test_without_a_keychain_nothing_is_saved_and_the_env_var_is_named(
    key: str, monkeypatch: pytest.MonkeyPatch, slowtune_home: Path
) -> None:
    import keyring
    from keyring.backends import fail

    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        with pytest.raises(pv.KeyNotStoredError) as info:
            pv.add_provider("groq", "groq", key=key)
        message = str(info.value)
        assert "could not be stored in the keychain" in message and "nothing was saved" in message
        assert info.value.env_var == "SLOWTUNE_KEY_PROVIDER_GROQ" and info.value.no_keychain
        assert key not in message
        # Not half-saved: no provider that would then fail for want of the key the user typed.
        assert pv.list_providers() == [] and not pv.registry_file().exists()
        # Added without a key, it takes the key from the environment for a run.
        pv.add_provider("groq", "groq")
        assert pv.key_status(pv.get_provider("groq")) == "missing"
        monkeypatch.setenv("SLOWTUNE_KEY_PROVIDER_GROQ", key)
        assert pv.key_status(pv.get_provider("groq")) == "environment"
        assert pv.api_key(pv.get_provider("groq")) == key
    finally:
        keyring.set_keyring(previous)
    _assert_no_leak(key, slowtune_home)


def test_a_keychain_that_refuses_on_replace_leaves_the_provider_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    from keyring.errors import PasswordSetError

    pv.add_provider("srv", "custom", base_url="http://127.0.0.1:9000/v1", model="m1")

    def refuse(*_args: object) -> None:
        raise PasswordSetError("the keychain is locked")

    import keyring

    monkeypatch.setattr(keyring, "set_password", refuse)
    with pytest.raises(pv.KeyNotStoredError) as info:
        pv.add_provider("srv", "custom", base_url="http://127.0.0.1:9001/v1", model="m2", key="sk-" + "y" * 24,
                        replace=True)
    assert not info.value.no_keychain
    kept = pv.get_provider("srv")
    assert (kept.base_url, kept.default_model) == ("http://127.0.0.1:9000/v1", "m1")


def test_an_optional_key_is_never_required() -> None:
    # An entry written by an earlier version, which marked a typed optional key as needed.
    path = pv.registry_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "providers": [
        {"id": "srv", "preset": "custom", "base_url": "http://127.0.0.1:9/v1", "default_model": None,
         "needs_key": True, "added_at": "2025-01-01T00:00:00Z"}]}))
    provider = pv.get_provider("srv")
    assert not provider.needs_key and pv.key_status(provider) == "optional"
    # No key, and no refusal before asking: the check goes to the server (nothing listens on port 9).
    assert pv.check_provider(provider, timeout=2).status == "unreachable"


def test_a_corrupt_registry_is_set_aside_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    path = pv.registry_file()
    path.write_text('{"version": 1, "providers": [ {"id": "half-writ')
    assert pv.list_providers() == []
    asides = list(path.parent.glob("providers.json.bad-*"))
    assert len(asides) == 1 and "half-writ" in asides[0].read_text()
    assert any("could not be read" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert not path.exists()
    # Reading again does not set aside again, and the app carries on.
    assert pv.list_providers() == []
    assert len(list(path.parent.glob("providers.json.bad-*"))) == 1
    pv.add_provider("ollama", "ollama")
    assert [p.id for p in pv.list_providers()] == ["ollama"]


def test_bad_entries_are_dropped_once_and_the_file_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    path = pv.registry_file()
    good = {"id": "ok", "preset": "ollama", "base_url": "http://localhost:11434/v1", "default_model": None,
            "needs_key": False, "added_at": "2025-01-01T00:00:00Z", "from_the_future": {"x": 1}}
    path.write_text(json.dumps({"version": 1, "providers": [good, {"id": "BAD", "preset": "openai"},
                                                            {"id": "x", "preset": "warp-drive"}]}))
    load = pv.load_providers()
    assert [p.id for p in load.providers] == ["ok"]
    assert len(load.warnings) == 3 and load.set_aside is not None
    assert "BAD" in load.set_aside.read_text()
    # Rewritten without the bad entries: no second warning, and unknown fields of good entries survive.
    caplog.clear()
    assert [p.id for p in pv.list_providers()] == ["ok"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert json.loads(path.read_text())["providers"][0]["from_the_future"] == {"x": 1}


# ---------------------------------------------------------------------------------------------------------
# Clients and checks against the fake teacher


def _fake_provider(srv: FakeTeacher, key: str | None, pid: str = "fake", **kw: Any) -> pv.Provider:
    return pv.add_provider(pid, "custom", base_url=srv.base_url, key=key, **kw)


def test_make_client_has_no_retries_and_a_placeholder_key(teacher: FakeTeacher, key: str) -> None:
    import openai

    with_key = _fake_provider(teacher, key)
    client = pv.make_client(with_key, timeout=7, async_=True)
    assert isinstance(client, openai.AsyncOpenAI)
    assert client.max_retries == 0 and client.timeout == 7 and client.api_key == key
    assert str(client.base_url).rstrip("/") == teacher.base_url
    plain = pv.make_client(pv.add_provider("local", "ollama"), timeout=3, async_=False)
    assert isinstance(plain, openai.OpenAI) and plain.api_key == pv.NO_KEY_PLACEHOLDER
    plain.close()
    needs = pv.add_provider("oa", "openai")
    with pytest.raises(pv.MissingKeyError, match=r"No API key.*SLOWTUNE_KEY_PROVIDER_OA") as missing:
        pv.make_client(needs, timeout=3)
    # The command line is told the command; the app gets its own words, with no command in them.
    assert "slowtune provider add oa" in str(missing.value)
    assert "Providers page" in missing.value.app_message and "slowtune" not in missing.value.app_message


def test_check_ok_lists_models_with_latency(teacher: FakeTeacher, key: str, slowtune_home: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    provider = _fake_provider(teacher, key)
    check = pv.check_provider(provider)
    assert check.status == "ok" and check.ok
    assert check.models == ["judge-small", "teacher-small"]
    # The message names the models, so the user can pick one without another tool.
    assert check.message.startswith("OK: 2 models: judge-small, teacher-small; ") and check.message.endswith(" ms")
    assert check.latency_ms is not None and check.latency_ms >= 0
    with_model = pv.check_provider(provider, "teacher-small")
    assert with_model.ok and with_model.message.startswith("OK: teacher-small available; 2 models: judge-small, ")
    # The list is kept for the model pickers, by URL: the same server added again offers the same models.
    assert pv.known_models(provider) == ["judge-small", "teacher-small"]
    assert pv.known_models(pv.add_provider("again", "custom", base_url=teacher.base_url)) == check.models
    assert pv.known_models(pv.add_provider("other", "custom", base_url="http://127.0.0.1:9/v1")) == []
    assert teacher.stats()["chat_calls"] == 0  # listing models costs nothing
    _assert_no_leak(key, slowtune_home, check.message, caplog.text)


def test_check_model_not_found_suggests_close_names(teacher: FakeTeacher, key: str) -> None:
    provider = _fake_provider(teacher, key, model="teacher-smal")
    check = pv.check_provider(provider)  # the default model is checked
    assert check.status == "model_not_found"
    assert "'teacher-smal'" in check.message and "teacher-small" in check.message


def test_check_key_rejected(teacher: FakeTeacher, key: str, slowtune_home: Path,
                            caplog: pytest.LogCaptureFixture) -> None:
    wrong = _fake_key()
    provider = _fake_provider(teacher, wrong)
    check = pv.check_provider(provider)
    assert check.status == "key_rejected"
    assert check.message == "key rejected by 127.0.0.1 (401)"
    _assert_no_leak(wrong, slowtune_home, check.message, caplog.text)
    # The same server with no key at all: the user is told a key is needed, not that it was rejected.
    keyless = _fake_provider(teacher, None, pid="keyless")
    check = pv.check_provider(keyless)
    assert check.status == "no_key" and "asks for an API key (401)" in check.message


def test_check_no_key_makes_no_request(teacher: FakeTeacher) -> None:
    provider = pv.add_provider("oa", "openai", base_url=teacher.base_url)
    check = pv.check_provider(provider)
    assert check.status == "no_key" and "SLOWTUNE_KEY_PROVIDER_OA" in check.message
    assert teacher.stats()["requests"] == 0


def test_check_unreachable(key: str) -> None:
    port = _closed_port()
    provider = pv.add_provider("gone", "custom", base_url=f"http://127.0.0.1:{port}/v1", key=key)
    check = pv.check_provider(provider, timeout=5)
    assert check.status == "unreachable"
    assert check.message == f"cannot reach http://127.0.0.1:{port}/v1 (connection refused)"


def test_check_timeout_is_unreachable(key: str) -> None:
    # A socket that listens but never answers: the connection is made, the reply never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        provider = pv.add_provider("mute", "custom", base_url=f"http://127.0.0.1:{port}/v1", key=key)
        check = pv.check_provider(provider, timeout=0.3)
    assert check.status == "unreachable" and check.message.endswith("(timed out after 0.3 s)")


class _NoModelsServer:
    """An OpenAI-compatible server without GET /models (some gateways): chat works for one model only. With
    ``echo_key`` its errors quote the Authorization header back, as a careless server might."""

    def __init__(self, model: str = "m1", echo_key: bool = False, reasoning: bool = False) -> None:
        self.model = model
        self.echo_key = echo_key
        self.reasoning = reasoning  # refuses max_tokens and temperature, as OpenAI's reasoning models do
        self.chat_bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _send(self, status: int, obj: Any) -> None:
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if outer.echo_key:
                    msg = f"internal error for {self.headers.get('Authorization')}"
                    return self._send(500, {"error": {"message": msg, "type": "server_error"}})
                self._send(404, {"error": {"message": "Not Found", "type": "invalid_request_error"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                outer.chat_bodies.append(body)
                if body.get("model") != outer.model:
                    return self._send(404, {"error": {"message": "no such model", "code": "model_not_found"}})
                content = "O"
                if outer.reasoning:
                    for param in ("max_tokens", "temperature"):
                        if param in body:
                            msg = f"Unsupported parameter: '{param}' is not supported with this model."
                            return self._send(400, {"error": {"message": msg, "param": param,
                                                              "type": "invalid_request_error"}})
                    content = '{"answer": "ok"}' if body.get("response_format") else "OK"
                self._send(200, {
                    "id": "c1", "object": "chat.completion", "created": 0, "model": outer.model,
                    "choices": [{"index": 0, "finish_reason": "length",
                                 "message": {"role": "assistant", "content": content}}],
                })

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> _NoModelsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_check_falls_back_to_a_one_token_chat_without_a_model_list() -> None:
    with _NoModelsServer() as srv:
        provider = pv.add_provider("gw", "custom", base_url=srv.base_url)
        check = pv.check_provider(provider, "m1")
        assert check.status == "ok" and "m1 answered" in check.message and check.models == ["m1"]
        assert srv.chat_bodies[-1]["max_tokens"] == 1
        missing = pv.check_provider(provider, "m2")
        assert missing.status == "model_not_found" and "'m2'" in missing.message
        no_model = pv.check_provider(provider)
        assert no_model.status == "error" and "give the name of a model" in no_model.message
        assert "--" not in no_model.message
        # The probe copes too: no context length, but the modes are still tried.
        caps = pr.probe(provider, "m1")
        assert caps.context_length is None and caps.structured == "text"  # "O" is no JSON


def test_reasoning_models_are_checked_and_probed_with_their_own_parameters() -> None:
    with _NoModelsServer(reasoning=True) as srv:
        provider = pv.add_provider("o", "custom", base_url=srv.base_url)
        assert pv.check_provider(provider, "m1").status == "ok"
        assert pr.probe(provider, "m1").structured == "json_schema"
        last = srv.chat_bodies[-1]
        assert "max_tokens" not in last and "temperature" not in last
        assert last["max_completion_tokens"] == pv.REASONING_TOKEN_BUDGET
        assert last["response_format"]["type"] == "json_schema"


def test_a_key_echoed_by_the_server_is_scrubbed(key: str, slowtune_home: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    with _NoModelsServer(echo_key=True) as srv:
        provider = pv.add_provider("echo", "custom", base_url=srv.base_url, key=key)
        check = pv.check_provider(provider)
        assert check.status == "error" and "answered 500" in check.message
        assert "[REDACTED]" in check.message
        with pytest.raises(pr.ProbeError) as info:
            pr.probe(provider, "m1")
    _assert_no_leak(key, slowtune_home, check.message, str(info.value), caplog.text)


# ---------------------------------------------------------------------------------------------------------
# The capability probe


@pytest.mark.parametrize(
    ("supports", "expected"),
    [(("json_schema", "json_object"), "json_schema"), (("json_object",), "json_object"), ((), "text")],
)
def test_probe_picks_the_best_mode_the_server_supports(key: str, supports: tuple[str, ...], expected: str) -> None:
    with FakeTeacher(api_key=key, supports=supports, context_length=8192) as srv:
        provider = _fake_provider(srv, key)
        caps = pr.probe(provider, "teacher-small")
        assert caps.structured == expected and caps.context_length == 8192
        assert abs(caps.probed_at - time.time()) < 60
        assert srv.stats()["chat_calls"] == {"json_schema": 1, "json_object": 2, "text": 2}[expected]


def test_a_mode_accepted_but_not_followed_counts_as_unsupported(teacher: FakeTeacher, key: str) -> None:
    teacher.set_faults([Fault(kind="malformed", calls=frozenset({1}))])
    caps = pr.probe(_fake_provider(teacher, key), "teacher-small")
    assert caps.structured == "json_object"


def test_probe_errors_are_errors_not_text(teacher: FakeTeacher, key: str) -> None:
    with pytest.raises(pr.ProbeError, match=r"key rejected by 127\.0\.0\.1 \(401\)"):
        pr.get_capabilities(_fake_provider(teacher, _fake_key(), pid="wrong"), "teacher-small")
    provider = _fake_provider(teacher, key)
    with pytest.raises(pr.ProbeError, match="model 'nope' not found"):
        pr.get_capabilities(provider, "nope")
    teacher.set_faults([Fault(kind="server_error")])
    with pytest.raises(pr.ProbeError, match="answered 500"):
        pr.get_capabilities(provider, "teacher-small")
    port = _closed_port()
    gone = pv.add_provider("gone", "custom", base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(pr.ProbeError, match="connection refused"):
        pr.get_capabilities(gone, "teacher-small", timeout=5)
    assert not pr.cache_file().exists()  # no failure was cached as "text"


def test_capabilities_are_cached_for_a_week(teacher: FakeTeacher, key: str) -> None:
    provider = _fake_provider(teacher, key)
    first = pr.get_capabilities(provider, "teacher-small")
    calls = teacher.stats()["requests"]
    assert first.structured == "json_schema" and first.context_length == 32768
    again = pr.get_capabilities(provider, "teacher-small")
    assert again == first and teacher.stats()["requests"] == calls  # served from the cache
    refreshed = pr.get_capabilities(provider, "teacher-small", refresh=True)
    assert teacher.stats()["requests"] > calls and refreshed.probed_at >= first.probed_at

    # Eight days old: stale, probed again.
    data = json.loads(pr.cache_file().read_text())
    (entry,) = data["entries"].values()
    entry["probed_at"] = time.time() - 8 * 24 * 3600
    pr.cache_file().write_text(json.dumps(data))
    calls = teacher.stats()["requests"]
    fresh = pr.get_capabilities(provider, "teacher-small")
    assert teacher.stats()["requests"] > calls and not fresh.stale()
    # Another model of the same server is a separate entry.
    pr.get_capabilities(provider, "judge-small")
    assert len(json.loads(pr.cache_file().read_text())["entries"]) == 2


def test_downgrade_is_remembered_and_never_upgrades(teacher: FakeTeacher, key: str) -> None:
    provider = _fake_provider(teacher, key)
    pr.get_capabilities(provider, "teacher-small")
    lowered = pr.downgrade(provider, "teacher-small", "json_object")
    assert lowered.structured == "json_object" and lowered.context_length == 32768
    calls = teacher.stats()["requests"]
    assert pr.get_capabilities(provider, "teacher-small").structured == "json_object"
    assert teacher.stats()["requests"] == calls
    assert pr.downgrade(provider, "teacher-small", "json_schema").structured == "json_object"
    assert pr.downgrade(provider, "teacher-small", "text").structured == "text"
    # A model never probed gets an entry from the downgrade alone.
    assert pr.downgrade(provider, "judge-small", "json_object").context_length is None
    assert pr.cached_capabilities(provider, "judge-small").structured == "json_object"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="Unknown structured-output mode"):
        pr.downgrade(provider, "teacher-small", "yaml")


def test_a_corrupt_cache_is_rebuilt(teacher: FakeTeacher, key: str) -> None:
    pr.cache_file().write_text("not json")
    assert pr.get_capabilities(_fake_provider(teacher, key), "teacher-small").structured == "json_schema"
    assert json.loads(pr.cache_file().read_text())["version"] == 1


def test_context_length_fields_of_various_servers() -> None:
    from openai.types import Model

    def card(**extra: Any) -> Model:
        return Model.model_validate({"id": "m", "object": "model", "created": 0, "owned_by": "x", **extra})

    assert pr._context_length(card(context_length=4096)) == 4096
    assert pr._context_length(card(max_context_length=8192)) == 8192
    assert pr._context_length(card(context_window=131072)) == 131072
    assert pr._context_length(card(max_model_len=2048)) == 2048
    assert pr._context_length(card(top_provider={"context_length": 65536})) == 65536
    assert pr._context_length(card()) is None
    assert pr._context_length(card(context_length=True)) is None
    assert pr._context_length(None) is None


# ---------------------------------------------------------------------------------------------------------
# The gguf preset


def test_gguf_preset_checks_the_file_and_stays_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _gguf_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    provider = pv.add_provider("local-gguf", "gguf", model="teacher.gguf")
    assert provider.default_model == str(path.resolve()) and provider.base_url is None
    assert not provider.needs_key and pv.key_status(provider) == "not needed" and pv.api_key(provider) is None
    assert not pv.is_remote(provider) and pv.destination(provider).endswith("(in-process)")
    check = pv.check_provider(provider)
    assert check.status == "ok" and "teacher.gguf" in check.message
    caps = pr.get_capabilities(provider, provider.default_model or "")
    assert caps.structured == "json_schema" and caps.context_length is None
    with pytest.raises(pv.ProviderError, match="in-process"):
        pv.make_client(provider, timeout=3)
    path.unlink()
    assert pv.check_provider(provider).status == "model_not_found"


def test_gguf_preset_refuses_other_files(tmp_path: Path) -> None:
    not_gguf = _gguf_file(tmp_path, magic=b"PK\x03\x04")
    with pytest.raises(pv.ProviderError, match="not a GGUF model file"):
        pv.add_provider("g", "gguf", model=str(not_gguf))
    with pytest.raises(pv.ProviderError, match="does not exist"):
        pv.add_provider("g", "gguf", model=str(tmp_path / "missing.gguf"))
    with pytest.raises(pv.ProviderError, match="needs the path"):
        pv.add_provider("g", "gguf")
    with pytest.raises(pv.ProviderError, match="no base URL"):
        pv.add_provider("g", "gguf", model=str(not_gguf), base_url="http://localhost:1/v1")
    assert pv.list_providers() == []


# ---------------------------------------------------------------------------------------------------------
# slowtune provider ...


def _cli(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
         stdin: str | None = None) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="slowtune provider")
    provider_command.add_arguments(parser)
    args = parser.parse_args(argv)
    # Not a terminal: the command must never wait at a prompt in a test.
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin or ""))
    code = provider_command.run(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_add_list_test_probe_remove(teacher: FakeTeacher, key: str, slowtune_home: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                        caplog: pytest.LogCaptureFixture) -> None:
    outputs: list[str] = []

    def cli(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
        result = _cli(list(argv), monkeypatch, capsys, stdin)
        outputs.extend(result[1:])
        return result

    code, out, _ = cli("add", "fake", "--preset", "custom", "--base-url", teacher.base_url, "--model",
                       "teacher-small", "--key-stdin", stdin=key + "\n")
    assert code == 0
    assert "Key stored in the keychain." in out
    assert "a server on this machine (127.0.0.1:" in out

    code, out, _ = cli("list")
    assert code == 0 and "fake" in out and "keychain (sk-…" in out and "teacher-small" in out
    code, out, _ = cli("list", "--json")
    (row,) = json.loads(out)
    assert row["id"] == "fake" and row["key"] == "keychain" and row["key_masked"] == secrets.mask(key)
    assert row["remote"] is False

    code, out, _ = cli("test", "fake")
    assert code == 0 and out.startswith("OK: teacher-small available; 2 models: judge-small, teacher-small; ")
    code, out, _ = cli("test", "fake", "--model", "teacher-big", "--json")
    assert code == 1 and json.loads(out)["status"] == "model_not_found"

    code, out, _ = cli("probe", "fake", "--json")
    data = json.loads(out)
    assert code == 0 and data["structured"] == "json_schema" and data["context_length"] == 32768
    assert data["cached"] is False
    code, out, _ = cli("probe", "fake")
    assert code == 0 and "json_schema" in out and "32,768 tokens" in out and "cached" in out
    code, out, _ = cli("probe", "fake", "--refresh", "--json")
    assert json.loads(out)["cached"] is False

    # A wrong key: exit 1 and the short message.
    code, out, _ = cli("add", "fake", "--preset", "custom", "--base-url", teacher.base_url, "--key-stdin",
                       "--replace", stdin="sk-wrong-" + pysecrets.token_hex(8) + "\n")
    assert code == 0
    code, out, _ = cli("test", "fake")
    assert code == 1 and out.strip() == "key rejected by 127.0.0.1 (401)"

    code, out, _ = cli("remove", "fake")
    assert code == 0 and "removed with its stored key" in out
    code, out, _ = cli("list")
    assert "No providers yet" in out
    _assert_no_leak(key, slowtune_home, *outputs, caplog.text)


def test_cli_unknown_ids_and_bad_input_exit_1(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["test", "ghost"], ["probe", "ghost"], ["remove", "ghost"]):
        code, _, err = _cli(argv, monkeypatch, capsys)
        assert code == 1 and "'ghost'" in err
    code, _, err = _cli(["add", "Bad Id", "--preset", "ollama"], monkeypatch, capsys)
    assert code == 1 and "lowercase letters" in err
    code, _, err = _cli(["add", "x", "--preset", "nope"], monkeypatch, capsys)
    assert code == 1 and "Unknown preset" in err
    code, _, err = _cli(["add", "x", "--preset", "custom", "--base-url", "file:///etc"], monkeypatch, capsys)
    assert code == 1 and "http://" in err
    _cli(["add", "x", "--preset", "ollama"], monkeypatch, capsys)
    code, _, err = _cli(["add", "x", "--preset", "ollama"], monkeypatch, capsys)
    assert code == 1 and "--replace" in err
    code, _, err = _cli(["probe", "x"], monkeypatch, capsys)
    assert code == 1 and "--model" in err


def test_cli_never_takes_a_key_from_argv(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--key", "--api-key"):
        with pytest.raises(SystemExit):
            _cli(["add", "x", "--preset", "openai", flag, "sk-abc"], monkeypatch, capsys)
    # Not interactive and no --key-stdin: nothing is read, and the user is told how to give the key.
    code, out, _ = _cli(["add", "oa", "--preset", "openai"], monkeypatch, capsys, stdin="sk-should-not-be-read\n")
    assert code == 0 and "No key stored" in out and "SLOWTUNE_KEY_PROVIDER_OA" in out
    assert "Document text will be sent to api.openai.com." in out
    assert pv.key_status(pv.get_provider("oa")) == "missing"


def test_cli_add_without_a_keychain_exits_1_and_saves_nothing(monkeypatch: pytest.MonkeyPatch, key: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import keyring
    from keyring.backends import fail

    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        code, out, err = _cli(["add", "tg", "--preset", "together", "--key-stdin"], monkeypatch, capsys,
                              stdin=key + "\n")
    finally:
        keyring.set_keyring(previous)
    assert code == 1 and "SLOWTUNE_KEY_PROVIDER_TG" in err and "nothing was saved" in err
    assert key not in out + err
    assert pv.list_providers() == []


def test_cli_presets_and_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(["presets"], monkeypatch, capsys)
    assert code == 0 and "https://api.groq.com/openai/v1" in out and "gguf" in out
    code, out, _ = _cli(["presets", "--json"], monkeypatch, capsys)
    assert {p["id"] for p in json.loads(out)} == set(pv.PRESETS)
    path = _gguf_file(tmp_path)
    code, out, _ = _cli(["add", "g", "--preset", "gguf", "--model", str(path)], monkeypatch, capsys)
    assert code == 0 and "stays on" in out and "(in-process)" in out and "No key needed." in out
    code, out, _ = _cli(["test", "g", "--json"], monkeypatch, capsys)
    assert code == 0 and json.loads(out)["status"] == "ok"
    code, out, _ = _cli(["probe", "g"], monkeypatch, capsys)
    assert code == 0 and "json_schema" in out and "unknown" in out


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]"])
def test_a_server_on_this_computer_is_free_unless_the_user_priced_its_model(host: str) -> None:
    from slowtune.teacher import cost, session

    local = pv.add_provider("srv", "custom", base_url=f"http://{host}:8000/v1")
    # A list price is never charged for a server on this computer (a local model may share a paid model's name).
    assert cost.price_for("gpt-4o-mini") is not None and session.is_free(local, "gpt-4o-mini")
    assert cost.estimate("gpt-4o-mini", 3, 1000, 100, free=True).describe().endswith("free: runs on this computer")
    # A local proxy to a paid service: the price the user gave counts.
    cost.write_user_price("proxied-model", 1.0, 2.0)
    assert not session.is_free(local, "proxied-model")
    remote = pv.add_provider("far", "custom", base_url="https://llm.example.org/v1")
    assert not session.is_free(remote, "some-model")


def test_no_model_is_a_typed_error_without_command_line_words() -> None:
    from slowtune.teacher import session

    pv.add_provider("srv", "custom", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(pv.NoModelError) as info:
        session.choose("srv", None)
    assert info.value.provider_id == "srv" and "--" not in str(info.value) and "slowtune " not in str(info.value)
