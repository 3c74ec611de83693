"""A tiny base model and a project with a small accepted dataset: enough to train, export and chat in seconds.

Used by ``slowtune bench gui``, the screenshots and the tests, so each of them trains on the same kind of input
without calling a teacher.
"""

from __future__ import annotations

from pathlib import Path

FACTS = [
    ("When do the garden gates open?", "The gates open at 7:00 every day."),
    ("Who holds the garden keys?", "The two duty volunteers listed on the board hold the keys."),
    ("How big is a plot?", "Each plot is 3 by 4 metres."),
    ("When should plots be watered?", "Water in the early morning or after 18:00."),
    ("Where does green waste go?", "Green waste goes in the left compost bay."),
    ("Who looks after broken tools?", "Report broken tools to the tools volunteer, Amira."),
    ("When is the seed swap?", "The seed swap is on Saturday 22 March, 10:00 to 13:00."),
    ("How much was agreed for the compost bin?", "A budget of up to 180 euros was agreed."),
]


def tiny_model(dest: Path, arch: str = "qwen2") -> Path:
    """A small chat model folder (seeded random weights, a real BPE tokenizer and chat template)."""
    from slowtune.testing import tiny_models

    if (dest / "config.json").exists():
        return dest
    return tiny_models.build_tiny_model(dest, arch, hidden_size=64, num_layers=2, num_heads=4,  # type: ignore[arg-type]
                                        num_kv_heads=2, intermediate_size=128)


def add_tiny_dataset(project_root: Path, *, valid: int = 2) -> int:
    """Accepted chat rows (train, and ``valid`` of them for validation) written as imported rows."""
    from slowtune.dataset import DatasetRow, add_rows
    from slowtune.store import Project

    rows = [DatasetRow([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                       split="valid" if i < valid else "train", source="import")
            for i, (q, a) in enumerate(FACTS)]
    with Project.open(project_root) as project:
        added, _ = add_rows(project, rows)
    return added


def tiny_training_inputs(work: Path) -> tuple[Path, Path]:
    """(model folder, project folder) under ``work``, made once."""
    from slowtune.store import DB_NAME, Project

    work.mkdir(parents=True, exist_ok=True)
    model = tiny_model(work / "base-model")
    root = work / "project"
    if not (root / DB_NAME).exists():
        with Project.create(root):
            pass
        add_tiny_dataset(root)
    return model, root
