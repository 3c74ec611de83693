"""Model catalog, local model folders, and downloads from a fake Hugging Face Hub on 127.0.0.1.

The downloads use the real huggingface_hub client, pointed at tests/fakehub.py through HF_ENDPOINT (see
``point_huggingface_hub_at`` for why the in-process tests also patch huggingface_hub's constants; one test runs the
download in a subprocess with only the environment set).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakehub import FakeHub, free_port, hub_environment, iter_cache_files, point_huggingface_hub_at

from slowtune import secrets
from slowtune.models import catalog, hub
from slowtune.models.architectures import SUPPORTED_ARCHITECTURES
from slowtune.models.catalog import CATALOG, ModelError, Quantization, describe_local
from slowtune.models.hub import HubError
from slowtune.progress import Cancelled, Progress, ProgressEvent

REPO = "slowtune-test/tiny-llama"
GATED = "slowtune-test/gated-llama"
GOOD_TOKEN = "hf_GoodTokenForTheFakeHub0123456789"
BAD_TOKEN = "hf_WrongTokenNotGrantedAccess987654321"

# Files a real repo carries that slowtune must not download.
UNWANTED = {
    "pytorch_model.bin": b"pickle" * 200,
    "model.gguf": b"GGUF" * 300,
    "consolidated.safetensors": b"\0" * 4096,
    "original/consolidated.00.pth": b"pth" * 100,
    "onnx/model.onnx": b"onnx" * 100,
    "README.md": b"# tiny llama\n",
}
# Wanted files beyond the tiny model's: an empty one has no bytes to fetch but must arrive all the same.
EXTRA_WANTED = {"added_tokens.json": b""}


# --- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_stored_token() -> Iterator[None]:
    """The test keyring file is shared by the whole session: each test here starts and ends without a token."""
    secrets.delete_secret(secrets.HUGGINGFACE)
    yield
    secrets.delete_secret(secrets.HUGGINGFACE)


@pytest.fixture
def fake_hub(tiny_llama: Path) -> Iterator[FakeHub]:
    fake = FakeHub()
    fake.add_folder(REPO, tiny_llama, extra=UNWANTED | EXTRA_WANTED)
    fake.add_folder(GATED, tiny_llama, gated=True, allowed_tokens=(GOOD_TOKEN,))
    with fake:
        yield fake
    from huggingface_hub.utils import close_session

    close_session()  # drop kept-alive connections to this server


@pytest.fixture
def hf_home(tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hf-home"
    point_huggingface_hub_at(monkeypatch, hub_environment(fake_hub.endpoint, home))
    return home


def _go_offline(monkeypatch: pytest.MonkeyPatch, home: Path, *, hf_hub_offline: bool) -> None:
    """Point huggingface_hub at a port where nothing listens (and optionally set HF_HUB_OFFLINE=1)."""
    dead = f"http://127.0.0.1:{free_port()}"
    point_huggingface_hub_at(monkeypatch, hub_environment(dead, home, offline=hf_hub_offline))


def _wanted_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _blobs(home: Path, repo_id: str = REPO) -> Path:
    return home / "hub" / ("models--" + repo_id.replace("/", "--")) / "blobs"


def _cancelled_once_weights_arrive() -> Progress:
    """A Progress whose watcher presses Cancel as soon as the first bytes of the weights are reported."""

    def watch(event: ProgressEvent) -> None:
        if event.metrics.get("file") == "model.safetensors" and event.metrics.get("file_done", 0) > 0:
            progress.cancel()

    progress = Progress(watch, min_interval=0)  # unthrottled: a local download is over in milliseconds
    return progress


def _all_text(exc: BaseException) -> str:
    """Everything a user or a log could see of an exception: message, repr, traceback and chained causes."""
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


# --- catalog -----------------------------------------------------------------------------------------------


def test_catalog_entries_are_well_formed() -> None:
    assert len(CATALOG) >= 15
    ids = [m.repo_id for m in CATALOG]
    assert len(ids) == len(set(ids)), "duplicate repo ids"
    for model in CATALOG:
        assert re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", model.repo_id), model.repo_id
        assert model.name and model.licence, model.repo_id
        assert model.params_b > 0 and model.download_gb > 0, model.repo_id
        assert model.architecture in catalog.KNOWN_ARCHITECTURES, model.repo_id
        # Every entry's card or config states at least 8,192 tokens (SmolLM2 and Gemma 2 have the least).
        assert model.context_length >= 8192, model.repo_id
        assert model.shape is not None and model.shape.layers > 0 and model.shape.vocab > 0, model.repo_id
        assert model.quantization_bits in (None, 4, 8), model.repo_id
        assert model.chat_template, f"{model.repo_id}: the catalog lists instruct models only"
        assert model.url == f"https://huggingface.co/{model.repo_id}"
        if model.repo_id.startswith("mlx-community/"):
            assert model.quantization_bits and not model.gated, model.repo_id
            base = catalog.find(model.base_repo or "")
            assert base is not None and base.architecture == model.architecture, model.repo_id
            assert base.licence == model.licence and base.params_b == model.params_b
            assert base.shape == model.shape


def test_every_catalog_architecture_is_one_slowtune_trains_and_exports() -> None:
    # The lead's end-to-end test trains, exports and verifies a tiny model of each supported family: an entry of any
    # other architecture would be offered without that proof.
    outside = {m.repo_id: m.architecture for m in CATALOG if m.architecture not in SUPPORTED_ARCHITECTURES}
    assert outside == {}, f"catalog entries of architectures slowtune does not support: {outside}"
    assert catalog.offered() == list(CATALOG)
    # Written out: the families both engines run (the rule, not the module's constant).
    supported = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "smollm3"}
    assert supported == set(SUPPORTED_ARCHITECTURES) == catalog.STREAMED_ARCHITECTURES
    assert supported == {m.architecture for m in CATALOG}, "every family has a model in the catalog"
    stray = dataclasses.replace(catalog.QWEN25_05B, repo_id="tiiuae/falcon-7b-instruct", architecture="falcon")
    assert catalog.offered([stray, catalog.QWEN25_05B]) == [catalog.QWEN25_05B]


def test_streaming_is_marked_by_the_macs_memory() -> None:
    gb = 10**9
    for model in CATALOG:
        size = model.download_gb * gb
        # The rule: a Mac with less than twice the model's size in memory trains it streamed.
        assert catalog.needs_streaming(model, 2 * size - 1) and not catalog.needs_streaming(model, 2 * size)
        for memory in (8 * gb, 16 * gb, 24 * gb, 32 * gb, 64 * gb, 128 * gb, 192 * gb, 512 * gb):
            where = catalog.placement(model, memory)
            assert where in ("in memory", "streamed", "too large")
            if catalog.needs_streaming(model, memory):
                assert where != "in memory", (model.repo_id, memory)
            in_memory, streamed = catalog.training_bytes(model)
            assert streamed < in_memory, model.repo_id
            if where == "too large":
                assert streamed > 0.8 * memory, (model.repo_id, memory)
        assert catalog.placement(model, 512 * gb) != "too large", model.repo_id
    # The large models: streamed on every Mac with less than twice their size that has room for the streamed pass,
    # in memory only on one with at least twice their size.
    for repo in ("mlx-community/Qwen2.5-14B-Instruct-4bit", "mlx-community/Qwen2.5-32B-Instruct-4bit",
                 "mlx-community/Qwen2.5-72B-Instruct-4bit", "mlx-community/Llama-3.3-70B-Instruct-4bit"):
        model = catalog.find(repo)
        assert model is not None
        assert catalog.placement(model, 16 * gb) == "streamed", repo
        assert catalog.placement(model, 2.2 * model.download_gb * gb) == "in memory", repo
    for repo in ("Qwen/Qwen2.5-14B-Instruct", "Qwen/Qwen2.5-32B-Instruct"):
        assert catalog.placement(catalog.find(repo), 16 * gb) == "streamed", repo  # type: ignore[arg-type]
    for repo in ("Qwen/Qwen2.5-72B-Instruct", "meta-llama/Llama-3.3-70B-Instruct"):
        model = catalog.find(repo)
        assert model is not None
        assert [catalog.placement(model, m * gb) for m in (32, 64, 128, 192)] == ["streamed"] * 4, repo
        # float32 training of 70B parameters: three 3.5 GB blocks and a 5 GB embedding do not fit in 16 GB
        assert catalog.placement(model, 16 * gb) == "too large", repo
    small = catalog.find("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert small is not None and catalog.placement(small, 8 * gb) == "in memory"


def test_catalog_has_the_recommended_models() -> None:
    for repo_id in (
        "Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen3-0.6B", "Qwen/Qwen3-8B",
        "meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-3B-Instruct", "meta-llama/Llama-3.1-8B-Instruct",
        "mistralai/Mistral-7B-Instruct-v0.3", "HuggingFaceTB/SmolLM3-3B", "google/gemma-2-2b-it",
        "HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-360M-Instruct",
        "HuggingFaceTB/SmolLM2-1.7B-Instruct", "google/gemma-3-270m-it", "google/gemma-3-1b-it",
        "microsoft/Phi-4-mini-instruct", "microsoft/Phi-3.5-mini-instruct",
        "Qwen/Qwen2.5-14B-Instruct", "Qwen/Qwen2.5-32B-Instruct", "Qwen/Qwen2.5-72B-Instruct",
        "mlx-community/Qwen2.5-14B-Instruct-4bit", "mlx-community/Qwen2.5-32B-Instruct-4bit",
        "mlx-community/Qwen2.5-72B-Instruct-4bit", "meta-llama/Llama-3.3-70B-Instruct",
        "mlx-community/Llama-3.3-70B-Instruct-4bit",
    ):
        assert catalog.find(repo_id) is not None, repo_id
    assert catalog.find("qwen/qwen3-8b") is catalog.find("Qwen/Qwen3-8B")  # the hub ignores case
    assert catalog.find("nobody/nothing") is None
    for gated in ("meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.1-8B-Instruct", "google/gemma-2-2b-it",
                  "google/gemma-3-270m-it", "google/gemma-3-1b-it", "meta-llama/Llama-3.3-70B-Instruct"):
        assert catalog.find(gated).gated  # type: ignore[union-attr]
    for open_repo in ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-72B-Instruct", "microsoft/Phi-4-mini-instruct",
                      "HuggingFaceTB/SmolLM2-135M-Instruct"):
        assert not catalog.find(open_repo).gated  # type: ignore[union-attr]
    assert catalog.find("google/gemma-3-1b-it").architecture == "gemma3_text"  # type: ignore[union-attr]
    assert catalog.find("microsoft/Phi-4-mini-instruct").architecture == "phi3"  # type: ignore[union-attr]
    assert catalog.find("Qwen/Qwen2.5-72B-Instruct").licence == "Qwen License"  # type: ignore[union-attr]
    assert catalog.find("Qwen/Qwen2.5-32B-Instruct").licence == "Apache-2.0"  # type: ignore[union-attr]
    assert sum(1 for m in CATALOG if m.quantization_bits == 4) >= 5


def test_catalog_sizes_match_parameter_counts() -> None:
    # bf16 weights are 2 bytes a parameter (a little more with an untied output layer); MLX 4-bit with group
    # size 64 is about 4.5 bits. A size or parameter count typed wrong by a factor falls outside these bands.
    for model in CATALOG:
        per_param = model.download_gb / model.params_b
        low, high = (0.45, 0.75) if model.quantization_bits == 4 else (1.8, 2.6)
        assert low <= per_param <= high, f"{model.repo_id}: {per_param:.2f} GB per billion parameters"


# --- local folders -----------------------------------------------------------------------------------------


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def _edit_json(file: Path, **changes: object) -> None:
    data = json.loads(file.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    file.write_text(json.dumps(data))


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2"])
def test_describe_local_reads_a_hugging_face_folder(fixture: str, request: pytest.FixtureRequest) -> None:
    folder: Path = request.getfixturevalue(fixture)
    config = json.loads((folder / "config.json").read_text())
    model = describe_local(folder)
    assert model.architecture == config["model_type"] == fixture.removeprefix("tiny_")
    assert model.hidden_size == config["hidden_size"] == 256
    assert model.num_layers == config["num_hidden_layers"] == 4
    assert model.vocab_size == config["vocab_size"]
    assert model.context_length == config["max_position_embeddings"]
    assert model.dtype == "float32"
    assert model.quantization is None
    assert model.weight_files == ("model.safetensors",)
    assert model.weight_bytes == (folder / "model.safetensors").stat().st_size
    assert model.has_chat_template
    assert model.streamed_supported


def test_describe_local_sharded_and_quantised(tiny_llama: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    folder = _copy(tiny_llama, tmp_path / "sharded")
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, keys in shards.items():
        # float16 on disk while config.json says float32: the bytes on disk win.
        save_file({k: tensors[k].astype("float16") for k in keys}, str(folder / shard))
        weight_map.update(dict.fromkeys(keys, shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _edit_json(folder / "config.json", torch_dtype="float32", quantization={"group_size": 64, "bits": 4})

    model = describe_local(folder)
    assert model.weight_files == tuple(sorted(shards))
    assert model.weight_bytes == sum((folder / s).stat().st_size for s in shards)
    assert model.dtype == "float16"
    assert model.quantization == Quantization(bits=4, group_size=64, method="mlx")
    assert model.streamed_supported

    _edit_json(folder / "config.json", quantization=None,
               quantization_config={"quant_method": "gptq", "bits": 4, "group_size": 128})
    gptq = describe_local(folder)
    assert gptq.quantization == Quantization(bits=4, group_size=128, method="gptq")
    assert not gptq.streamed_supported, "MLX cannot load GPTQ weights"

    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelError, match=r"model-00002-of-00002\.safetensors.*missing"):
        describe_local(folder)


def test_describe_local_finds_the_chat_template_file(tiny_llama: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_llama, tmp_path / "jinja")
    _edit_json(folder / "tokenizer_config.json", chat_template=None)
    assert not describe_local(folder).has_chat_template
    (folder / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert describe_local(folder).has_chat_template


def test_describe_local_unsupported_architecture(tiny_llama: Path, tmp_path: Path) -> None:
    assert describe_local(tiny_llama).problem is None
    folder = _copy(tiny_llama, tmp_path / "falcon")
    _edit_json(folder / "config.json", model_type="falcon")
    model = describe_local(folder)  # described all the same: the caller refuses it with the one message
    assert not model.streamed_supported
    problem = model.problem or ""
    assert str(folder / "config.json") in problem and "'falcon'" in problem
    for family in SUPPORTED_ARCHITECTURES:
        assert family in problem, family


def make_multimodal(folder: Path) -> Path:
    """A Gemma 3 4B-style vision-language config.json over a tiny model's files."""
    config = json.loads((folder / "config.json").read_text())
    text = {k: config[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size") if k in config}
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
        "text_config": {"model_type": "gemma3_text", **text},
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "image_size": 896},
        "mm_tokens_per_image": 256,
    }))
    return folder


