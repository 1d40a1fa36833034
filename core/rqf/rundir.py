"""The run folder: what rqf may write, delete and resume in it.

A run folder carries a marker, ``.rqf-run.json``, written by rqf while the folder is still
empty. The marker claims the names rqf will write there (the core's files and the model's
declared outputs); a claim ``folder/pattern`` names the files rqf writes inside a claimed
folder. ``--force`` and ``--resume`` remove only claimed files (and the temporary files rqf
makes beside them), and a claimed folder only once nothing else is left in it. A claim that no
installed component would make is refused: the marker was edited. A folder without the marker
is not rqf's to delete. One ``rqf run`` writes a folder at a time: it holds an OS lock on it
for the whole run. Every check that can refuse a run runs before anything here changes: a
resumed run prepares the folder (``begin_resume``) only once its checkpoint was loaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping


from rqf.errors import ConfigError, RqfError
from rqf.io import FolderLock, temporaries_of, write_json_atomic

MARKER = ".rqf-run.json"
MARKER_FORMAT = "rqf-run-1"
LOCK_NAME = ".rqf-run.lock"
FINISHED_MARKER = "metrics.json"
MODEL_FILE = "model.pt"
CORE_OUTPUTS = ("config.yaml", "metrics.json", "report.md", "training_curves.png", MODEL_FILE,
                "checkpoints",
                "checkpoints/step_*.pt", "checkpoints/best.pt")
# written after training: stale once training goes on, so a resume removes them first
RESULTS = ("metrics.json", "report.md", "training_curves.png")
# train keys a resume may change: they decide how long, where and how visibly training
# runs, not what one step computes. The budget (epochs, max_steps) may only grow.
RESUME_MAY_CHANGE = ("epochs", "max_steps", "device", "compile", "progress", "log_every",
                     "eval_every", "checkpoint_every", "checkpoint_minutes", "keep_checkpoints",
                     "num_workers", "trackers", "threads")
SAME_ON_RESUME = ("seed", "storage", "dataset", "splitter", "model")


def read_run_config(path: Path) -> dict[str, Any]:
    """A run's saved ``config.yaml``; a broken one is an error that names the file."""
    from rqf.config import load_yaml

    try:
        return load_yaml(path)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (the saved pipeline of the run)") from None


