from pathlib import Path

from slowtune import system


def test_disk_read_speed_is_measured_and_cleaned_up(tmp_path: Path) -> None:
    speed = system.measure_read_speed(tmp_path, size_bytes=8 * 2**20, block=2**20)
    assert speed.bytes_read == 8 * 2**20
    assert speed.bytes_per_second > 0 and speed.seconds > 0
    assert speed.method  # says how the page cache was kept out, or that it was not
    assert list(tmp_path.iterdir()) == []


def test_memory_is_plausible() -> None:
    mem = system.memory()
    assert 0 < mem.available_bytes <= mem.total_bytes