def test_describe_local_multimodal_checkpoint(tiny_llama: Path, tmp_path: Path) -> None:
    model = describe_local(make_multimodal(_copy(tiny_llama, tmp_path / "gemma-3-4b-it")))
    assert model.architecture == "gemma3" and model.num_layers == 4  # the text model's sizes, from text_config
    problem = model.problem or ""
    assert "multimodal" in problem and "vision_config" in problem and "Gemma3ForConditionalGeneration" in problem
    assert "270M or 1B" in problem and not model.streamed_supported


def _no_config(f: Path) -> None:
    (f / "config.json").unlink()


def _bad_json(f: Path) -> None:
    (f / "config.json").write_text('{"model_type": "llama",')


def _json_list(f: Path) -> None:
    (f / "config.json").write_text("[1, 2]")


def _no_model_type(f: Path) -> None:
    _edit_json(f / "config.json", model_type=None)


def _no_weights(f: Path) -> None:
    (f / "model.safetensors").unlink()


def _bin_only(f: Path) -> None:
    (f / "model.safetensors").rename(f / "pytorch_model.bin")


def _truncated_weights(f: Path) -> None:
    data = (f / "model.safetensors").read_bytes()
    (f / "model.safetensors").write_bytes(data[:6])


def _header_too_long(f: Path) -> None:
    data = (f / "model.safetensors").read_bytes()
    (f / "model.safetensors").write_bytes((len(data) * 2).to_bytes(8, "little") + data[8:100])