class RunFolder:
    """One run's output folder, checked before a run writes into it."""

    def __init__(self, path: Path | str, outputs: Iterable[str] = (),
                 known: Iterable[str] = (), kept: Iterable[str] = ()) -> None:
        """``outputs``: what this run's model writes; ``known``: what any installed model may
        write, so a marker left by a run of another model is honoured; ``kept``: outputs a
        resume goes on writing (a tracker's log) instead of removing."""
        self.path = Path(path)
        self.kept = frozenset(kept)
        self.claims = tuple(dict.fromkeys((*CORE_OUTPUTS, *outputs)))
        self.known = frozenset((*self.claims, *known))
        self.lock = FolderLock(self.path, "rqf run", LOCK_NAME)

    # -- what is there --------------------------------------------------------------------
    def entries(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if not p.name.startswith("."))

    def marker(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.path / MARKER).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT \
                or not isinstance(data.get("claims"), list):
            return None
        return data

    def marker_claims(self) -> list[str]:
        """The marker's claims, each one a name rqf writes; a forged claim is refused."""
        marker = self.marker()
        if marker is None:
            return []
        for name in marker["claims"]:
            if name not in self.known:
                raise RqfError(f"{self.path / MARKER}: claims {name!r}, which rqf never writes; "
                               "the marker was edited by hand, so nothing in this folder is "
                               "deleted (restore the marker, or clear the folder yourself)")
        return list(marker["claims"])

    def owned(self) -> list[Path]:
        """Top-level entries the marker proves rqf wrote: claimed names and their temporaries."""
        found = []
        for name in self.marker_claims():
            if "/" in name:
                continue  # files inside a claimed folder: removed with the folder
            for p in (self.path / name, self.path / (name + ".partial"),
                      *temporaries_of(self.path, name)):
                if p.exists() or p.is_symlink():
                    found.append(p)
        return found

    # -- checks before anything is written ------------------------------------------------
    def check(self, force: bool, resume: bool, cfg: Mapping[str, Any]) -> None:
        out = self.path
        if not out.exists():
            if resume:
                raise RqfError(f"--resume: {out} does not exist, there is nothing to resume")
            return
        if not out.is_dir():
            raise RqfError(f"output_dir: {out} exists and is not a directory")
        if not self.entries():
            return
        if self.marker() is None:
            raise RqfError(f"output_dir: {out} is not empty and is not an rqf run directory (no "
                           f"{MARKER} marker); rqf writes into, resumes and deletes only folders it made: choose "
                           "another output_dir")
        self.marker_claims()  # a forged claim is refused before anything is removed
        holder = self.lock.busy()
        if holder:
            raise RqfError(f"{out}: another rqf run is writing here ({holder}); one writer at a "
                           "time")
        finished = (out / FINISHED_MARKER).exists()
        if resume:
            saved = read_run_config(out / "config.yaml")
            for key in SAME_ON_RESUME:
                if saved.get(key) != cfg[key]:
                    raise RqfError(f"--resume: {key} differs from the run in {out}/config.yaml; "
                                   "resume needs the same pipeline")
            extended = check_train_on_resume(saved.get("train") or {}, cfg["train"],
                                             out / "config.yaml")
            if finished and not extended:
                raise RqfError(f"--resume: the run in {out} already finished; raise "
                               "train.max_steps (or train.epochs) to train it longer, or use "
                               "--force to redo it")
            return
        if force:
            blocked = [k for k in self._remove(self.owned(), dry_run=True)
                       if k.split("/")[0] not in CORE_OUTPUTS]
            if blocked:
                raise RqfError(f"--force: {out / blocked[0]} was not written by rqf, and the run "
                               f"writes {blocked[0].split('/')[0]}/ anew: move it out first")
            return
        if finished:
            raise RqfError(f"output_dir: {out} holds a finished run; pass --force to replace it "
                           "or choose another output_dir")
        raise RqfError(f"output_dir: {out} holds an unfinished run; pass --resume to continue it "
                       "or --force to start over")

    # -- writing --------------------------------------------------------------------------
    def open(self, force: bool, resume: bool, cfg: Mapping[str, Any],
             echo: Callable[[str], None]) -> None:
        """Create the folder, take its lock and check it again under the lock; ``--force``
        then removes what rqf wrote. A resumed folder is left as it is until ``begin_resume``."""
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except BaseException:
            if created:
                shutil.rmtree(self.path, ignore_errors=True)
            raise
        try:
            self.check(force, resume, cfg)  # again: another run may have written meanwhile
            if resume:
                return
            if force:
                kept = self._remove(self.owned()) + [p.name for p in self.entries()
                                                       if p.name not in self.claims]
                if kept:
                    echo(f"--force: kept {', '.join(sorted(set(kept)))} in {self.path} "
                         "(not written by rqf)")
            self._write_marker()
        except BaseException:
            self.lock.release()
            raise

    def begin_resume(self) -> None:
        """Remove what going on with training makes stale (results, exports, temporaries);
        called once every check of the resume passed (its checkpoint loaded)."""
        self._remove([p for p in self.owned() if p.name not in self.kept and (
            p.name in RESULTS or (p.name not in CORE_OUTPUTS and p.name.removesuffix(".partial")
                                  in self.claims) or p.name.endswith(".tmp"))])
        self._write_marker()

    def _write_marker(self) -> None:
        write_json_atomic(self.path / MARKER, {"format": MARKER_FORMAT, "claims": list(self.claims)})

    def _remove(self, paths: Iterable[Path], dry_run: bool = False) -> list[str]:
        """Remove claimed files, and claimed folders' claimed files; what else a folder holds
        stays, and so does the folder. Returns what was (or, on a dry run, would be) kept."""
        kept: list[str] = []
        patterns: dict[str, list[str]] = {}
        for claim in self.marker_claims():
            folder, _, pattern = claim.partition("/")
            if pattern:
                patterns.setdefault(folder, []).append(pattern)
        for p in paths:
            if not p.is_dir() or p.is_symlink():
                if not dry_run:
                    p.unlink(missing_ok=True)
                continue
            theirs = {f for pattern in patterns.get(p.name.removesuffix(".partial"), [])
                      for f in (*p.glob(pattern), *temporaries_of(p, pattern))
                      if f.is_file() or f.is_symlink()}
            left = sorted(f.name for f in p.iterdir() if f not in theirs)
            kept += [f"{p.name}/{name}" for name in left]
            if dry_run:
                continue
            for f in theirs:
                f.unlink()
            if not left:
                p.rmdir()
        return kept

    def close(self) -> None:
        self.lock.release()


def check_train_on_resume(saved: Mapping[str, Any], new: Mapping[str, Any], source: Path) -> bool:
    """Refuse train changes that alter what one step computes; True when the budget grew."""
    changed = sorted(k for k in set(saved) | set(new)
                     if k not in RESUME_MAY_CHANGE and saved.get(k) != new.get(k))
    if changed:
        k = changed[0]
        raise RqfError(f"--resume: train.{k} is {new.get(k)!r}, the run in {source} trained with "
                       f"{saved.get(k)!r}; a resume may change only "
                       f"{', '.join('train.' + n for n in RESUME_MAY_CHANGE)} (--force starts over)")
    grew = False
    for key in ("epochs", "max_steps"):  # None: no limit from this key
        old, cur = saved.get(key), new.get(key)
        if old == cur:
            continue
        if cur is not None and (old is None or cur < old):
            raise RqfError(f"--resume: train.{key} {cur!r} would shorten the budget of the run in "
                           f"{source} (it was {old!r}); a resume may lengthen it, not shorten it")
        grew = True
    return grew
