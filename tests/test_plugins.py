import sys
import textwrap
from pathlib import Path

import pytest

import rqf
from rqf.errors import ConfigError
from rqf.plugins import Plugins, reset_plugins
from rqf_h5_recsys.testing import recsys_pipeline

FIXTURE = Path(__file__).parent / "plugins_fixture"


def install_entry_point(tmp_path: Path, monkeypatch, dist: str, name: str, module: str) -> None:
    """Install a distribution's metadata exactly as pip would lay it out, on sys.path."""
    info = tmp_path / "site" / f"{dist.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(f"[rqf]\n{name} = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def test_core_registers_index_splitter_through_the_hooks():
    plugins = Plugins().load(entry_points=False)
    assert plugins.registry.names("splitter") == ["index"]
    assert next(plugins.registry.entries("splitter")).plugin == "builtin"


def test_installed_plugins_are_discovered():
    plugins = Plugins().load()
    assert {"h5_recsys", "rqvae"} <= set(plugins.info)
    assert "leave_last_out" in plugins.registry.names("splitter")
    assert plugins.registry.names("model") == ["genret", "lastitem_nn", "mostpop", "rqkmeans",
                                               "rqvae", "sasrec", "tiger"]


def test_third_party_splitter_selected_from_yaml(tmp_path, monkeypatch, recsys_files):
    monkeypatch.syspath_prepend(str(FIXTURE))
    install_entry_point(tmp_path, monkeypatch, "rqf-toy-splitter", "toy", "rqf_toy_splitter")
    reset_plugins()
    config = recsys_pipeline(recsys_files, tmp_path / "run", splitter={"type": "toy_every_nth", "n": 4})
    result = rqf.run(config)
    assert result.metrics["split"]["counts"] == {"train": 225, "test": 75}
    assert result.metrics["test"]["n"] == 75
    assert (tmp_path / "run" / "semantic_ids.h5").exists()