def _bad_tokenizer_config(f: Path) -> None:
    (f / "tokenizer_config.json").write_text("not json")


@pytest.mark.parametrize(("breakage", "file_named", "words"), [
    (_no_config, "config.json", "no config.json"),
    (_bad_json, "config.json", "not valid JSON"),
    (_json_list, "config.json", "JSON object"),
    (_no_model_type, "config.json", "model_type"),
    (_no_weights, "safetensors", "no weights"),
    (_bin_only, ".bin", "safetensors"),
    (_truncated_weights, "model.safetensors", "not a valid safetensors"),
    (_header_too_long, "model.safetensors", "incomplete download"),
    (_bad_tokenizer_config, "tokenizer_config.json", "not valid JSON"),
])
def test_describe_local_rejects_broken_folders(
    tiny_llama: Path, tmp_path: Path, breakage: object, file_named: str, words: str
) -> None:
    folder = _copy(tiny_llama, tmp_path / "broken")
    breakage(folder)  # type: ignore[operator]
    with pytest.raises(ModelError) as caught:
        describe_local(folder)
    message = str(caught.value)
    assert str(folder) in message and file_named in message and words in message, message
    assert isinstance(caught.value, ValueError)


def test_describe_local_of_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        describe_local(tmp_path / "nothing-here")


