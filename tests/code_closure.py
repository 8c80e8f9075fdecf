"""The project code a module runs: its import closure, read from the source (no import).

Every ``import`` and ``from ... import`` anywhere in a file counts (function-level ones
too: stages import heavy libraries lazily), restricted to the project's packages. A
module also runs its packages' ``__init__.py``. The pipeline tests use this to check
that each DVC stage depends on exactly the code it runs. As a script it prints each
stage's closure, or rewrites the code entries of every ``deps: [...]`` list in dvc.yaml
(the data entries and everything else stay as written):

    .venv/bin/python tests/code_closure.py [--update-dvc-yaml]
"""
from __future__ import annotations

import ast
import functools
import re
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "tasks", "flows")


def module_file(name: str) -> Path | None:
    """The file of project module ``name`` (a package: its __init__.py), or None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # submodules
    return names


@functools.cache
def closure(name: str) -> frozenset[Path]:
    """Files of every project module that importing ``name`` can run, with the C source a
    module compiles at run time (models/cpu_kernels.c beside models/cpu_kernels.py)."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        path = module_file(module)
        if path is not None:
            todo += sorted(_imported_names(path))
    modules = {p for m in seen if (p := module_file(m)) is not None and not _docstring_only(p)}
    return frozenset(modules | {c for p in modules if (c := p.with_suffix(".c")).is_file()})


def _docstring_only(path: Path) -> bool:
    """An __init__.py that only documents its package runs no code worth depending on."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
                                              for n in body)


def stage_code(stage_command: str) -> list[str]:
    """The repository-relative files ``taming <stage_command>`` runs: the CLI (which
    validates the whole params file) and the stage's module."""
    from tasks.cli import STAGES
    files = closure("tasks.cli") | closure(STAGES[stage_command][0])
    return sorted(str(p.relative_to(REPO)) for p in files)


def _strip_comment(line: str) -> tuple[str, str]:
    code, sep, comment = line.partition(" #")
    return code.rstrip(), (sep + comment) if sep else ""


def update_dvc_yaml(path: Path = REPO / "dvc.yaml") -> None:
    """Rewrite the .py entries of each stage's flow-style ``deps: [...]`` list (a comment
    after the list is kept)."""
    lines, out, stage, i = path.read_text().split("\n"), [], None, 0
    while i < len(lines):
        line = lines[i]
        if m := re.match(r"^\s*cmd: taming ([\w-]+)", line):
            stage = m.group(1)
        if (m := re.match(r"^(\s*)deps: \[", line)) and stage is not None:
            block = [_strip_comment(line)]
            while not block[-1][0].endswith("]"):
                i += 1
                block.append(_strip_comment(lines[i]))
            joined = " ".join(code.strip() for code, _ in block)
            comment = "".join(c for _, c in block)
            entries = [e.strip() for e in joined.split("[", 1)[1].rsplit("]", 1)[0].split(",") if e.strip()]
            items = stage_code(stage) + [e for e in entries if not e.endswith((".py", ".c"))]
            out.append(textwrap.fill(", ".join(items), 112, initial_indent=f"{m.group(1)}deps: [",
                                     subsequent_indent=m.group(1) + "       ", break_on_hyphens=False,
                                     break_long_words=False) + "]" + comment)
        else:
            out.append(line)
        i += 1
    path.write_text("\n".join(out))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    if "--update-dvc-yaml" in sys.argv:
        update_dvc_yaml()
    else:
        from tasks.cli import PIPELINE_STAGES
        for stage in PIPELINE_STAGES:
            print(f"{stage}:\n  " + ", ".join(stage_code(stage)))
