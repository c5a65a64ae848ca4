"""Plugin discovery: a throw-away plugin installed from a temp folder is listed; a broken one is reported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mmclinic.errors import PluginError
from mmclinic.registry import Registry

GOOD = """
from typing import ClassVar
from pydantic import BaseModel
from mmclinic.plugin_api import ModalityPlugin, ModalityInput

class Config(BaseModel):
    scale: float = 1.0

class EcgPlugin(ModalityPlugin):
    name: ClassVar[str] = "toy-ecg"
    version: ClassVar[str] = "0.3.1"
    modality: ClassVar[str] = "ecg"
    Config = Config

    def load(self, ref, spec):
        return ModalityInput("ecg", {"x": [float(v) * self.config.scale for v in ref]}, {"ecg": "0" * 64})

    def collate(self, items, spec):
        raise NotImplementedError

    def build_encoder(self, d_model, spec):
        raise NotImplementedError
"""

# Validates as a class but leaves an abstract method out: must be reported, not crash discovery.
INCOMPLETE = """
from typing import ClassVar
from mmclinic.plugin_api import ModalityPlugin

class Half(ModalityPlugin):
    name: ClassVar[str] = "toy-half"
    version: ClassVar[str] = "1.0"
    modality: ClassVar[str] = "half"

    def load(self, ref, spec):
        return None
"""

IMPORT_FAILS = "import module_that_does_not_exist_anywhere\n"


def _make_dist(root: Path, dist: str, module: str, source: str, attr: str) -> Path:
    proj = root / dist
    (proj / module).mkdir(parents=True)
    (proj / module / "__init__.py").write_text(textwrap.dedent(source))
    (proj / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "0.0.1"

            [project.entry-points."mmclinic.plugins"]
            {dist} = "{module}:{attr}"
            """
        )
    )
    return proj


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install three throw-away distributions with pip into a private target folder."""
    root = tmp_path_factory.mktemp("dists")
    target = tmp_path_factory.mktemp("site")
    projects = [
        _make_dist(root, "toy-ecg-plugin", "toy_ecg", GOOD, "EcgPlugin"),
        _make_dist(root, "toy-half-plugin", "toy_half", INCOMPLETE, "Half"),
        _make_dist(root, "toy-broken-plugin", "toy_broken", IMPORT_FAILS, "Anything"),
    ]
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target)]
    subprocess.run([*cmd, *map(str, projects)], check=True, capture_output=True)
    return target


def _run_cli(site: Path, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), **(extra_env or {})}
    return subprocess.run(
        [sys.executable, "-c", "from mmclinic.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli_lists_good_plugin_and_reports_broken_ones(plugin_site: Path) -> None:
    out = _run_cli(plugin_site, "plugins", "list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    good = [ln for ln in lines if "toy-ecg" in ln]
    assert good and "0.3.1" in good[0] and "toy-ecg-plugin" in good[0] and " ok " in good[0] + " "
    half = [ln for ln in lines if "toy-half" in ln]
    assert half and "plugin.missing_method" in half[0] and "collate" in out.stdout
    broken = [ln for ln in lines if "toy-broken" in ln]
    assert broken and "plugin.import_failed" in broken[0]


def test_registry_api_with_installed_plugins(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(plugin_site))
    import importlib

    importlib.invalidate_caches()
    reg = Registry.discover({"toy-ecg": {"scale": 2.0}})
    plugin = reg.get("modality", "toy-ecg")
    assert plugin is reg.modality_for("ecg")
    loaded = plugin.load([1, 2], None)  # type: ignore[attr-defined]
    assert loaded.data["x"] == [2.0, 4.0]  # the configured value reached the plugin
    with pytest.raises(PluginError) as exc:
        reg.get("modality", "toy-half")
    assert exc.value.reason == "plugin.unavailable"
    with pytest.raises(PluginError) as exc:
        reg.get("task", "no-such-task")
    assert exc.value.reason == "plugin.not_found"


def test_bad_plugin_config_is_reported_not_raised(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(plugin_site))
    reg = Registry.discover({"toy-ecg": {"scale": "not-a-number"}})
    rec = next(r for r in reg.records if r.entry_point == "toy-ecg-plugin")
    assert rec.status == "error" and rec.reason.startswith("plugin.bad_config")
