"""The documentation runs as written (issue 26).

Every shell command in README.md and docs/*.md is parsed against its tool:
the tool's argparse parser (taken from the module without running the tool)
accepts the command's arguments, ``--help`` works, every preset named exists
and loads, every ``make`` target exists. README.md stays short, and every
result it or a docs page quotes links to a committed file under benchmarks/.
No model is loaded: the parsers are captured when the tool calls
``parse_args``.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

FENCE = re.compile(r"^```(?:bash|sh|console|shell)[ \t]*\n(.*?)^```", re.M | re.S)
RECIPES = {"train_teacher.py": "train_teacher", "train_student.py": "train_student", "quantize.py": "quantize"}
SEPARATORS = {"&&", "||", "|", ";"}
GLOBAL_OPTIONS = {"--debug"}  # kd.errors strips it before the parser sees the command line
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Torchrun's own options that take a value; the tool's command line starts after them.
TORCHRUN_VALUE_OPTIONS = {"--nproc_per_node", "--nproc-per-node", "--nnodes", "--node_rank", "--node-rank",
                          "--master_addr", "--master-addr", "--master_port", "--master-port", "--rdzv_backend",
                          "--rdzv-backend", "--rdzv_endpoint", "--rdzv-endpoint"}


def shell_blocks(text: str) -> list[str]:
    """The bodies of the fenced bash / sh / console / shell blocks of ``text``."""
    return [m.group(1) for m in FENCE.finditer(text)]


def commands_of(block: str) -> list[list[str]]:
    """The commands of one shell block, as token lists: continuation lines joined, comments
    and ``$`` prompts dropped, ``&&`` / ``|`` / ``;`` chains split, leading ``VAR=value`` removed."""
    joined = re.sub(r"\\\n", " ", block)
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        tokens = shlex.split(line, comments=True)
        current: list[str] = []
        for token in [*tokens, ";"]:
            if token in SEPARATORS:
                while current and ENV_ASSIGNMENT.match(current[0]):
                    current.pop(0)
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
    return commands


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        for block in shell_blocks(doc.read_text(encoding="utf-8")):
            for command in commands_of(block):
                found.append((doc.relative_to(ROOT).as_posix(), command))
    return found


def tool_and_args(command: list[str]) -> tuple[str, list[str]]:
    """``(tool, args)``: a recipe module, ``kd.X``, ``make``, a script path; or ``("?", command)``."""
    head, rest = command[0], command[1:]
    if head == "torchrun":
        while rest and rest[0].startswith("--") and rest[0] != "-m":
            option = rest.pop(0)
            if option in TORCHRUN_VALUE_OPTIONS and "=" not in option:
                rest.pop(0)
        head, rest = "python", rest
    if head in ("python", "python3"):
        if rest[:1] == ["-m"] and len(rest) > 1:
            return rest[1], rest[2:]
        if rest and rest[0] in RECIPES:
            return RECIPES[rest[0]], rest[1:]
        if rest and rest[0].endswith(".py"):
            return rest[0], rest[1:]
        return "?", command
    if head == "make":
        return "make", rest
    if head.endswith(".sh"):
        return head, rest
    return "?", command


class _Captured(BaseException):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


@lru_cache(maxsize=None)
def parser_of(module_name: str) -> argparse.ArgumentParser:
    """The tool's parser, without running the tool: ``build_parser()`` where the module has one,
    else the parser its ``main`` builds, caught at its ``parse_args`` call."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module = importlib.import_module(module_name)
    if hasattr(module, "build_parser"):
        return module.build_parser()

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    entry = getattr(module, "parse_args", None) or module.main
    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture), \
            mock.patch.object(argparse.ArgumentParser, "parse_known_args", capture):
        try:
            entry([])
        except _Captured as caught:
            return caught.parser
    raise AssertionError(f"{module_name} never called parse_args")


def parse_with(parser: argparse.ArgumentParser, args: list[str]) -> argparse.Namespace:
    """``parser.parse_args(args)`` with argparse's exit turned into a ValueError naming the reason."""
    def error(message):
        raise ValueError(message)

    with mock.patch.object(parser, "error", error):
        return parser.parse_args(args)


@lru_cache(maxsize=None)
def make_targets() -> frozenset[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-][A-Za-z0-9_.\- ]*):(?!=)", line)
        if match and not line.startswith("\t"):
            targets.update(t for t in match.group(1).split() if not t.startswith("."))
    return frozenset(targets)


def config_path(value: str) -> Path | None:
    """The file ``--config VALUE`` names: a path, or a preset under configs/; None for a run
    folder's generated config (``runs/...``), which an earlier documented command writes."""
    if value.startswith("runs/"):
        return None
    path = ROOT / value
    return path if value.endswith((".yaml", ".yml")) else ROOT / "configs" / f"{value}.yaml"