# --- downloads ---------------------------------------------------------------------------------------------


def test_download_fetches_only_what_training_needs(fake_hub: FakeHub, hf_home: Path, tiny_llama: Path) -> None:
    events: list[ProgressEvent] = []
    path = hub.download(REPO, progress=Progress(events.append, min_interval=0))

    commit = fake_hub.repos[REPO].commit
    assert path == hf_home / "hub" / "models--slowtune-test--tiny-llama" / "snapshots" / commit
    assert (path.parents[1] / "refs" / "main").read_text() == commit
    expected = _wanted_files(tiny_llama) | EXTRA_WANTED
    assert {p.name for p in path.iterdir()} == set(expected)
    for name, data in expected.items():
        assert (path / name).read_bytes() == data, name
    # The unwanted files were never asked for, not even with a HEAD request.
    asked = {r.path.rsplit("/resolve/", 1)[-1].split("/", 1)[-1] for r in fake_hub.requests(server="hub")
             if "/resolve/" in r.path}
    assert asked == set(expected)
    assert fake_hub.downloaded_paths(REPO) == {name for name, data in expected.items() if data}

    total = sum(len(d) for d in expected.values())
    assert all(e.stage == "download" for e in events)
    sized = [e for e in events if e.total is not None]
    assert sized[-1].done == sized[-1].total == total
    assert [e.done for e in sized] == sorted(e.done for e in sized)
    assert {e.metrics.get("file") for e in events} >= {"model.safetensors", "config.json"}
    # The result is what training reads.
    assert describe_local(path).weight_bytes == len(expected["model.safetensors"])

    # A second download finds everything in place and moves no bytes.
    sent_before = dict(fake_hub.bytes_sent)
    assert hub.download(REPO) == path
    assert fake_hub.bytes_sent == sent_before


