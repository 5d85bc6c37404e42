"""The README stays true: its two first-run commands (CI runs exactly the test one), and its layout table."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("```bash") + 1
    return lines[start : lines.index("```", start)]


def test_readme_opens_with_exactly_two_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("gtpo train")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in ci_lines


def test_the_layout_table_names_every_module_and_package():
    package = ROOT / "src" / "gtpo"
    table = README.read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`([\w]+(?:\.py|/))`", table))
    present = {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
    present |= {f"{p.name}/" for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert present <= listed, f"add to the README's layout table: {sorted(present - listed)}"
    assert listed <= present | {"engine/"}, f"no such module: {sorted(listed - present - {'engine/'})}"
