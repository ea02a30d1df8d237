"""Every shell command README shows runs as written from a fresh clone: for each ``slhmc ...``
line of its ```sh / ```bash blocks, the arguments parse (slhmc.cli's own parser), the files and
folders it reads exist in the repository or are written by an earlier README command, no two
commands write the same output folder (the second would be refused), and a server bound beyond
loopback has keys. ``python SCRIPT.py`` lines name scripts that exist. Running the commands is
too slow for the suite; CI runs the first one."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from slhmc.cli import build_parser
from slhmc.security import is_local

from .conftest import ROOT

SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
OPERATORS = {"&&", "||", ";", "|", "&"}
# per subcommand: the parsed arguments that are read (must exist) and written (made by the command)
READS = {"run": ("config",), "server": ("config", "keys"), "worker": ("config", "keys"), "analyze": ("dir", "compare"),
         "md": ("model", "structure"), "train": ("config", "dataset"), "keys": (), "codes": ()}
WRITES = {"run": ("out",), "server": ("out",), "md": ("out",), "train": ("out",), "keys": ("dir",)}


@dataclass
class Command:
    line: int  # 1-based line of the README where the command starts
    argv: list[str]


def shell_commands(text: str) -> list[Command]:
    """The simple commands of the README's shell blocks, in order: continuation lines joined,
    comments dropped, ``a && b; c`` split into its commands."""
    commands: list[Command] = []
    language = None
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```\s*([\w+-]*)", line)
        if fence:
            language = None if language is not None else (fence.group(1) or "").lower()
            continue
        if language not in SHELL_LANGUAGES:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full, pending = pending + line, ""
        lexer = shlex.shlex(full, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        argv: list[str] = []
        for token in [*lexer, ";"]:
            if token in OPERATORS or set(token) <= set("&|;"):
                if argv:
                    commands.append(Command(start, argv))
                argv = []
            else:
                argv.append(token)
    return commands


def slhmc_argv(argv: list[str]) -> list[str] | None:
    """The arguments after ``slhmc`` (also ``.venv/bin/slhmc``, ``python -m slhmc``, ``VAR=x slhmc``)."""
    while argv and re.match(r"^[A-Za-z_]\w*=", argv[0]):
        argv = argv[1:]
    if argv and Path(argv[0]).name == "slhmc":
        return argv[1:]
    if len(argv) >= 3 and Path(argv[0]).name.startswith("python") and argv[1:3] == ["-m", "slhmc"]:
        return argv[3:]
    return None


def python_script(argv: list[str]) -> str | None:
    """The script of ``python SCRIPT.py ...`` (any python executable)."""
    if len(argv) >= 2 and Path(argv[0]).name.startswith("python") and argv[1].endswith(".py"):
        return argv[1]
    return None


def _paths(value: object) -> list[str]:
    if value is None or isinstance(value, bool):
        return []
    values = value if isinstance(value, list) else [value]
    return [re.sub(r"@\d+$", "", str(v)) for v in values]  # analyze --compare FILE@SKIP


def _normal(path: str) -> Path:
    return Path(path.rstrip("/")) if path.rstrip("/") else Path(path)


def _made_earlier(path: str, produced: list[Path]) -> bool:
    p = _normal(path)
    return any(p == made or made in p.parents for made in produced)


def check_readme(text: str, root: Path = ROOT) -> list[str]:
    """What would fail if README's commands were run as written in a fresh clone at ``root``."""
    problems: list[str] = []
    produced: list[Path] = []
    written_by: dict[Path, int] = {}
    for cmd in shell_commands(text):
        shown = shlex.join(cmd.argv)
        script = python_script(cmd.argv)
        if script is not None and not (root / script).is_file():
            problems.append(f"README line {cmd.line}: `{shown}`: {script} is not in the repository")
        if script is not None and "--out" in cmd.argv[:-1]:  # a script's --out is made for later commands
            produced.append(_normal(cmd.argv[cmd.argv.index("--out") + 1]))
        argv = slhmc_argv(cmd.argv)
        if argv is None:
            continue
        parser = build_parser()
        try:
            with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
                args = parser.parse_args(argv)
        except SystemExit:
            message = err.getvalue().strip().splitlines()[-1:] or ["--help/--version exits"]
            problems.append(f"README line {cmd.line}: `{shown}` does not parse: {message[0]}")
            continue
        assert isinstance(args, argparse.Namespace)
        for dest in READS.get(args.command, ()):
            for path in _paths(getattr(args, dest, None)):
                if not (root / path).exists() and not _made_earlier(path, produced):
                    problems.append(f"README line {cmd.line}: `{shown}`: {path} ({dest}) is not in the repository "
                                    "and no earlier README command writes it")
        bind = getattr(args, "bind", None) if args.command in ("run", "server") else None
        if bind and not is_local(bind) and not getattr(args, "keys", None):
            problems.append(f"README line {cmd.line}: `{shown}`: binding {bind} needs --keys (the server refuses a "
                            "non-loopback address without them)")
        resume = getattr(args, "resume", False)
        for dest in WRITES.get(args.command, ()):
            for path in _paths(getattr(args, dest, None)):
                target = _normal(path)
                if args.command in ("run", "server", "md") and not resume and target in written_by:
                    problems.append(f"README line {cmd.line}: `{shown}`: {path} was written by the command on line "
                                    f"{written_by[target]} already (a second run there is refused; use another "
                                    "folder or --resume)")
                written_by.setdefault(target, cmd.line)
                produced.append(target)
    return problems


