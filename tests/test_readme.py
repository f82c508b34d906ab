"""README's set-up commands are the ones CI runs: the install line and the test command agree."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_installs_and_tests_exactly_as_readme_says() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    first, second = _bash_blocks(readme)[:2]
    install = re.search(r"pip install [^&\n]+", first).group(0).strip()
    assert install in ci
    tests = second.strip().split("&&", 1)[1].strip()  # after activating the environment
    assert tests in ci
    assert "constraints.txt" in install and (ROOT / "constraints.txt").read_text().count("torch==") == 1
