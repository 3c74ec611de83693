from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from slowtune import __version__, cli


def _slowtune(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slowtune", *args], capture_output=True, text=True,
                          env=env or os.environ.copy(), timeout=300)


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ["chat", "eval", "ingest", "generate", "provider", "dataset", "train", "export", "bench", "doctor"]:
        assert f"    {command} " in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"slowtune {__version__}"


def test_unknown_option_of_a_real_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["doctor", "--bogus"])
    assert exc.value.code == 2
    assert "--bogus" in capsys.readouterr().err


def test_doctor_reports_the_environment(slowtune_home) -> None:
    result = _slowtune("doctor", "--json", "--disk-test-mb", "16")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["mlx"]["ok"] and report["mlx"]["check"] == "ok"
    assert report["mlx"]["device"] in ("CPU", "Metal GPU")
    assert report["llama_cpp"]["ok"] and report["llama_cpp"]["backend"] in ("CPU", "Metal", "GPU")
    assert report["memory"]["total_gb"] > 0
    assert report["disk"]["read_gb_per_s"] > 0 and report["disk"]["read_mb"] == 16
    assert report["keychain"]["backend"].startswith("keyrings.alt")
    assert report["folders"]["data"] == str(slowtune_home / "data")
    # No scratch file is left behind by the disk test.
    assert not list((slowtune_home / "data").glob(".slowtune-disk-speed-*"))

    text = _slowtune("doctor", "--no-disk-test")
    assert text.returncode == 0
    for heading in ("MLX", "llama.cpp", "Memory", "Disk", "Keychain", "Folders"):
        assert heading in text.stdout


def test_no_arguments_without_a_display_explains_instead_of_crashing() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    if not sys.platform.startswith("linux"):
        pytest.skip("only Linux can lack a display")
    result = _slowtune(env=env)
    assert result.returncode == 1
    assert "no display" in result.stderr and "Traceback" not in result.stderr
