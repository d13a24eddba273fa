"""docs/plugin-guide.md is executable: its ``# file:`` code blocks are a whole plugin, which this
test builds, installs into a fresh environment (on the core wheel's), lists, trains, embeds with,
tests with its own conformance test, and uninstalls."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import wheel_env  # noqa: E402

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugin-guide.md"
BLOCK = re.compile(r"^```[a-z]*\n(# file: (?P<path>\S+)\n.*?)^```\n", re.M | re.S)


def guide_files(text: str) -> dict[str, str]:
    """``path -> content`` of every code block whose first line is ``# file: PATH``."""
    files = {m.group("path"): m.group(1) for m in BLOCK.finditer(text)}
    assert len(files) == len(BLOCK.findall(text)), "a file is given twice"
    return files


def test_the_guide_states_every_factory_signature_and_the_encoders_duties():
    from d2v_core.specs import COMPONENT_KINDS

    text = GUIDE.read_text(encoding="utf-8")
    table = text[text.index("| kind | registered as |"):text.index("### The encoder's duties")]
    for kind in COMPONENT_KINDS:
        assert re.search(rf'ComponentSpec\(kind="{kind}"\)` \| `factory\(', table), kind
    from d2v_core.interfaces import FACTORY_ARGS

    assert "`factory(cfg)`" not in table  # factories never get the whole run config
    for kind in ("encoder", "record_decoder"):
        assert f"`factory({', '.join(FACTORY_ARGS[kind])})`" in table, kind
    duties = text[text.index("### The encoder's duties"):text.index("## 4.")]
    for duty in ("`dim`", "`mask_embedding`", "`embed(batch)", "`num_prefix_tokens`", "`ema.teacher_input", "`ema.exclude_params`"):
        assert duty in duties, duty


def test_the_guides_plugin_imports_only_the_core_root_api():
    import ast

    import d2v_core

    for rel, content in guide_files(GUIDE.read_text(encoding="utf-8")).items():
        if "/tests/" in rel or not rel.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(content)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("d2v_core"):
                assert node.module == "d2v_core", (rel, node.module)
                assert {a.name for a in node.names} <= set(d2v_core.__all__), (rel, [a.name for a in node.names])


@pytest.mark.slow
def test_the_guides_plugin_installs_trains_embeds_passes_its_tests_and_uninstalls(core_env, tmp_path):
    src = tmp_path / "src"
    for rel, content in guide_files(GUIDE.read_text(encoding="utf-8")).items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(content, encoding="utf-8")
    root = src / "d2v-plugin-sines"
    assert {p.name for p in (root / "d2v_plugin_sines").iterdir()} == {
        "__init__.py", "plugin.py", "options.py", "encoder.py", "masking.py", "data.py", "presets.py", "demo.py"}
    (tmp_path / "dist").mkdir()
    wheel = wheel_env.build_wheel(root, tmp_path / "dist", tmp_path / "scratch")
    python = wheel_env.plugin_env(core_env, tmp_path / "env")
    wheel_env.pip_install(python, Path(f"{wheel}[test]"))
    env = {"D2V_SINES_DEMO": str(tmp_path / "demo")}

    rows = {r["name"]: r for r in json.loads(wheel_env.d2v(python, "list-plugins", "--json", cwd=tmp_path))}
    assert rows["sines"]["status"] == "ok" and rows["sines"]["distribution"] == "d2v-plugin-sines", rows["sines"]
    assert rows["sines"]["modalities"]["sines"]["presets"] == ["tiny"]
    assert rows["sines"]["components"][0]["name"] == "sine-spans" and rows["sines"]["components"][0]["modalities"] == ["sines"]

    out = wheel_env.d2v(python, "pretrain", "--modality", "sines", "--max-steps", "4", "--out", str(tmp_path / "run"),
                        "--set", "runtime.log_every=2", cwd=tmp_path, env=env)
    assert "done: step 4/4" in out and len(list((tmp_path / "demo").glob("*.npy"))) == 24, out
    out = wheel_env.d2v(python, "embed", str(tmp_path / "run"), str(tmp_path / "demo"), "--out", str(tmp_path / "e.npy"),
                        cwd=tmp_path, env=env)
    assert "embedded 24 record(s)" in out, out
    import numpy as np

    assert np.load(tmp_path / "e.npy").shape == (24, 32)

    out = wheel_env.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")], cwd=root,
                        env=wheel_env.clean_env(**env))
    assert "3 passed" in out, out

    wheel_env.run([sys.executable, "-m", "pip", "--python", str(python), "uninstall", "-y", "-q", "d2v-plugin-sines"],
                  env=wheel_env.clean_env())
    rows = {r["name"] for r in json.loads(wheel_env.d2v(python, "list-plugins", "--json", cwd=tmp_path))}
    assert rows == {"core"}