def test_a_dropped_connection_resumes_with_range(fake_hub: FakeHub, hf_home: Path, tiny_llama: Path) -> None:
    fake_hub.drop_once(REPO, "model.safetensors", after_fraction=0.6)
    path = hub.download(REPO)

    source = (tiny_llama / "model.safetensors").read_bytes()
    assert (path / "model.safetensors").read_bytes() == source
    gets = fake_hub.requests(server="cdn", method="GET")
    assert len(gets) == 2
    assert gets[0].range is None
    start = int(re.fullmatch(r"bytes=(\d+)-", gets[1].range or "").group(1))  # type: ignore[union-attr]
    assert 0 < start < len(source), "the retry must continue from the bytes already on disk"
    # Only the cut-off part and the rest were sent: the file was not sent twice.
    assert fake_hub.bytes_sent[(REPO, "model.safetensors")] < 1.7 * len(source)


def test_a_connection_that_keeps_failing_stops_with_a_resumable_error(
    fake_hub: FakeHub, hf_home: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub, "_MAX_RETRIES", 1)
    monkeypatch.setattr(hub, "_sleep", lambda seconds, progress: None)
    # Retries go on while bytes keep arriving; two cuts in a row before the first megabyte are too many here.
    fake_hub.drop_once(REPO, "model.safetensors", after_fraction=0.01, times=2)
    with pytest.raises(HubError) as caught:
        hub.download(REPO)
    assert caught.value.kind == "network" and "resumes where it stopped" in str(caught.value)
    assert len(fake_hub.requests(server="cdn", method="GET")) == 2

    path = hub.download(REPO)  # the connection is good again
    assert (path / "model.safetensors").read_bytes() == (tiny_llama / "model.safetensors").read_bytes()


