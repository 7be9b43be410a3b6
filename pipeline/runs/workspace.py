"""Versioned runs: each run works in its own git worktree, runs stages through DVC, and is committed.

A run gets a worktree on branch ``runs/<name>`` (so two runs never share DVC's lock), with the run's
param overrides written into its params.yaml. Stages run with ``dvc repro <stage>`` so dvc.yaml stays
the one definition of the graph and unchanged stages are skipped (or restored from DVC's run cache,
shared through one cache directory). At the end, params.yaml and dvc.lock are committed and tagged
``run-<name>``, and the outputs are pushed to the DVC remote: ``git checkout run-<name> && dvc pull``
restores exactly that run. Nothing here knows about Prefect.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline.common.errors import EXIT_TRANSIENT, TransientError
from pipeline.common.io import read_json, write_text
from pipeline.common.run_names import branch_of, tag_of
from pipeline.common.processes import RESUME_ENV, CommandTimeout, run_command, signal_name
from pipeline.common.logs import get_logger
from pipeline.config import OrchestrateParams, apply_overrides, load_params, validate_params
from pipeline.project import DVC_YAML
from pipeline.project import dvc as _dvc

__all__ = ["RunWorkspace", "StageResult", "StageFailed", "runs_root", "prune_runs", "release_run", "push_waits"]
log = get_logger(__name__)

_EXITED = re.compile(r"exited with (-?\d+)")
_RESUMED = re.compile(r"resuming at phase \d+ epoch \d+")  # pipeline/training/loop.py's line on resume
_COMMAND_LIMIT = "orchestrate.command_timeout_s"
_UNCONFIGURED_S = 600.0  # git commands run before a run's params are read (reading them, making the worktree)
_CLAIMS_DIR = "tlops-runs"  # in the git common dir: one lock file per run, held by the process running it
# (project, run) -> its lock file and the descriptor whose flock marks the run in progress in this process
_claims: dict[tuple[Path, str], tuple[Path, int]] = {}


class StageFailed(RuntimeError):
    """A stage failed for a reason a retry cannot fix (bad data, bad params, a bug)."""


@dataclass
class StageResult:
    """What happened to one stage in one run."""

    stage: str
    status: str  # "ran" | "skipped" (up to date) | "restored" (from DVC's run cache)
    seconds: float
    log_tail: str = field(repr=False, default="")
    resumed: str | None = None  # where a resumed training stage picked up, e.g. "resuming at phase 2 epoch 3"

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "status": self.status, "seconds": round(self.seconds, 2), "resumed": self.resumed}


@dataclass
class RunWorkspace:
    """One run's git worktree inside ``<project>/<runs_dir>/<name>``."""

    project: Path
    name: str
    path: Path

    @property
    def branch(self) -> str:
        return branch_of(self.name)

    @property
    def tag(self) -> str:
        return tag_of(self.name)

    @functools.cached_property
    def limits(self) -> OrchestrateParams:
        """The run's own time limits (its params.yaml, overrides included)."""
        return load_params(self.path / "params.yaml").orchestrate

    def _git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _git(self.path, *args, check=check, timeout=self.limits.command_timeout_s)

    def _dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _dvc(self.path, *args, check=check, timeout=self.limits.command_timeout_s, limit_name=_COMMAND_LIMIT)

    @classmethod
    def create(cls, project: Path, name: str, runs_dir: str | None = None,
               overrides: dict[str, Any] | None = None, base: str = "HEAD") -> "RunWorkspace":
        """Make the worktree from the project's HEAD and write the run's param overrides.

        The run counts as in progress (:func:`prune_runs` leaves it alone) until :func:`release_run` or
        until this process ends, however it ends.

        Args:
            project: the project root (a git repository with DVC initialised).
            name: the run name (branch ``runs/<name>``, tag ``run-<name>``).
            runs_dir: folder of run worktrees, relative to the project or absolute (default: the
                project's ``orchestrate.runs_dir``).
            overrides: ``{"finetune.epochs": 3, ...}``; validated before anything is created.
            base: the commit or tag to start from (e.g. ``run-<name>`` to revisit an earlier run).
        Returns:
            The workspace.
        """
        project = project.resolve()
        path = runs_root(project, runs_dir) / name
        raw = yaml.safe_load(_git(project, "show", f"{base}:params.yaml").stdout) or {}
        pairs = [(key.split("."), value) for key, value in (overrides or {}).items()]
        merged = apply_overrides(raw, pairs)
        limits = validate_params(merged, source=f"run {name} parameters").orchestrate  # bad UI input: no git work
        if path.exists():
            raise FileExistsError(f"{path}: a run named {name!r} already exists")
        _claim(project, name)  # before the worktree exists: prune_runs never sees it unclaimed
        try:
            _git(project, "worktree", "add", "-q", "-b", branch_of(name), str(path), base,
                 timeout=limits.command_timeout_s)
        except BaseException:
            release_run(project, name)
            raise
        if overrides:  # before any command: the run's own limits apply to all of them
            write_text(path / "params.yaml", yaml.safe_dump(merged, sort_keys=False))
        workspace = cls(project, name, path)
        workspace._share_dvc_state()
        if not (path / "dvc.lock").exists():
            workspace._resume_from_last_run()
        return workspace

    def _resume_from_last_run(self) -> None:
        """Start from the newest earlier run's dvc.lock and outputs, so that DVC re-runs only what changed.

        dvc.lock is DVC's record of what each stage last ran on; with it and the outputs checked out of
        the shared cache, `dvc repro` compares the current code, data and params against that record and
        skips every stage whose inputs are unchanged.
        """
        limit = self.limits.command_timeout_s
        tags = _git(self.project, "for-each-ref", "--sort=-creatordate", "--format=%(refname:short)",
                    "refs/tags/run-*", timeout=limit).stdout.split()
        for tag in tags:
            lock = _git(self.project, "show", f"{tag}:dvc.lock", check=False, timeout=limit)
            if lock.returncode == 0:
                write_text(self.path / "dvc.lock", lock.stdout)
                # outputs missing from the cache just make their stages run again
                self._dvc("checkout", "--relink", check=False)
                log.info("run %s starts from the state of %s", self.name, tag)
                return

    @classmethod
    def open(cls, project: Path, name: str, runs_dir: str | None = None) -> "RunWorkspace":
        """Return the existing workspace of run ``name``."""
        project = project.resolve()
        path = runs_root(project, runs_dir) / name
        if not (path / DVC_YAML).is_file():
            raise FileNotFoundError(f"{path}: no run workspace named {name!r}")
        return cls(project, name, path)

    def _share_dvc_state(self) -> None:
        """Point the worktree at the project's DVC cache (so the run cache is shared) and remotes."""
        # DVC's own config reader and writer, in this process: what `dvc cache dir --local` and `dvc remote modify
        # --local` write, without a DVC process per setting at every run's start (0.47 s wall, 0.4 s CPU each here)
        from dvc.config import Config, ConfigError

        local = self.path / ".dvc" / "config.local"
        main_local = self.project / ".dvc" / "config.local"
        if main_local.exists():
            local.write_text(main_local.read_text())
        try:
            project = Config(dvc_dir=str(self.project / ".dvc"))  # relative folders resolved against its .dvc
            worktree = Config(dvc_dir=str(self.path / ".dvc"))
            known = set(worktree["remote"])  # the remotes of the run's commit (an older base may lack newer ones)
            with worktree.edit("local") as config:
                config["cache"]["dir"] = str(project["cache"].get("dir") or self.project / ".dvc" / "cache")
                for name, conf in project["remote"].items():
                    url = str(conf["url"])
                    if name in known and "://" not in url:  # a local folder: the project's, not one under the run
                        config["remote"].setdefault(name, {})["url"] = url
        except ConfigError as err:
            raise RuntimeError(f"{local}: the run's DVC settings (the project's {main_local} and its cache and "
                               f"remotes) could not be written: {err}") from None

    def repro(self, stage: str, resume: bool = False, on_line: Callable[[str], None] | None = None,
              upstream_done: bool = False) -> StageResult:
        """Run ``dvc repro <stage>`` in the worktree and say whether it ran, was skipped or restored.

        Args:
            stage: the stage name.
            resume: a retry of a stage that was killed: training stages continue from their last
                checkpoint in this worktree (``TLOPS_RESUME=1``; the command in dvc.yaml is unchanged).
            on_line: receives each line the stage prints while it runs (per-epoch lines, progress).
            upstream_done: the caller has just run every stage this one depends on in this worktree (a chain
                run in order): DVC checks this stage alone (``--single-item``) instead of walking its whole
                upstream graph again (0.5 to 0.6 s of CPU a stage's check instead of 0.8 to 1.0 s on the tiny
                chain). Its dependencies are still compared with dvc.lock, so a changed input still runs it.
        Raises:
            StageFailed: the stage failed on bad input or a bug, or ran past its limit (no retry).
            TransientError: the stage reported a network or storage failure, or was killed by a
                signal (preempted, killed by an operator or the OOM killer): a retry may succeed.
        """
        started = time.perf_counter()
        limit = self.limits.stage_timeouts.get(stage, self.limits.stage_timeout_s)
        limit_name = (f"orchestrate.stage_timeouts.{stage}" if stage in self.limits.stage_timeouts
                      else "orchestrate.stage_timeout_s")
        try:
            proc = _dvc(self.path, "repro", *(["--single-item"] if upstream_done else []), stage, check=False,
                        timeout=limit, limit_name=limit_name,
                        extra_env={RESUME_ENV: "1"} if resume else None, on_line=on_line)
        except CommandTimeout as err:
            raise StageFailed(f"stage {stage} timed out: {err}") from None
        output = proc.stdout + proc.stderr
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            codes = [_as_signal(int(c)) for c in _EXITED.findall(output)] or [_as_signal(proc.returncode)]
            tail = "\n".join(output.strip().splitlines()[-15:])
            if EXIT_TRANSIENT in codes:
                raise TransientError(f"stage {stage} hit a transient failure:\n{tail}")
            if codes[-1] < 0:  # the stage (or DVC itself) died by a signal: no verdict on the data or code
                raise TransientError(f"stage {stage} was killed by {signal_name(-codes[-1])}; a retry resumes "
                                       f"it in {self.path}:\n{tail}")
            raise StageFailed(f"stage {stage} failed (exit {codes[-1]}):\n{tail}")
        if f"Running stage '{stage}'" in output:
            status = "ran"
        elif re.search(rf"Stage '{stage}' is cached", output):
            status = "restored"
        else:
            status = "skipped"
        log.info("stage %s %s in %.1fs", stage, status, seconds)
        resumed = _RESUMED.search(output)
        return StageResult(stage, status, seconds, output[-4000:], resumed.group(0) if resumed else None)

    def commit(self, message: str) -> str:
        """Commit params.yaml and dvc.lock on the run branch, tag it, and return the commit sha."""
        self._git("add", "params.yaml", "dvc.lock")
        # a machine with no git identity (a fresh CI box, a container) still gets its runs versioned
        who = [] if self._git("config", "user.email", check=False).stdout.strip() else [
            "-c", "user.name=tlops", "-c", "user.email=tlops@localhost"]
        self._git(*who, "commit", "-q", "--allow-empty", "-m", message)
        self._git("tag", "-f", self.tag)
        return self._git("rev-parse", "HEAD").stdout.strip()

    def checkout(self) -> None:
        """Materialise the outputs that this checkout's dvc.lock names (from the cache, else the remote)."""
        if self._dvc("checkout", check=False).returncode != 0:
            proc = self._dvc("pull", check=False)
            if proc.returncode != 0:
                raise TransientError(f"dvc pull failed in {self.path}: {(proc.stdout + proc.stderr).strip()[-800:]}")

    def predict(self, source: str, out: str, on_line: Callable[[str], None] | None = None) -> dict[str, Any]:
        """``tlops predict <source>`` with the registry's champion, in the worktree (its params), within the
        stage limit; returns the predictions' summary (``<out>/summary.json``).

        Raises:
            StageFailed / TransientError: as :meth:`repro` (exit 75 is transient).
        """
        try:
            proc = run_command([sys.executable, "-m", "pipeline.cli", "predict", source, "--out", out], self.path,
                               timeout=self.limits.stage_timeout_s, limit_name="orchestrate.stage_timeout_s",
                               on_line=on_line)
        except CommandTimeout as err:
            raise StageFailed(f"predictions on {source} timed out: {err}") from None
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            failure = TransientError if proc.returncode == EXIT_TRANSIENT else StageFailed
            raise failure(f"predictions on {source} failed (exit {proc.returncode}):\n{tail}")
        return read_json(self.path / out / "summary.json")

    def push(self) -> None:
        """Push the run's DVC outputs to the default remote, retried with backoff.

        A retry costs little: DVC uploads only the objects the remote lacks, and an object is visible on
        the remote only once whole (S3 creates an object when its upload completes; a folder remote gets
        a temporary file renamed into place), so a push cut off by a fault or a kill leaves nothing
        partial behind.

        Raises:
            TransientError: still failing after ``orchestrate.push_retries`` retries (fewer when the waits
                would pass ``orchestrate.command_timeout_s``, see :func:`push_waits`); names the remote's last error.
        """
        waits = push_waits(self.limits)
        attempts = len(waits) + 1
        for attempt in range(1, attempts + 1):
            try:
                proc = self._dvc("push", check=False)
                failure = None if proc.returncode == 0 else _last_error(proc.stdout + proc.stderr, proc.returncode)
            except CommandTimeout as err:
                failure = str(err)
            if failure is None:
                return
            if attempt < attempts:
                wait = waits[attempt - 1]
                log.warning("dvc push failed (attempt %d of %d), again in %g s: %s", attempt, attempts, wait, failure)
                time.sleep(wait)
        cut = (f" (orchestrate.push_retries = {self.limits.push_retries}, cut to {len(waits)} so that the waits stay "
               f"within orchestrate.command_timeout_s = {self.limits.command_timeout_s:g} s)"
               if len(waits) < self.limits.push_retries else "")
        raise TransientError(f"dvc push from {self.path} failed {attempts} times{cut}; last error: {failure}")


