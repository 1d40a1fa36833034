"""The command line: one clear line and a non-zero exit for bad input, never a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rqf_h5_recsys.testing import recsys_pipeline
from rqf.cli import main


def rqf_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rqf", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def call(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out, out.err


def write_pipeline(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_bad_pipeline_is_one_line_without_traceback(tmp_path, recsys_files):
    config = recsys_pipeline(recsys_files, tmp_path / "run")
    config["model"]["codebook_size"] = "abc"
    proc = rqf_cli("run", str(write_pipeline(tmp_path, config)))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("model.codebook_size: expected int, got 'abc'")


def test_debug_shows_the_traceback(tmp_path, recsys_files):
    config = recsys_pipeline(recsys_files, tmp_path / "run", splitter={"type": "leave_lst_out"})
    proc = rqf_cli("run", str(write_pipeline(tmp_path, config)), "--debug")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "did you mean 'leave_last_out'" in proc.stderr


@pytest.mark.parametrize("content, expected", [
    ("- a\n- b\n", ["is a list"]),
    ("name: [\n", ["invalid YAML"]),
    ("name: a\nstorage: {type: h5_recsys, items: missing.h5}\ndataset: items\nsplitter: index\n"
     "model: rqvae\n", ["missing.h5: file not found"]),
    ("name: a\nstorage: {type: nope}\n", ["storage.type: unknown storage 'nope'",
                                          "dataset: missing section", "splitter: missing section",
                                          "model: missing section"]),
    ("storage: {type: h5_recsys, itmes: a.h5}\ndataset: {type: items, extra: 1}\n"
     "splitter: index\nmodel: {type: rqvae, levels: two, codebok_size: 8}\ntrian: {}\n",
     ["trian: unknown top-level key; did you mean 'train'?",
      "storage.itmes: unknown key; did you mean 'items'?",
      "storage.items: missing required value", "dataset.extra: unknown key",
      "model.codebok_size: unknown key; did you mean 'codebook_size'?",
      "model.levels: expected int, got 'two'"]),
])
def test_cli_errors(tmp_path, capsys, content, expected):
    """Each problem of a pipeline is one line, and all of them are reported at once."""
    path = tmp_path / "p.yaml"
    path.write_text(content)
    code, _, err = call(capsys, "run", str(path))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == len(expected)
    assert all(line.startswith("error: ") for line in lines)
    for want in expected:
        assert sum(want in line for line in lines) == 1, want
    assert "Traceback" not in err


def test_missing_pipeline_file(capsys, tmp_path):
    code, _, err = call(capsys, "validate", str(tmp_path / "absent.yaml"))
    assert code == 2 and "pipeline file not found" in err


def test_validate_opens_files_and_splits(tmp_path, capsys, recsys_files):
    path = write_pipeline(tmp_path, recsys_pipeline(recsys_files, tmp_path / "run"))
    code, out, _ = call(capsys, "validate", str(path))
    assert code == 0
    assert '"input_dim": 16' in out and '"train": 210' in out
    assert not (tmp_path / "run").exists()


def test_plugins_lists_core_and_plugin_components(capsys):
    code, out, _ = call(capsys, "plugins", "--verbose")
    assert code == 0
    assert "builtin (rqf" in out and "splitter index" in out.replace("  ", " ").replace("  ", " ")
    assert "test_ratio (float, default 0.2)" in out
    assert "codebook_size (int, default 256)" in out


def test_run_refuses_to_overwrite_a_finished_run(tmp_path, capsys, recsys_files):
    path = write_pipeline(tmp_path, recsys_pipeline(recsys_files, tmp_path / "run"))
    assert call(capsys, "run", str(path))[0] == 0
    before = (tmp_path / "run" / "semantic_ids.h5").stat().st_mtime_ns
    code, _, err = call(capsys, "run", str(path))
    assert code == 2 and "holds a finished run; pass --force" in err
    assert (tmp_path / "run" / "semantic_ids.h5").stat().st_mtime_ns == before
    assert call(capsys, "run", str(path), "--force")[0] == 0
    assert (tmp_path / "run" / "semantic_ids.h5").stat().st_mtime_ns != before


def test_force_with_bad_input_keeps_previous_run(tmp_path, capsys, recsys_files):
    path = write_pipeline(tmp_path, recsys_pipeline(recsys_files, tmp_path / "run"))
    assert call(capsys, "run", str(path))[0] == 0
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    code, _, err = call(capsys, "run", str(path), "--force", "--set", "model.latent_dim=64")
    assert code == 2 and "model.latent_dim: 64 is larger than the input (16-d)" in err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before


def test_refuses_a_foreign_non_empty_directory(tmp_path, capsys, recsys_files):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    path = write_pipeline(tmp_path, recsys_pipeline(recsys_files, out))
    code, _, err = call(capsys, "run", str(path), "--force")
    assert code == 2 and "not an rqf run directory" in err
    assert (out / "thesis.tex").read_text() == "precious"


def test_run_writes_the_run_directory(tmp_path, capsys, recsys_files):
    path = write_pipeline(tmp_path, recsys_pipeline(recsys_files, tmp_path / "run"))
    code, out, _ = call(capsys, "run", str(path))
    assert code == 0 and "collisions" in out
    run = tmp_path / "run"
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "metrics.json", "model.pt", "semantic_ids.h5", "report.md",
            "checkpoints"} <= names
    assert not [n for n in names if n.endswith(".tmp")], "temporary files left behind"
    assert {".rqf-run.json", ".rqf-run.lock"} <= names  # the marker, and the lock it held
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["codebook_size"] == 16 and saved["train"]["lr"] == 1e-3
    report = (run / "report.md").read_text()
    assert "| train | 210 |" in report and "collision_rate" in report


def test_report_compares_two_runs(tmp_path, capsys, recsys_files):
    a = write_pipeline(tmp_path, recsys_pipeline(recsys_files, tmp_path / "a"))
    assert call(capsys, "run", str(a))[0] == 0
    assert call(capsys, "run", str(a), "--set", f"output_dir={tmp_path / 'b'}",
                "--set", "model.levels=3")[0] == 0
    code, out, _ = call(capsys, "report", str(tmp_path / "a"), str(tmp_path / "b"))
    assert code == 0
    assert "| test.recon_mse |" in out and "| difference |" in out
    (tmp_path / "a" / "report.md").unlink()
    assert call(capsys, "report", str(tmp_path / "a"))[0] == 0
    assert (tmp_path / "a" / "report.md").exists()


def test_inspect_unknown_file_kind(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    code, _, err = call(capsys, "inspect", str(path))
    assert code == 2 and "no installed storage recognises" in err