def test_a_full_disk_during_the_download(fake_hub: FakeHub, hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hub, "_fetch", no_space)
    with pytest.raises(HubError) as caught:
        hub.download(REPO)
    assert caught.value.kind == "disk_full" and "disk is full" in str(caught.value)


def test_cancel_keeps_the_partial_file_and_the_next_download_resumes(
    fake_hub: FakeHub, hf_home: Path, tiny_llama: Path
) -> None:
    with pytest.raises(Cancelled):
        hub.download(REPO, progress=_cancelled_once_weights_arrive())

    source = (tiny_llama / "model.safetensors").read_bytes()
    partials = list(_blobs(hf_home).glob("*.incomplete"))
    assert len(partials) == 1
    kept = partials[0].stat().st_size
    assert 0 < kept < len(source)
    assert partials[0].read_bytes() == source[:kept]
    with pytest.raises(HubError) as caught:
        hub.resolve_model(REPO)  # not usable yet
    assert caught.value.kind == "not_downloaded"

    path = hub.download(REPO)
    assert (path / "model.safetensors").read_bytes() == source
    assert not list(_blobs(hf_home).glob("*.incomplete"))
    gets = fake_hub.requests(server="cdn", method="GET")
    assert gets[-1].range == f"bytes={kept}-"
    # Files completed before the cancel were not fetched again.
    assert len(fake_hub.requests(server="hub", method="GET", path_endswith="/config.json")) == 1


def test_a_server_that_ignores_range_gets_the_file_rewritten(
    fake_hub: FakeHub, hf_home: Path, tiny_llama: Path
) -> None:
    with pytest.raises(Cancelled):
        hub.download(REPO, progress=_cancelled_once_weights_arrive())
    fake_hub.honour_range = False
    events: list[ProgressEvent] = []
    path = hub.download(REPO, progress=Progress(events.append, min_interval=0))
    source = (tiny_llama / "model.safetensors").read_bytes()
    assert (path / "model.safetensors").read_bytes() == source  # not the partial bytes twice
    assert fake_hub.requests(server="cdn", method="GET")[-1].range is not None  # it was asked, and ignored
    final = [e for e in events if e.total is not None][-1]
    assert final.done == final.total  # progress did not count the kept bytes twice either


def test_gated_model_without_token_says_how_to_get_access(fake_hub: FakeHub, hf_home: Path) -> None:
    with pytest.raises(HubError) as caught:
        hub.download(GATED)
    error = caught.value
    message = str(error)
    assert error.kind == "gated" and error.repo_id == GATED
    assert f"https://huggingface.co/{GATED}" in message
    assert "licence" in message and "Providers" in message and "keychain" in message
    assert not [p for p in iter_cache_files(hf_home) if "blobs" in p.parts]
    assert fake_hub.downloaded_paths(GATED) == set()


def test_stored_token_is_sent_to_the_hub_but_not_to_the_cdn(fake_hub: FakeHub, hf_home: Path) -> None:
    secrets.set_secret(secrets.HUGGINGFACE, GOOD_TOKEN)
    path = hub.download(GATED)
    assert (path / "model.safetensors").is_file()
    resolves = [r for r in fake_hub.requests(server="hub") if "/resolve/" in r.path]
    assert resolves and all(r.authorization == f"Bearer {GOOD_TOKEN}" for r in resolves)
    cdn = fake_hub.requests(server="cdn")
    assert cdn and all(r.authorization is None for r in cdn), "the token must not leave the hub"


@pytest.mark.parametrize("how", ["keychain", "argument"])
def test_a_refused_token_never_appears_in_the_error(fake_hub: FakeHub, hf_home: Path, how: str) -> None:
    if how == "keychain":
        secrets.set_secret(secrets.HUGGINGFACE, BAD_TOKEN)
        call = {}
    else:
        call = {"token": BAD_TOKEN}
    with pytest.raises(HubError) as caught:
        hub.download(GATED, **call)
    assert caught.value.kind == "gated"
    assert "account of your token has no access" in str(caught.value)
    assert any(r.authorization == f"Bearer {BAD_TOKEN}" for r in fake_hub.requests(server="hub"))
    assert BAD_TOKEN not in _all_text(caught.value)