def test_plugin_that_fails_to_import_is_reported_and_others_work(tmp_path, monkeypatch):
    pkg = tmp_path / "src"
    pkg.mkdir()
    (pkg / "rqf_broken.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(pkg))
    install_entry_point(tmp_path, monkeypatch, "rqf-broken", "broken", "rqf_broken")
    plugins = Plugins().load()
    failure = next(f for f in plugins.failures if f.name == "broken")
    assert failure.distribution == "rqf-broken"
    assert "boom at import" in failure.error
    assert "leave_last_out" in plugins.registry.names("splitter")


def test_hook_name_typo_is_reported(tmp_path, monkeypatch):
    pkg = tmp_path / "src"
    pkg.mkdir()
    (pkg / "rqf_typo.py").write_text(textwrap.dedent("""
        import rqf
        @rqf.hookimpl
        def register_spliters(register):
            pass
    """))
    monkeypatch.syspath_prepend(str(pkg))
    install_entry_point(tmp_path, monkeypatch, "rqf-typo", "typo", "rqf_typo")
    plugins = Plugins().load()
    failure = next(f for f in plugins.failures if f.name == "typo")
    assert "register_spliters" in failure.error


def test_two_plugins_registering_one_name_is_an_error_naming_both():
    class Clash(rqf.Splitter):
        name = "index"

        def split(self, dataset):
            return {}

    class Module:
        @staticmethod
        @rqf.hookimpl
        def register_splitters(register):
            register(Clash)

    plugins = Plugins().load(entry_points=False)
    plugins.add(Module, "clashing")
    assert plugins.clashes() == ["splitter 'index' is registered by plugin 'builtin' (rqf "
                                 f"{rqf.__version__}) and plugin 'clashing' (? ?); it is disabled, "
                                 "the rest of both plugins works"]
    with pytest.raises(ConfigError, match="splitter 'index' is registered by plugins 'builtin' "
                                          "and 'clashing', so it is disabled"):
        plugins.registry.get("splitter", "index")


TWIN = """
import rqf
from rqf_toy_splitter import SignCodes


class Twin(SignCodes):
    name = "twin"


@rqf.hookimpl
def register_models(register):
    register(Twin)
"""


def test_a_name_two_plugins_register_is_disabled_and_the_rest_works(tmp_path, recsys_files):
    import os
    import subprocess

    import yaml

    site = tmp_path / "site"
    for dist in ("rqf-twin-a", "rqf-twin-b"):
        module = dist.replace("-", "_")
        info = site / f"{module}-0.0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
        (info / "entry_points.txt").write_text(f"[rqf]\n{module} = {module}\n")
        (site / f"{module}.py").write_text(TWIN)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{FIXTURE}"}

    def validate(model):
        path = tmp_path / f"{model}.yaml"
        path.write_text(yaml.safe_dump(recsys_pipeline(recsys_files, tmp_path / "run",
                                                       model={"type": model})))
        return subprocess.run([sys.executable, "-m", "rqf", "validate", str(path)],
                              capture_output=True, text=True, env=env, timeout=120)

    fine = validate("rqkmeans")
    assert fine.returncode == 0, fine.stderr
    assert fine.stderr.strip() == ("warning: model 'twin' is registered by plugin 'rqf_twin_a' "
                                   "(rqf-twin-a 0.0.1) and plugin 'rqf_twin_b' (rqf-twin-b "
                                   "0.0.1); it is disabled, the rest of both plugins works")
    used = validate("twin")
    assert used.returncode == 2 and "Traceback" not in used.stderr
    assert used.stderr.strip().splitlines()[-1].endswith(
        "model.type: model 'twin' is registered by plugins 'rqf_twin_a' and 'rqf_twin_b', so it "
        "is disabled; uninstall one, or leave one out with RQF_LOAD_PLUGINS")


def test_load_plugins_variable_limits_entry_points(monkeypatch):
    monkeypatch.setenv("RQF_LOAD_PLUGINS", "rqvae")
    plugins = Plugins().load()
    assert set(plugins.info) == {"builtin", "rqvae"}
    with pytest.raises(ConfigError, match="unknown storage 'h5_recsys'"):
        plugins.registry.get("storage", "h5_recsys")


def test_index_splitter_positions_and_shuffle(recsys_files):
    from rqf.builtin import IndexSplitter
    from rqf_h5_recsys.datasets import ItemsDataset
    from rqf_h5_recsys.storage import H5RecsysStorage

    with H5RecsysStorage(str(recsys_files["items"])) as storage:
        data = ItemsDataset(storage)
        plain = IndexSplitter(seed=0, test_ratio=0.2, valid_ratio=0.1).split(data)
        assert [len(plain[k]) for k in ("train", "valid", "test")] == [210, 30, 60]
        assert plain["test"].key_ids().tolist() == list(range(341, 401))
        a = IndexSplitter(seed=3, shuffle=True).split(data)["test"].key_ids()
        b = IndexSplitter(seed=3, shuffle=True).split(data)["test"].key_ids()
        c = IndexSplitter(seed=4, shuffle=True).split(data)["test"].key_ids()
        assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
        with pytest.raises(ConfigError, match="must be below 1"):
            IndexSplitter(seed=0, test_ratio=0.6, valid_ratio=0.4).split(data)


def test_cli_plugins_reports_a_crashing_plugin_in_one_line(tmp_path):
    import os
    import subprocess

    pkg = tmp_path / "site"
    info = pkg / "rqf_crash-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rqf-crash\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text("[rqf]\ncrash = rqf_crash\n")
    (pkg / "rqf_crash.py").write_text("import not_a_module_anywhere\n")
    env = {**os.environ, "PYTHONPATH": str(pkg)}
    proc = subprocess.run([sys.executable, "-m", "rqf", "plugins"], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: plugin 'crash' (rqf-crash 0.0.1) failed to load: import "
                                   "of 'rqf_crash' failed: ModuleNotFoundError: No module named "
                                   "'not_a_module_anywhere'")
    assert "rqvae" in proc.stdout  # the others still load
