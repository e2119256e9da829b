"""The README's claims about the code stay true: every flag it shows a command line with is one that command
accepts, every flag it names in prose is accepted by some command line, the model-source alias it promises
(`--ema` for `--use-ema`) exists in every command line that loads a checkpoint, the Python names and paths it
mentions exist, and its Layout section names only paths that exist and every top-level module of the package."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()

# How the README runs each command line -> (module or file, attribute holding `main(argv)`).
COMMANDS: dict[str, tuple[str, str]] = {
    "python train.py": ("train.py", "main"),
    "python convert_weights.py": ("mv2jax.convert.cli", "main"),
    "python -m mv2jax.validate": ("mv2jax.validate", "main"),
    "python -m mv2jax.export": ("mv2jax.export.__main__", "main"),
    "python -m mv2jax.predict": ("mv2jax.predict", "main"),
    "python -m mv2jax.benchmark": ("mv2jax.benchmark", "main"),
    "python -m mv2jax.lowering": ("mv2jax.lowering", "main"),
    "python -m mv2jax.bench.timm_train_compare": ("mv2jax.bench.timm_train_compare", "main"),
}
# A flag token on a command line: after whitespace, a bracket or a bar, so `a-b` and `x=--y` are not flags.
_FLAG = re.compile(r"(?:^|(?<=[\s\[(|]))(--?[A-Za-z][\w-]*)")
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
_SPAN = re.compile(r"`([^`\n]+)`")


def _main_of(command: str) -> Callable[..., int]:
    target, attr = COMMANDS[command]
    if target.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"readme_{Path(target).stem}", REPO / target)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    return getattr(module, attr)


_option_cache: dict[str, dict[str, str]] = {}


def options(command: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """{option string: dest} of every parser `command`'s `main(['--help'])` parses with (run in-process)."""
    if command not in _option_cache:
        parsers: list[argparse.ArgumentParser] = []
        original = argparse.ArgumentParser.parse_known_args

        def recording(self, *args, **kwargs):
            parsers.append(self)
            return original(self, *args, **kwargs)

        with monkeypatch.context() as m:
            m.setattr(argparse.ArgumentParser, "parse_known_args", recording)
            with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as exit_info:
                _main_of(command)(["--help"])
        assert exit_info.value.code in (0, None), f"{command} --help exited {exit_info.value.code}"
        _option_cache[command] = {
            flag: action.dest for p in parsers for action in p._actions for flag in action.option_strings
        }
    return _option_cache[command]


def _section(title: str) -> str:
    """The README's text under the `## title` heading, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def command_lines() -> Iterator[tuple[str, str]]:
    """(command, the rest of the line) for every command line the README shows: in shell code blocks (with
    continuation lines joined, comments dropped) and in inline code spans."""
    texts = []
    for lang, body in _FENCE.findall(README):
        if lang in ("bash", "sh", ""):
            texts += body.replace("\\\n", " ").splitlines()
    texts += _SPAN.findall(README)
    for text in texts:
        text = text.split(" #", 1)[0].strip()
        for command in COMMANDS:
            if text == command or text.startswith(command + " "):
                yield command, text[len(command) :]


def _prose_flags() -> set[str]:
    """`--flag`s named in inline code spans that are not a command line of their own."""
    spans = [s for s in _SPAN.findall(README) if not any(s.startswith(c) for c in COMMANDS)]
    return {f for s in spans for f in _FLAG.findall(s) if f.startswith("--")}


def test_readme_shows_command_lines():
    shown = {command for command, _ in command_lines()}
    assert {"python train.py", "python -m mv2jax.validate", "python -m mv2jax.export"} <= shown


def test_every_flag_on_a_readme_command_line_is_accepted(monkeypatch):
    unknown = [
        f"{command}: {flag}"
        for command, rest in command_lines()
        for flag in _FLAG.findall(rest)
        if flag not in options(command, monkeypatch)
    ]
    assert not unknown, f"README shows flags its command lines do not accept: {sorted(set(unknown))}"


def test_every_flag_named_in_readme_prose_is_some_commands(monkeypatch):
    accepted = set().union(*(options(command, monkeypatch) for command in COMMANDS))
    assert not sorted(_prose_flags() - accepted)


def test_every_model_source_cli_takes_use_ema_and_its_alias_ema(monkeypatch):
    """README: '`--use-ema` is the spelling in every CLI; `--ema` is kept as an alias'."""
    assert "`--ema` is kept as an alias" in README
    model_source = [c for c in COMMANDS if "--checkpoint" in options(c, monkeypatch)]
    assert len(model_source) >= 4, model_source  # convert_weights, validate, export, predict
    for command in model_source:
        flags = options(command, monkeypatch)
        assert "--use-ema" in flags and "--ema" in flags, command
        assert flags["--ema"] == flags["--use-ema"], command


def test_readme_test_command_is_the_one_ci_runs():
    assert "pip install -e '.[test]' && python -m pytest -q" in README


def _layout_paths() -> list[str]:
    blocks = _FENCE.findall(_section("Layout"))
    assert len(blocks) == 1, "the Layout section holds one code block"
    paths = []
    for line in blocks[0][1].splitlines():
        if line and not line[0].isspace():  # indented lines continue the description above
            paths += [p.strip() for p in re.split(r"\s{2,}", line, maxsplit=1)[0].split(",")]
    return paths


def test_layout_names_only_paths_that_exist():
    missing = [p for p in _layout_paths() if not (REPO / p).exists() or (p.endswith("/") != (REPO / p).is_dir())]
    assert not missing


def test_layout_names_every_top_level_module_and_package():
    named = set(_layout_paths())
    package = REPO / "mv2jax"
    top_level = [f"mv2jax/{p.name}" for p in package.glob("*.py") if p.name != "__init__.py"]
    top_level += [f"mv2jax/{p.name}/" for p in package.iterdir() if (p / "__init__.py").is_file()]
    assert not sorted(set(top_level) - named)


def test_paths_the_readme_mentions_exist():
    spans = {s for s in _SPAN.findall(README) if re.fullmatch(r"(mv2jax|tests)/[\w./]+", s)}
    assert spans, "the README names files of the repository"
    assert not sorted(s for s in spans if not (REPO / s).exists())


def _resolve(dotted: str) -> object:
    """The object `mv2jax.a.b.c` names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_python_names_the_readme_mentions_exist():
    names = set(re.findall(r"\bmv2jax(?:\.\w+)+", README))
    names = {n for n in names if not re.search(r"\.(py|md|json)$", n)}
    missing = []
    for name in sorted(names):
        try:
            _resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing
    for lang, body in _FENCE.findall(README):
        for line in body.splitlines() if lang == "python" else ():
            if line.startswith(("from mv2jax", "import mv2jax")):
                exec(line, {})  # the README's own import lines
