"""The code layout the pipeline's correctness rests on: every DVC stage depends on exactly
the code it runs, no stage module imports another, and the benchmarks stand on their own."""
import ast
from pathlib import Path

import pytest
import yaml
from code_closure import REPO, closure, stage_code

from tasks.cli import PIPELINE_STAGES, STAGES


def dvc_stages() -> dict[str, dict]:
    """dvc.yaml's stages by command name (``taming <command>``), foreach bodies included."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    by_command = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        command = body["cmd"].split()[1]
        by_command[command] = body
    return by_command


def test_every_pipeline_command_is_a_dvc_stage():
    assert set(dvc_stages()) == set(PIPELINE_STAGES)


@pytest.mark.parametrize("command", PIPELINE_STAGES)
def test_each_stage_depends_on_exactly_the_code_it_runs(command):
    """DVC skips a stage whose declared deps did not change: a module of its import closure
    missing from deps would leave stale results that look current; code it does not run
    would rerun it for nothing. Print the lists with `python tests/code_closure.py`."""
    deps = dvc_stages()[command]["deps"]
    declared = {d for d in deps if d.endswith((".py", ".c"))}
    needed = set(stage_code(command))
    assert not needed - declared, f"dvc.yaml stage {command!r} misses code it runs: {sorted(needed - declared)}"
    assert not declared - needed, f"dvc.yaml stage {command!r} depends on code it never runs: {sorted(declared - needed)}"


def test_the_closure_follows_function_level_imports():
    # the sampler's kernels are imported inside functions; they must count
    assert REPO / "models/packed_linear.py" in closure("tasks.sample") | closure("models.net2net")
    assert "models/packed_linear.py" in stage_code("sample")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_no_stage_module_imports_another():
    """Stages share code only through the layers below them (tasks/<package>/, models/)."""
    stage_modules = {module for module, _ in STAGES.values()} | {"tasks.cli"}
    for module in stage_modules:
        path = REPO / (module.replace(".", "/") + ".py")
        others = _imports(path) & (stage_modules - {module})
        assert not others, f"{path.relative_to(REPO)} imports stage module(s) {sorted(others)}"


def test_tasks_top_level_holds_only_stages_and_the_cli():
    top = {p.stem for p in (REPO / "tasks").glob("*.py")} - {"__init__"}
    assert top == {module.rsplit(".", 1)[1] for module, _ in STAGES.values()} | {"cli"}


def test_the_shared_layers_import_no_stage():
    stage_modules = {module for module, _ in STAGES.values()} | {"tasks.cli"}
    for path in [*REPO.glob("tasks/*/*.py"), *REPO.glob("models/*.py")]:
        assert not _imports(path) & stage_modules, f"{path.relative_to(REPO)} imports a stage module"
    for path in REPO.glob("models/*.py"):
        assert not any(n.split(".")[0] in ("tasks", "flows") for n in _imports(path)), \
            f"{path.relative_to(REPO)}: models/ knows nothing of the pipeline"


def test_no_module_is_named_after_the_standard_library():
    import sys
    ours = [p for p in [*REPO.glob("tasks/**/*.py"), *REPO.glob("models/*.py"), *REPO.glob("flows/*.py")]]
    clashes = [str(p.relative_to(REPO)) for p in ours if p.stem in sys.stdlib_module_names]
    assert not clashes


def test_benchmarks_do_not_import_the_tests():
    for path in REPO.glob("bench/*.py"):
        text = path.read_text()
        assert not any(n.split(".")[0] in ("tests", "conftest", "scene_data", "params_files", "fixtures_pipeline")
                       for n in _imports(path)), f"{path.relative_to(REPO)} imports test code"
        assert '"tests"' not in text and "'tests'" not in text, f"{path.relative_to(REPO)} reaches into tests/"


def test_image_files_are_opened_in_one_place():
    """tasks/data/images.py:open_image decodes only the accepted formats, bounds the pixels and
    refuses specials; any other Image.open would bypass that (an EPS file runs Ghostscript)."""
    gate = REPO / "tasks/data/images.py"
    for path in [*REPO.glob("tasks/**/*.py"), *REPO.glob("models/*.py"), *REPO.glob("flows/*.py"),
                 *REPO.glob("bench/*.py")]:
        if path != gate:
            assert "Image.open(" not in path.read_text(), f"{path.relative_to(REPO)} opens images itself"