def test_missing_repo(fake_hub: FakeHub, hf_home: Path) -> None:
    with pytest.raises(HubError) as caught:
        hub.download("slowtune-test/no-such-model")
    assert caught.value.kind == "not_found"
    assert "slowtune-test/no-such-model was not found" in str(caught.value)


def test_missing_revision(fake_hub: FakeHub, hf_home: Path) -> None:
    with pytest.raises(HubError) as caught:
        hub.download(REPO, revision="v9")
    assert caught.value.kind == "revision_not_found" and "'v9'" in str(caught.value)


def test_bad_repo_names_are_refused_before_any_request(fake_hub: FakeHub, hf_home: Path) -> None:
    for name in ("no-owner", "a/b/c", "owner/../x", "owner/na--me", ""):
        with pytest.raises(HubError) as caught:
            hub.download(name)
        assert caught.value.kind == "bad_name"
    assert fake_hub.requests() == []


def test_not_enough_disk_space(fake_hub: FakeHub, hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "_free_bytes", lambda folder: 1000)
    with pytest.raises(HubError) as caught:
        hub.download(REPO)
    assert caught.value.kind == "disk_full"
    assert "Not enough free disk space" in str(caught.value) and "MB" in str(caught.value)
    assert fake_hub.bytes_sent == {}


def test_offline_with_an_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "hf-home"
    _go_offline(monkeypatch, home, hf_hub_offline=False)
    with pytest.raises(HubError) as caught:
        hub.download(REPO)
    assert caught.value.kind == "offline"
    assert str(caught.value).startswith(f"You are offline and {REPO} is not downloaded yet")
    with pytest.raises(HubError) as caught:
        hub.resolve_model(REPO)
    assert caught.value.kind == "not_downloaded"

    _go_offline(monkeypatch, home, hf_hub_offline=True)
    with pytest.raises(HubError) as caught:
        hub.download(REPO)
    assert caught.value.kind == "offline"


@pytest.mark.parametrize("hf_hub_offline", [False, True])
def test_offline_with_the_model_downloaded(
    fake_hub: FakeHub, hf_home: Path, monkeypatch: pytest.MonkeyPatch, hf_hub_offline: bool
) -> None:
    path = hub.download(REPO)
    _go_offline(monkeypatch, hf_home, hf_hub_offline=hf_hub_offline)
    asked_before = len(fake_hub.requests())
    assert hub.resolve_model(REPO) == path
    assert hub.find_cached(REPO) == path
    assert hub.download(REPO) == path  # nothing to fetch, and the hub cannot be asked
    assert len(fake_hub.requests()) == asked_before


def test_resolve_model_takes_local_folders(tiny_llama: Path, tmp_path: Path) -> None:
    assert hub.resolve_model(str(tiny_llama)) == tiny_llama.resolve()
    with pytest.raises(HubError) as caught:
        hub.resolve_model(str(tiny_llama / "config.json"))
    assert caught.value.kind == "bad_name"
    with pytest.raises(HubError) as caught:
        hub.resolve_model(str(tmp_path / "no" / "such" / "folder"))
    assert caught.value.kind == "bad_name" and "no folder" in str(caught.value)


def test_download_in_a_subprocess_uses_the_environment_only(fake_hub: FakeHub, tmp_path: Path) -> None:
    # The most faithful set-up: huggingface_hub reads HF_ENDPOINT and HF_HOME at import time, as for a user.
    home = tmp_path / "hf-subprocess"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(hub_environment(fake_hub.endpoint, home))
    code = f"from slowtune.models.hub import download; print(download({REPO!r}))"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.is_relative_to(home / "hub")
    assert (path / "model.safetensors").is_file()
    assert not [p for p in iter_cache_files(home) if p.name.endswith((".bin", ".gguf", ".pth", ".onnx"))]


def test_hub_modules_import_no_heavy_library() -> None:
    code = (
        "import sys, slowtune.models.hub, slowtune.models.catalog\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'huggingface_hub', 'httpx2', 'httpx', 'safetensors', 'mlx', 'numpy', 'tqdm'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