def problems_of(command: list[str]) -> list[str]:
    """What is wrong with one documented command; empty when it parses."""
    from kd.train.config import read_yaml

    tool, args = tool_and_args(command)
    text = shlex.join(command)
    if tool == "?":
        return [f"{text}: not a command the docs test knows (python TOOL, python -m kd.X, torchrun, make, a script)"]
    if tool == "make":
        missing = [a for a in args if "=" not in a and not a.startswith("-") and a not in make_targets()]
        return [f"{text}: no make target {m!r}" for m in missing]
    if tool.endswith((".py", ".sh")):
        return [] if (ROOT / tool).is_file() else [f"{text}: no such script {tool}"]
    problems = []
    named = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
    named += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    named += [a for a in args if re.fullmatch(r"configs/[\w.\-]+\.ya?ml", a)]
    for value in named:
        path = config_path(value)
        if path is None:
            continue
        if not path.is_file():
            problems.append(f"{text}: no config {value!r} ({path.relative_to(ROOT)})")
            continue
        try:
            tree = read_yaml(path.read_text(), str(path))
        except Exception as err:  # noqa: BLE001 - any failure to load is the finding
            problems.append(f"{text}: config {value!r} does not load: {err}")
            continue
        if not isinstance(tree, dict):
            problems.append(f"{text}: config {value!r} is not a mapping")
    try:
        parser = parser_of(tool)
    except ModuleNotFoundError as err:
        return [*problems, f"{text}: no tool {tool} ({err})"]
    known = set(parser._option_string_actions)
    for arg in args:
        if arg.startswith("--") and arg.split("=", 1)[0] not in known | GLOBAL_OPTIONS:
            problems.append(f"{text}: {tool} has no option {arg.split('=', 1)[0]}")
    if not problems:
        try:
            parsed = parse_with(parser, [a for a in args if a not in GLOBAL_OPTIONS])
        except ValueError as err:
            problems.append(f"{text}: {tool} refuses it: {err}")
        else:
            problems += recipe_config_problems(tool, parsed, text)
    return problems


def recipe_config_problems(tool: str, parsed: argparse.Namespace, text: str) -> list[str]:
    """A training recipe's preset with the command's ``--set`` overrides builds, as the recipe
    builds it before reading data (unknown keys and absurd values are refused there)."""
    if tool not in ("train_teacher", "train_student") or (parsed.config or "").startswith("runs/"):
        return []
    from kd.cli import config_from_args
    from kd.train.config import RunConfig
    from kd.train.generative import QLoRARunConfig
    from kd.train.student import StudentRunConfig

    cls = RunConfig
    if tool == "train_student":
        cls = QLoRARunConfig if parsed.generative else StudentRunConfig
        parsed.config = parsed.config or ("qlora-smollm2" if parsed.generative else "student-minilm")
    try:
        config_from_args(parsed, cls)
    except Exception as err:  # noqa: BLE001 - any refusal is the finding
        return [f"{text}: its config does not build: {type(err).__name__}: {err}"]
    return []


COMMANDS = documented_commands()
TOOLS = sorted({tool for _, command in COMMANDS for tool in [tool_and_args(command)[0]]
                if tool not in ("make", "?") and not tool.endswith((".py", ".sh"))})


def test_the_docs_hold_shell_commands_for_every_recipe():
    """Non-vacuous: the extraction finds the commands, and every recipe and main tool is shown."""
    tools = {tool_and_args(c)[0] for _, c in COMMANDS}
    assert len(COMMANDS) >= 40
    assert {"train_teacher", "train_student", "quantize", "kd.predict", "kd.evaluate", "kd.ablation",
            "kd.bench", "kd.benchmark", "make"} <= tools
    assert any(c[0] == "torchrun" for _, c in COMMANDS)


@pytest.mark.parametrize("doc,command", COMMANDS, ids=[f"{d}:{shlex.join(c)[:60]}" for d, c in COMMANDS])
def test_every_documented_command_parses(doc, command):
    assert problems_of(command) == []


@pytest.mark.parametrize("tool", TOOLS)
def test_every_documented_tools_help_works(tool):
    parser = parser_of(tool)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        parser.parse_args(["--help"])
    assert done.value.code == 0
    assert "--" in out.getvalue()


