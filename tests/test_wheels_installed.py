"""Each plugin installed alone from its wheel: core wheel + that plugin's wheel, their declared
dependencies only (see ``tests/wheel_env.py`` for the layers), then ``d2v list-plugins`` and a
few ``d2v pretrain`` steps on the demo data the wheel ships.

Cost (2 shared cores, warm pip cache): building seven wheels ~5 s, the core environment ~30-60 s
(once per test session, shared by the xdist workers), each plugin environment 5-30 s plus its
pretrain run; see docs/plugin-guide.md#installing-from-wheels.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tomllib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import wheel_env  # noqa: E402
from wheel_env import PLUGINS, ROOT, InstallCheckError, d2v, make_env, pip_install  # noqa: E402

pytestmark = pytest.mark.slow

# what each plugin's installed check trains: modality and extra flags (None: nothing to train alone)
PRETRAIN = {
    "audio": ("audio", []),
    "image": ("image", []),
    "text": ("text", []),
    "example": ("vectors", []),
    "maskers": None,  # no modality of its own: its masker is checked with the conformance kit
    "mlflow": None,  # no modality of its own: its logger writes a run that MLflow reads back
}
MASKER_CHECK = """
from d2v_core.plugin_loader import get_registry
from d2v_core.testing import check_masker
spec = get_registry().component("masker", "inverse-block")
masker = spec.load_factory()(spec.load_options()())
print("ratio", check_masker(masker, length=196, grid=(14, 14)))
"""
# the default store (SQLite in the run folder) needs sqlalchemy and alembic, which mlflow-skinny does not bring
MLFLOW_CHECK = """
import pathlib, tempfile
from mlflow.tracking import MlflowClient
from d2v_core import LoggerContext
from d2v_core.plugin_loader import get_registry
spec = get_registry().component("logger", "mlflow")
run = pathlib.Path(tempfile.mkdtemp())
logger = spec.load_factory()(spec.load_options()(), LoggerContext(run, max_steps=2))
logger.log_config({"optim": {"lr": 0.001}})
logger.log(1, {"loss": 2.5})
logger.log(2, {"loss": 1.5})
logger.close()
client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
got = client.get_run(logger.run_id)
print("mlflow", got.info.status, got.data.params, [(m.step, m.value) for m in client.get_metric_history(logger.run_id, "loss")])
"""
CHECKS = {"maskers": (MASKER_CHECK, "ratio "), "mlflow": (MLFLOW_CHECK, "mlflow FINISHED {'optim.lr': '0.001'} [(1, 2.5), (2, 1.5)]")}


def _plugin_env(base: Path, name: str, tmp: Path, wheel: Path) -> Path:
    python = make_env(tmp / f"env-{name}", [base / "torch", wheel_env.site_packages(base / "core")])
    pip_install(python, wheel)
    return python


def check_plugin_installed(base: Path, name: str, tmp: Path, wheel: Path | None = None) -> str:
    """Install one plugin's wheel on the core layer and use it; raises InstallCheckError."""
    folder = ROOT / PLUGINS[name]
    dist_name = tomllib.loads((folder / "pyproject.toml").read_text())["project"]["name"]
    if wheel is None:
        (wheel,) = (base / "dist").glob(f"{dist_name.replace('-', '_')}-*.whl")
    python = _plugin_env(base, name, tmp, wheel)
    rows = {r["name"]: r for r in json.loads(d2v(python, "list-plugins", "--json", cwd=tmp))}
    assert rows[name]["status"] == "ok" and rows[name]["distribution"] == dist_name, rows
    assert set(rows) == {"core", name}, f"only the core and {name} should be installed: {sorted(rows)}"
    if PRETRAIN[name] is None:
        return wheel_env.run([str(python), "-c", CHECKS[name][0]], cwd=tmp, env=wheel_env.clean_env())
    modality, flags = PRETRAIN[name]
    out = d2v(python, "pretrain", "--modality", modality, "--max-steps", "2", "--out", str(tmp / "run"),
              "--set", "runtime.log_every=1", *flags, cwd=tmp)
    assert (tmp / "run" / "checkpoints").is_dir(), out
    return out


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_plugin_works_installed_alone_from_its_wheel(core_env, name, tmp_path):
    out = check_plugin_installed(core_env, name, tmp_path)
    if PRETRAIN[name] is None:
        assert out.startswith(CHECKS[name][1]), out
    else:
        assert "step 2" in out and str(tmp_path / "run") in out, out
        assert "demo data" in out, out  # trained on the data the wheel ships


def test_wheels_carry_their_demo_data(core_env):
    import zipfile

    for name, folder in PLUGINS.items():
        demo = ROOT / folder / f"d2v_plugin_{name}" / "demo"
        if not demo.is_dir():
            continue
        (wheel,) = (core_env / "dist").glob(f"d2v_plugin_{name}-*.whl")
        shipped = {Path(n).name for n in zipfile.ZipFile(wheel).namelist() if "/demo/" in n}
        # the committed demo files (runs may leave caches such as a lengths index next to them)
        tracked = wheel_env.run(["git", "ls-files", "."], cwd=demo).split()
        assert tracked and shipped == set(tracked), name


def test_the_check_fails_when_a_declared_dependency_is_removed(core_env, tmp_path):
    """The text plugin built without sentencepiece in its dependencies: the installed check fails."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / PLUGINS["text"], src / "d2v-plugin-text", ignore=shutil.ignore_patterns("tests", "*.egg-info", "build"))
    pyproject = src / "d2v-plugin-text" / "pyproject.toml"
    text = pyproject.read_text()
    assert '"sentencepiece>=0.1.99",\n' in text
    pyproject.write_text(text.replace('"sentencepiece>=0.1.99",\n', ""))
    (tmp_path / "dist").mkdir()
    wheel = wheel_env.build_wheel(src / "d2v-plugin-text", tmp_path / "dist", tmp_path / "scratch")
    with pytest.raises(InstallCheckError, match="sentencepiece"):
        check_plugin_installed(core_env, "text", tmp_path, wheel=wheel)


@pytest.mark.parametrize("name", ["core", *sorted(PLUGINS)])
def test_building_a_wheel_prints_no_setuptools_warning(name, tmp_path):
    """SPDX license strings and explicit packages (demo folders included): a build says nothing to fix."""
    folder = ROOT if name == "core" else ROOT / PLUGINS[name]
    (tmp_path / "dist").mkdir()
    copy = tmp_path / "src"
    copy.mkdir()
    wheel_env.build_wheel(folder, tmp_path / "dist", copy)  # the same copy of the sources, then its backend verbosely
    (src,) = list(copy.iterdir())
    shutil.rmtree(src / "build", ignore_errors=True)
    proc = wheel_env.run([sys.executable, "-W", "always", "-c",
                          f"from setuptools import build_meta; build_meta.build_wheel({str(tmp_path / 'dist2')!r})"],
                         cwd=src, env=wheel_env.clean_env())
    warnings = [line for line in proc.splitlines() if re.search(r"warning|deprecat|would be ignored", line, re.I)
                and "byte-compiling is disabled" not in line]
    assert warnings == [], "\n".join(warnings)
