"""The ``rqf`` command line. Errors print one line and exit non-zero; ``--debug`` shows more."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from rqf.errors import ConfigError, RqfError
from rqf.io import is_disk_full

EXIT_USER_ERROR = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rqf")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("--threads", default=None, envvar="RQF_THREADS", metavar="N|auto",
              help="CPU threads of torch for this command (env RQF_THREADS; default auto: the "
                   "cores other running processes leave; outranks a pipeline's train.threads).")
def cli(debug: bool, threads: str | None) -> None:
    """Train residual-quantized autoencoders on HDF5 embeddings and export discrete codes."""
    import os

    from rqf.threads import ENV, apply_threads, parse_threads

    n = parse_threads(threads, "--threads")
    if n is None:
        os.environ.pop(ENV, None)  # auto: a pipeline's own train.threads may still decide
    else:
        os.environ[ENV] = str(n)
    apply_threads(n)


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


@cli.command()
@click.argument("pipeline", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a value of the pipeline (repeatable).")
@click.option("--force", is_flag=True, help="Replace a finished run in output_dir.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def run(pipeline: Path, overrides: tuple[str, ...], force: bool, resume: bool, debug: bool) -> None:
    """Run PIPELINE: split, train, evaluate and export into its output_dir."""
    from rqf.pipeline import run as run_pipeline

    result = run_pipeline(pipeline, overrides, force=force, resume=resume, echo=_echo_err)
    if result.summary:
        click.echo(result.summary)
    if result.artifacts:  # rank 0 only under torchrun
        click.echo(f"run directory: {result.run_dir}")
        for name, path in result.artifacts.items():
            click.echo(f"  {name}: {path}")


@cli.command()
@click.argument("pipeline", type=click.Path(path_type=Path))
@click.option("--grid", "grid", multiple=True, metavar="KEY.PATH=V1,V2",
              help="Values to try for one key (repeatable: every combination runs).")
@click.option("--seeds", default=1, show_default=True,
              help="Runs per combination, with seeds seed, seed+1, ...")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The sweep folder (default: the pipeline's output_dir + _sweep).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a value of the pipeline for every run (repeatable).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def sweep(pipeline: Path, grid: tuple[str, ...], seeds: int, out: Path | None,
          overrides: tuple[str, ...], debug: bool) -> None:
    """Run PIPELINE for every combination of --grid values, one after another, each into its
    own folder under the sweep folder, and write the sweep's report.md (every metric side by
    side, mean ± sd over seeds). Started again, it keeps finished runs."""
    from rqf.sweep import sweep as run_sweep

    report = run_sweep(pipeline, grid, seeds, out, overrides, echo=_echo_err)
    click.echo(report.read_text())
    click.echo(f"sweep report: {report}")


@cli.command()
@click.argument("pipeline", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def validate(pipeline: Path, overrides: tuple[str, ...], debug: bool) -> None:
    """Check PIPELINE without training: components resolve, files open, shapes agree."""
    from rqf.pipeline import validate as validate_pipeline

    result = validate_pipeline(pipeline, overrides)
    cfg = result["config"]
    click.echo(f"{pipeline}: ok")
    click.echo(f"  storage {cfg['storage']['type']}, dataset {cfg['dataset']['type']}, "
               f"splitter {cfg['splitter']['type']}, model {cfg['model']['type']}")
    click.echo(f"  data: {json.dumps(result['data'], default=str)}")
    click.echo(f"  split: {json.dumps(result['split'].get('counts', {}))}")
    for note in result["adapted"]:
        click.echo(f"  {note}")


@cli.command()
@click.option("--verbose", "-v", is_flag=True, help="Also list every parameter with its help.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def plugins(verbose: bool, debug: bool) -> None:
    """List installed plugins, their components and parameters."""
    from rqf.plugins import get_plugins

    pm = get_plugins()
    for name, info in pm.info.items():
        click.echo(f"{name} ({info.distribution} {info.version})")
        for entry in pm.registry.entries():
            if entry.plugin != name:
                continue
            click.echo(f"  {entry.kind:<8} {entry.name:<16} {entry.cls.summary()}")
            if verbose:
                for p in entry.cls.params:
                    click.echo(f"      {p.describe()}")
                for p in getattr(entry.cls, "export_params", ()):
                    click.echo(f"      export.{p.describe()}")
    if verbose:
        from rqf.config import CORE_EXPORT_PARAMS
        from rqf.training import TRAIN_PARAMS

        click.echo("train (core training loop)")
        for p in TRAIN_PARAMS:
            click.echo(f"      {p.describe()}")
        click.echo("export (every run, beside its model's own)")
        for p in CORE_EXPORT_PARAMS:
            click.echo(f"      export.{p.describe()}")
    problems = [f"plugin {f.name!r} ({f.distribution} {f.version}) failed to load: {f.error}"
                for f in pm.failures] + pm.clashes()
    for problem in problems:
        _echo_err(f"error: {problem}")
    if problems:
        sys.exit(1)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--full", is_flag=True, help="Read every value (a large file may be sampled "
              "otherwise; the report says so).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def inspect(path: Path, full: bool, debug: bool) -> None:
    """Describe a data file or directory and list every problem found (exit 1 if any)."""
    from rqf.plugins import get_plugins

    storage = get_plugins().storage_for(path)
    report = storage.inspect(path, full=True) if full else storage.inspect(path)
    click.echo(report.render())
    if report.problems:
        sys.exit(1)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Where to write the codes (a file or folder outside the run; the model "
                   "decides, e.g. semantic_ids.h5 for items, a token cache for utterances).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Point the run's pipeline at new data, e.g. storage.items=new_items.h5.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@click.option("--join", is_flag=True, help="Write the run's own semantic IDs, unchanged, "
              "with the new items added, each on an ID no other item holds.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def encode(run_dir: Path, out: Path, overrides: tuple[str, ...], device: str, force: bool,
           join: bool, debug: bool) -> None:
    """Encode data with the model trained in RUN_DIR (any model that makes codes)."""
    from rqf.pipeline import encode as encode_run

    click.echo(f"wrote {encode_run(run_dir, out, overrides, device, force, join)}")


@cli.command()
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the schema here instead of printing it.")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def schema(out: Path | None, force: bool, debug: bool) -> None:
    """JSON Schema of a pipeline file for the installed plugins (for editors' completion)."""
    from rqf.config import pipeline_schema
    from rqf.io import check_output, write_text_atomic
    from rqf.plugins import get_plugins

    if out is not None:
        check_output(out, force)
    text = json.dumps(pipeline_schema(get_plugins().registry), indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
        return
    write_text_atomic(out, text)
    click.echo(f"wrote {out}")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def report(run_dirs: tuple[Path, ...], debug: bool) -> None:
    """Regenerate RUN_DIR/report.md (and its training curves), or, given several runs, print
    what differs in their configs and their metrics side by side."""
    from rqf.report import compare_runs, write_report

    if len(run_dirs) > 1:
        click.echo(compare_runs(*run_dirs))
        return
    click.echo(f"wrote {write_report(run_dirs[0])}")


@cli.command()
@click.argument("directory", required=False, default="demo_data", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the generators.")
@click.option("--force", is_flag=True, help="Replace files of the same names that rqf demo "
              "did not write.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def demo(directory: Path, seed: int, force: bool, debug: bool) -> None:
    """Write small, realistic demo data (every installed plugin's) into DIRECTORY; demo data
    written before is replaced, anything else only with --force."""
    from rqf.plugins import get_plugins

    if directory.exists() and not directory.is_dir():
        raise RqfError(f"{directory}: a file; rqf demo writes its data into a folder")
    pm = get_plugins()
    pm.pm.hook.check_demo_data(directory=directory, force=force)  # every check, then writes
    written = {}
    for impl in pm.pm.hook.write_demo_data.get_hookimpls():
        written.update(impl.function(directory=directory, seed=seed) or {})
    if not written:
        raise RqfError("no installed plugin writes demo data")
    for name, path in written.items():
        click.echo(f"wrote {name}: {path}")


from rqf.cli.ids import export as _export, ids, import_ as _import  # noqa: E402
from rqf.cli.recommend import recommend  # noqa: E402

cli.add_command(ids)
cli.add_command(recommend)
cli.add_command(_export, "export")  # the names they had before `rqf ids`
cli.add_command(_import, "import-ids")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        from rqf.plugins import get_plugins

        plugins = get_plugins()
        plugins.add_commands(cli)
        if args[:1] != ["plugins"]:  # which lists them as its problems
            for clash in plugins.clashes():
                _echo_err(f"warning: {clash}")
        cli.main(args=args, prog_name="rqf", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # a wrong option or value: one line, like any error
        where = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) else ""
        _echo_err(f"error: {where}{' '.join(exc.format_message().split())} (--help lists "
                  "the options)")
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):  # click turns Ctrl-C into Abort
        if args[:1] == ["run"] and len(args) > 1:
            # what a run wrote is whole: every file is renamed into place, checkpoints too
            _echo_err(f"interrupted: continue with rqf run {args[1]} --resume")
        else:
            _echo_err("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except RqfError as exc:
        if debug:
            raise
        # a pipeline's problems are reported all at once, one line each
        lines = str(exc).strip().splitlines() if isinstance(exc, ConfigError) else []
        for line in lines or [_one_line(exc)]:
            _echo_err(f"error: {line}")
        sys.exit(EXIT_USER_ERROR)
    except OSError as exc:
        if debug:
            raise
        if is_disk_full(exc):  # a write that no atomic_path guarded: name what was written
            where = getattr(exc, "filename", None) or "a file"
            _echo_err(f"error: no space left on device while writing {where}")
        else:
            _echo_err(f"error: {_one_line(exc)}")
        sys.exit(EXIT_USER_ERROR)
    except RecursionError:
        if debug:
            raise
        _echo_err("error: the input is nested too deeply to read")
        sys.exit(EXIT_USER_ERROR)
    except ValueError as exc:
        if debug:
            raise
        _echo_err(f"error: {_one_line(exc)}")
        sys.exit(EXIT_USER_ERROR)
    except Exception as exc:
        if debug:
            raise
        _echo_err(f"error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for the "
                  "traceback)")
        sys.exit(1)