def push_waits(limits: OrchestrateParams) -> list[float]:
    """The waits before each `dvc push` retry: ``push_backoff_s``, doubled each time, each at most
    ``push_backoff_max_s``, at most ``push_retries`` of them, and together at most ``command_timeout_s``
    (a retry whose wait would pass that is not made: 20 doublings from 2 s would otherwise wait weeks)."""
    waits: list[float] = []
    delay = limits.push_backoff_s
    for _ in range(limits.push_retries):
        wait = min(delay, limits.push_backoff_max_s)
        if sum(waits) + wait > limits.command_timeout_s:
            break
        waits.append(wait)
        delay *= 2
    return waits


def runs_root(project: Path, runs_dir: str | None = None) -> Path:
    """The folder of run worktrees: ``runs_dir``, else the project's ``orchestrate.runs_dir``; relative
    paths are taken from the project (the main checkout)."""
    folder = Path(runs_dir or load_params(project / "params.yaml").orchestrate.runs_dir).expanduser()
    return folder if folder.is_absolute() else project / folder


def prune_runs(project: Path, keep: int, runs_dir: str | None = None) -> list[str]:
    """Remove the worktrees of the runs that are over but the newest ``keep``; return the names removed.

    A run is over unless a process holds it (:meth:`RunWorkspace.create` until :func:`release_run` or the
    end of that process, whatever ends it): finished (its tag exists: committed and pushed), or failed,
    cancelled or abandoned (no tag). Finished runs count by their tag's date, the others by when their
    worktree was made, all together newest first. A finished run's tag stays, with the commit that names
    its data and models in dvc.lock, so ``git checkout run-<name> && dvc pull`` restores it; only the
    working files and the run branch go. A run that is over without a tag loses its worktree and branch
    (nothing of it was versioned). A run in progress is never touched.
    """
    project = project.resolve()
    orchestrate = load_params(project / "params.yaml").orchestrate  # read once: the folder and the limit
    root = runs_root(project, runs_dir or orchestrate.runs_dir)
    limit = orchestrate.command_timeout_s
    listing = _git(project, "worktree", "list", "--porcelain", timeout=limit).stdout
    names = [Path(line[len("worktree "):]).name for line in listing.splitlines()
             if line.startswith("worktree ") and Path(line[len("worktree "):]).parent == root]
    refs = _git(project, "for-each-ref", "--format=%(refname:short) %(creatordate:unix)", "refs/tags/run-*",
                timeout=limit).stdout.split("\n")
    tagged = {ref.split()[0][len("run-"):]: float(ref.split()[1]) for ref in refs if ref.strip()}
    claims = _claims_dir(project)
    over = [name for name in names if not _in_progress(claims / f"{name}.lock")]
    over.sort(key=lambda name: tagged[name] if name in tagged else _made_at(root / name), reverse=True)
    removed = []
    for name in over[keep:]:
        _git(project, "worktree", "remove", "--force", str(root / name), timeout=limit)
        _git(project, "branch", "-D", branch_of(name), check=False, timeout=limit)
        (claims / f"{name}.lock").unlink(missing_ok=True)
        removed.append(name)
        if name in tagged:
            log.info("removed the worktree of run %s (tag %s kept)", name, tag_of(name))
        else:
            log.info("removed the worktree of run %s (failed or abandoned: no tag)", name)
    return removed