def test_readme_commands_run_as_written():
    text = (ROOT / "README.md").read_text()
    commands = [c for c in shell_commands(text) if slhmc_argv(c.argv) is not None]
    assert len(commands) >= 5  # the checker still finds README's commands
    problems = check_readme(text)
    assert not problems, "\n".join(problems)


SAMPLE = """
Intro `slhmc run CONFIG --out DIR` (a table placeholder, not a command).

```sh
python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/slhmc run examples/cu32_emt/config.toml --out runs/a
.venv/bin/slhmc analyze runs/a   # made by the line above
slhmc md runs/a --structure examples/cu32_emt/cu108.xyz --temperature 300 \\
    --steps 10 --out runs/md
```

```python
slhmc_is_python = "not checked"
```

```bash
slhmc md runs/a --structure cu108.xyz --temperature 300 --steps 10 --out runs/md2
slhmc analyze runs/nowhere
slhmc md runs/a --structure examples/cu32_emt/cu108.xyz --temperature hot --steps 10 --out runs/md3
slhmc run examples/cu32_emt/config.toml --out runs/a
slhmc run examples/cu32_emt/config.toml --out runs/a --resume
slhmc worker dft --connect tcp://host:5555 [--config local.toml]
python benchmarks/nope.py runs/a
slhmc keys keys/
slhmc server examples/cu32_emt/config.toml --out runs/b --keys keys/ --bind tcp://0.0.0.0:5555
slhmc server examples/cu32_emt/config.toml --out runs/c --bind tcp://0.0.0.0:5555
```
"""


def test_the_checker_finds_what_would_fail():
    commands = shell_commands(SAMPLE)
    assert [c.line for c in commands][:5] == [5, 5, 5, 6, 7]  # one line, three commands; a continued line
    assert commands[4].argv[-2:] == ["--out", "runs/md"]
    problems = check_readme(SAMPLE)
    expected = {16: "cu108.xyz (structure) is not in the repository", 17: "runs/nowhere (dir)",
                18: "does not parse", 19: "was written by the command on line 5", 21: "does not parse",
                22: "benchmarks/nope.py is not in the repository", 25: "needs --keys"}
    assert len(problems) == len(expected), "\n".join(problems)
    for problem, (line, what) in zip(problems, expected.items(), strict=True):
        assert problem.startswith(f"README line {line}:") and what in problem, problem


@pytest.mark.parametrize("argv, expected", [
    (["slhmc", "codes"], ["codes"]),
    ([".venv/bin/slhmc", "analyze", "x"], ["analyze", "x"]),
    (["OMP_NUM_THREADS=1", "slhmc", "codes"], ["codes"]),
    (["python", "-m", "slhmc", "codes"], ["codes"]),
    (["pip", "install", "slhmc"], None),
])
def test_slhmc_argv(argv, expected):
    assert slhmc_argv(argv) == expected
