"""What the screenshot tour (``python -m slowtune.bench.screenshots OUT``) shows and how a step of it fails, apart
from the Qt that drives it: the demo documents it adds on the Library page, and :class:`ScreenshotError`.

The documents are about the same community garden as :mod:`slowtune.testing.tiny_project`'s facts.
"""

from __future__ import annotations

from pathlib import Path

HANDBOOK = """# Volunteer handbook

Welcome to the Harbour Street community garden. This handbook explains how the garden runs, who to ask, and what
we expect from everyone who holds a plot.

## Opening hours

The gates open at 7:00 and close at dusk, every day except the first Monday of the month, when the water system is
serviced. Keys are held by the two duty volunteers listed on the board by the shed.

## Plots

Each plot is 3 by 4 metres. A plot left unworked for six weeks in the growing season is offered to the next person
on the waiting list, after one reminder by email.

### Watering

Water in the early morning or after 18:00. The hoses are shared: coil them after use and close the tap at the wall.

### Compost

Green waste goes in the left bay, woody stems in the right. Never add cooked food, meat or diseased plants.

## Tools

The shed holds spades, forks, rakes and two wheelbarrows. Sign tools out in the book and clean them before you put
them back. Report anything broken to the tools volunteer, Amira.
"""

MINUTES = """Committee minutes, 4 March

Present: Jonas, Amira, Pete, Lin.

1. The new water meter was fitted on 28 February. Usage is down 12% on last March.
2. Seed swap on Saturday 22 March, 10:00 to 13:00, in the church hall.
3. Pete will price a second compost bin. Budget up to 180 euros agreed.
4. Next meeting: 1 April at 19:30.
"""

SEEDS = """<html><head><title>Seed saving guide</title></head><body>
<h1>Seed saving guide</h1>
<p>Save seed only from open-pollinated varieties; hybrids (F1) do not come true.</p>
<h2>Tomatoes</h2>
<p>Scoop the seeds into a jar with a little water and leave them for three days, until a mould forms. Rinse, then dry
on a plate for a week.</p>
<h2>Beans</h2>
<p>Leave the pods on the plant until they rattle. Shell them and store the beans in a paper bag somewhere cool.</p>
</body></html>
"""


def write_demo_documents(folder: Path) -> list[Path]:
    """A small folder like a user's: three readable documents, an empty note and a broken PDF."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "handbook.md").write_text(HANDBOOK, encoding="utf-8")
    (folder / "minutes-march.txt").write_text(MINUTES, encoding="utf-8")
    (folder / "seed-saving.html").write_text(SEEDS, encoding="utf-8")
    (folder / "todo.txt").write_text("", encoding="utf-8")
    (folder / "scan-of-lease.pdf").write_bytes(b"%PDF-1.4\n% truncated while copying from the scanner\n")
    return sorted(folder.iterdir())


class ScreenshotError(RuntimeError):
    """A step of the tour did not reach the state its picture should show."""