def release_run(project: Path, name: str) -> None:
    """Mark run ``name`` as over in this process (:func:`prune_runs` may then count it); no-op if not held.

    Runs no command, so it is safe in a ``finally`` while a cancel unwinds.
    """
    _, fd = _claims.pop((project.resolve(), name), (None, None))
    if fd is not None:
        os.close(fd)  # drops the flock


def _claims_dir(project: Path) -> Path:
    """``<git common dir>/tlops-runs``: the runs' lock files, shared by the main checkout and every worktree."""
    common = _git(project, "rev-parse", "--path-format=absolute", "--git-common-dir").stdout.strip()
    return Path(common) / _CLAIMS_DIR


def _claim(project: Path, name: str) -> None:
    """Mark run ``name`` in progress: an flock on its lock file, held by this process until released.

    The kernel drops the lock when the process ends, however it ends, so a run whose process was killed
    counts as abandoned, never as running forever.

    Raises:
        FileExistsError: another process holds run ``name``.
    """
    path = _claims_dir(project) / f"{name}.lock"
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by the commands this process starts
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FileExistsError(f"{path}: run {name!r} is in progress in another process") from None
    _claims[(project.resolve(), name)] = (path, fd)


def _in_progress(lock: Path) -> bool:
    """Whether a process (this one included) holds the run of lock file ``lock``."""
    if any(lock == held for held, _ in _claims.values()):
        return True
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:  # a worktree made without one (by hand, or before runs were claimed)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _made_at(worktree: Path) -> float:
    """When the worktree was made: its ``.git`` file, written once by `git worktree add`."""
    try:
        return (worktree / ".git").stat().st_mtime
    except OSError:  # its folder is gone: the oldest of all
        return 0.0


def _last_error(output: str, code: int) -> str:
    """DVC's ERROR line (its one-line cause), else its last line, else the exit status."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    if errors:
        return errors[-1]
    return lines[-1] if lines else (f"killed by {signal_name(-code)}" if code < 0 else f"exit {code}")


def _as_signal(code: int) -> int:
    """A shell's 128+N for a child killed by signal N as -N, as Python reports it.

    DVC runs the command through $SHELL, or /bin/sh when it is unset (a CI box, a worker); dash forks the
    command and exits 128+N where bash would have exec'd it and DVC would see -N.
    """
    return -(code - 128) if 128 < code <= 128 + 64 else code


def _git(cwd: Path, *args: str, check: bool = True, timeout: float = _UNCONFIGURED_S) -> subprocess.CompletedProcess:
    proc = run_command(["git", *args], cwd, timeout=timeout, limit_name=_COMMAND_LIMIT)
    if check and proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip()}")
    return proc