@pytest.mark.parametrize("command,reason", [
    ("python quantize.py --student s --no-such-option 1", "has no option --no-such-option"),
    ("python train_teacher.py --config no-such-preset", "no config 'no-such-preset'"),
    ("python -m kd.ablation configs/no-such-grid.yaml", "no config"),
    ("python -m kd.predict --input urls.txt", "refuses it"),  # --model is required
    ("python -m kd.evaluate --model m --batch-size 0", "refuses it"),
    ("python train_teacher.py --set train.no_such_key=1", "does not build"),
    ("python train_student.py --set distill.augment_copies=-1", "does not build"),
    ("make no-such-target", "no make target"),
    ("python -m kd.no_such_tool --x", "no tool"),
    ("curl https://example.com", "not a command"),
])
def test_the_checker_finds_a_broken_command(command, reason):
    """Each broken command is caught, so a docs edit that breaks one fails the suite."""
    problems = problems_of(shlex.split(command))
    assert problems and reason in problems[0]


def test_command_extraction_joins_lines_and_splits_chains():
    block = ("make install-qwen && python train_student.py --generative \\\n"
             "    --config qlora-qwen-teacher   # a comment\n"
             "$ KD_X=1 torchrun --nproc_per_node 2 -m kd.predict --model m u\n")
    assert commands_of(block) == [
        ["make", "install-qwen"],
        ["python", "train_student.py", "--generative", "--config", "qlora-qwen-teacher"],
        ["torchrun", "--nproc_per_node", "2", "-m", "kd.predict", "--model", "m", "u"],
    ]
    assert tool_and_args(commands_of(block)[2]) == ("kd.predict", ["--model", "m", "u"])


def test_make_test_and_make_demo_stay_in_the_readme():
    """CI's .ci/run runs `make test`; the quick start is `make demo` and `make test`."""
    commands = [c for d, c in COMMANDS if d == "README.md"]
    assert ["make", "test"] in commands and ["make", "demo"] in commands


def test_the_readme_is_at_most_250_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move reference material to docs/"


@lru_cache(maxsize=None)
def committed_files() -> frozenset[str] | None:
    """Paths git tracks (None outside a git checkout: existence is checked then)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return frozenset(p for p in out.decode().split("\0") if p)


def benchmark_references(doc: Path) -> list[str]:
    """Files under benchmarks/ that ``doc`` links to (Markdown links) or names in inline code."""
    text = doc.read_text(encoding="utf-8")
    found = []
    for target in re.findall(r"\]\(([^)\s#]+)", text):
        if target.startswith(("http://", "https://")):
            continue
        path = (doc.parent / target).resolve()
        if path.is_relative_to(ROOT / "benchmarks"):
            found.append(path.relative_to(ROOT).as_posix())
    for code in re.findall(r"`([^`\n]+)`", FENCE.sub("", text)):
        if re.fullmatch(r"benchmarks/[\w.\-/]+\.\w+", code):
            found.append(code)
    return found


def missing_files(paths: list[str]) -> list[str]:
    committed = committed_files()
    return [p for p in paths
            if not (ROOT / p).exists() or (committed is not None and (ROOT / p).is_file() and p not in committed)]


@pytest.mark.parametrize("doc", DOCS, ids=[d.relative_to(ROOT).as_posix() for d in DOCS])
def test_every_benchmarks_file_a_doc_names_is_committed(doc):
    assert missing_files(benchmark_references(doc)) == []


def results_rows() -> list[str]:
    """The data rows of the README's table under '## Current results'."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Current results", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [r for r in rows[2:]]  # header and rule


def test_every_figure_in_the_readme_results_table_links_to_a_committed_file():
    rows = results_rows()
    assert len(rows) >= 5
    for row in rows:
        links = [t for t in re.findall(r"\]\(([^)\s]+)\)", row) if t.startswith("benchmarks/")]
        assert links, f"no benchmarks/ file linked in: {row}"
        assert missing_files(links) == [], row
        assert re.search(r"\b20\d\d-\d\d-\d\d\b", row), f"no date in: {row}"


def test_the_link_checker_flags_a_missing_file(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("[r](benchmarks/no-such-result.md) and `benchmarks/also-missing.json`\n")
    with mock.patch(f"{__name__}.ROOT", tmp_path):
        assert benchmark_references(doc) == ["benchmarks/no-such-result.md", "benchmarks/also-missing.json"]
        assert missing_files(benchmark_references(doc)) == ["benchmarks/no-such-result.md",
                                                            "benchmarks/also-missing.json"]


@pytest.mark.parametrize("doc", DOCS, ids=[d.relative_to(ROOT).as_posix() for d in DOCS])
def test_every_relative_link_of_a_doc_resolves(doc):
    """The map of the docs and the links to code and configs lead somewhere."""
    targets = [t for t in re.findall(r"\]\(([^)\s#]+)", doc.read_text(encoding="utf-8"))
               if not t.startswith(("http://", "https://", "mailto:"))]
    assert [t for t in targets if not (doc.parent / t).exists()] == []
