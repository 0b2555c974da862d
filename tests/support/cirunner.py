"""Run a repository's CI definitions on this machine the way GitHub Actions and GitLab CI do.

Each job runs in its service's fixed workspace path (GitHub: ``…/home/runner/work/R/R``, GitLab:
``…/builds/G/P``), which holds nothing when the job starts: the previous job's workspace, home
and temporary directory are moved aside under ``used/`` (kept there so that a test can search
every file a job left). A job starts from a fresh copy of the repository and gets nothing from
the jobs before it but what the definitions hand on: job outputs, artifacts and caches, each
kept by the runner in a store of its own. Steps and scripts run with bash, as the services run
them, in an environment made from scratch.

What a definition uses that is not simulated here (a key, an action, an expression function,
a variable reference, an image) raises :class:`DefinitionError`: a changed definition cannot
skip a step unnoticed.

Deliberate differences from the hosted services:

- One machine runs every job, one after another, and its Docker engine is shared by all of
  them: images one job built (the builder image, the target's build image) are still there for
  the next job and the next run, where a hosted job starts with an empty engine. No registry is
  reachable: an image a definition pulls must be on the engine already (the caller tags it).
- The runner image is this Debian 12 machine. ``sudo`` is a shim (everything runs as root
  already), and so is ``apt-get``: ``update`` does nothing and ``install`` checks that every
  package asked for is installed, installing nothing. ``actions/setup-python`` and GitLab's
  ``python:X.Y`` images are a fresh virtual environment of this machine's Python (same minor
  version, or the job fails) with its site packages visible, so no dependency is downloaded.
- Secrets and masked variables are not masked in logs, so that a leak shows.
- ``hashFiles`` hashes the same files in a stable order, but not to GitHub's exact digest.
- GitLab job images are not pulled: the job runs on this machine, as a shell executor would.
  The ``docker:*-dind`` service is this machine's engine: ``DOCKER_HOST`` points at it instead
  of ``tcp://docker:2375``.
"""

from __future__ import annotations

import calendar
import fnmatch
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import docker
import yaml

from builder.builds import container
from tests.support import ghexpr

STEP_TIMEOUT = 1200.0
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What this machine's network and package tools need, as a runner image would have it set.
PASSTHROUGH = re.compile(
    r"(PIP_[A-Z_]+|https?_proxy|HTTPS?_PROXY|no_proxy|NO_PROXY|SSL_CERT_(FILE|DIR)"
    r"|REQUESTS_CA_BUNDLE)"
)
GLOB_CHARACTERS = re.compile(r"[*?\[\]{}!]")

SUDO_SHIM = """#!/bin/sh
# sudo on a runner where everything runs as root already.
exec "$@"
"""
APT_SHIM = """#!/bin/sh
# apt-get on a simulated runner image: installs nothing, checks that what a job asks for is
# installed on this machine.
command=
missing=
for arg in "$@"; do
    case $arg in
        -*) ;;
        *) if [ -z "$command" ]; then command=$arg; continue; fi
           if [ "$command" = install ]; then
               status=$(dpkg-query -W -f='${Status}' "$arg" 2>/dev/null)
               [ "$status" = "install ok installed" ] || missing="$missing $arg"
           fi ;;
    esac
done
case $command in
    update) echo "apt-get update: the simulated runner uses this machine's package lists" ;;
    install)
        if [ -n "$missing" ]; then
            echo "apt-get install: not installed on this machine:$missing" >&2
            exit 100
        fi
        echo "apt-get install: every package asked for is installed" ;;
    *) echo "apt-get $command: not simulated" >&2; exit 100 ;;
esac
"""


class DefinitionError(AssertionError):
    """A definition uses something this runner does not simulate."""


class JobFailed(AssertionError):
    """A job of the pipeline failed; the message ends with the tail of its log."""


def check_keys(where: str, mapping: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(map(str, mapping)) - allowed)
    if unknown:
        raise DefinitionError(f"{where}: {', '.join(unknown)} not simulated")


def plain_path(where: str, value: Any) -> str:
    """A path relative to the workspace, without globs or variables."""
    if not isinstance(value, str) or not value.strip():
        raise DefinitionError(f"{where}: {value!r} is not a path")
    text = value.strip()
    if GLOB_CHARACTERS.search(text) or "$" in text or text.startswith(("/", "~")):
        raise DefinitionError(f"{where}: {text!r}: only plain relative paths are simulated")
    if ".." in Path(text).parts:
        raise DefinitionError(f"{where}: {text!r} leaves the workspace")
    return text.rstrip("/")


def copy_into(source: Path, destination: Path, *, links: bool, hidden: bool = True) -> int:
    """Copy a file or a directory's tree to ``destination``; the number of files copied.

    ``links``: keep symlinks as symlinks (tar, zip), else copy what they point at;
    ``hidden``: copy names starting with a dot too."""

    def ignore(_directory: str, names: list[str]) -> list[str]:
        return [] if hidden else [name for name in names if name.startswith(".")]

    if source.is_symlink() and links:
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.symlink_to(os.readlink(source))
        return 1
    if source.is_dir():
        shutil.copytree(source, destination, symlinks=links, ignore=ignore, dirs_exist_ok=True)
        return sum(1 for p in destination.rglob("*") if not p.is_dir() or p.is_symlink())
    if source.is_file():
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
        return 1
    return 0


@dataclass(frozen=True)
class JobResult:
    name: str
    log: Path
    outputs: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@dataclass(frozen=True)
class JobDirs:
    name: str
    workspace: Path
    temp: Path
    home: Path
    tools: Path
    log: Path


@dataclass
class Machine:
    """This machine as a runner: shims, the jobs' used directories, the engine."""

    root: Path
    repository: Path  # what a checkout copies
    client: docker.DockerClient
    engine: str = "unix:///var/run/docker.sock"
    python: str = sys.executable
    jobs_run: int = 0
    started: float = field(default_factory=time.time)
    timings: list[tuple[str, float]] = field(default_factory=list)  # (job, seconds)

    def __post_init__(self) -> None:
        shims = self.bin
        shims.mkdir(parents=True, exist_ok=True)
        for name, text in (("sudo", SUDO_SHIM), ("apt-get", APT_SHIM)):
            (shims / name).write_text(text)
            (shims / name).chmod(0o755)
        (self.root / "logs").mkdir(exist_ok=True)
        (self.root / "used").mkdir(exist_ok=True)

    @property
    def bin(self) -> Path:
        return self.root / "shims"

    def environment(self, dirs: JobDirs, path: Sequence[Path] = ()) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if PASSTHROUGH.fullmatch(name)}
        env.update(
            PATH=":".join([*map(str, path), str(self.bin), SYSTEM_PATH]),
            HOME=str(dirs.home),
            TMPDIR=str(dirs.temp),  # a fresh machine's /tmp
            LANG="C.UTF-8",
            CI="true",
        )
        return env

    @contextmanager
    def job(self, workspace: Path, name: str) -> Iterator[JobDirs]:
        """A job's directories: the workspace at its fixed path, empty; moved aside after."""
        self.jobs_run += 1
        slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", name).strip("_")
        used = self.root / "used" / f"{self.jobs_run:02d}-{slug}"
        if workspace.exists():
            raise AssertionError(f"{workspace} is left from another job")
        dirs = JobDirs(
            name=name,
            workspace=workspace,
            temp=used / "temp",
            home=used / "home",
            tools=used / "tools",
            log=self.root / "logs" / f"{self.jobs_run:02d}-{slug}.log",
        )
        for directory in (workspace, dirs.temp, dirs.home, dirs.tools):
            directory.mkdir(parents=True)
        begun = time.monotonic()
        try:
            yield dirs
        finally:
            try:
                self.reap(workspace, dirs)
            finally:
                shutil.move(str(workspace), str(used / "workspace"))
                took = time.monotonic() - begun
                self.timings.append((name, took))
                with dirs.log.open("a", encoding="utf-8") as log:
                    log.write(f"## job {name} ended after {took:.1f} s\n")

    def reap(self, workspace: Path, dirs: JobDirs) -> None:
        """Containers a job left: those mounting its workspace and build containers started
        from inside a container since this machine started. Removed, and the job fails."""
        here = os.uname().nodename
        left = []
        for item in self.client.containers.list(all=True):
            mounts = item.attrs.get("Mounts") or []
            labels = item.labels or {}
            created = item.attrs.get("Created", "")
            mine = any(str(m.get("Source", "")).startswith(str(workspace)) for m in mounts)
            built = (
                container.LABEL in labels
                and labels.get(container.LABEL_HOST) not in (None, here)
                and _created_after(created, self.started)
            )
            if mine or built:
                left.append(str(item.name))
                item.remove(force=True)
        if left:
            raise JobFailed(f"{dirs.name} left containers behind: {left}")

    def run_script(
        self, dirs: JobDirs, log: IO[bytes], script: str, env: Mapping[str, str], *, what: str
    ) -> None:
        path = dirs.temp / f"script-{time.monotonic_ns()}.sh"
        path.write_text(script, encoding="utf-8")
        log.flush()
        with subprocess.Popen(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(path)],
            cwd=dirs.workspace,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ) as process:
            try:
                code = process.wait(timeout=STEP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise self.failed(dirs, f"{what} timed out after {STEP_TIMEOUT:.0f} s") from None
        if code != 0:
            raise self.failed(dirs, f"{what} exited with {code}")

    def venv(self, dirs: JobDirs, version: str) -> Path:
        """A fresh Python ``version`` environment, as setup-python or a python image gives."""
        have = f"{sys.version_info.major}.{sys.version_info.minor}"
        if str(version) != have:
            raise DefinitionError(f"Python {version} is asked for; this machine has {have}")
        location = dirs.tools / "Python" / have / "x64"
        subprocess.run(
            [self.python, "-m", "venv", "--system-site-packages", str(location)],
            check=True,
            capture_output=True,
        )
        return location

    def failed(self, dirs: JobDirs, why: str) -> JobFailed:
        tail = dirs.log.read_text(encoding="utf-8", errors="replace")[-6000:]
        return JobFailed(f"job {dirs.name!r}: {why}; the end of {dirs.log}:\n{tail}")


def _created_after(created: str, started: float) -> bool:
    """Whether the engine's creation time (UTC, ISO 8601) is after ``started``."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", created)
    if match is None:
        return True
    stamp = calendar.timegm(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S"))
    return stamp >= started - 5


def note(log: IO[bytes], text: str) -> None:
    log.write(f"{text}\n".encode())
    log.flush()


# --- GitHub Actions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheEntry:
    key: str
    version: str
    directory: Path


@dataclass
class CacheStore:
    """A repository's caches, kept across runs: immutable entries, newest last."""

    root: Path
    entries: list[CacheEntry] = field(default_factory=list)

    def find(self, key: str, restore_keys: Sequence[str], version: str) -> CacheEntry | None:
        usable = [e for e in self.entries if e.version == version]
        for entry in usable:
            if entry.key == key:
                return entry
        for prefix in restore_keys:
            matches = [e for e in usable if e.key.startswith(prefix)]
            if matches:
                return matches[-1]
        return None

    def save(self, key: str, version: str, workspace: Path, paths: Sequence[str]) -> str:
        if any(e.key == key and e.version == version for e in self.entries):
            return (
                f"Failed to save: unable to reserve cache with key {key}, another job may be "
                "creating this cache."
            )
        directory = self.root / f"{len(self.entries):03d}"
        saved = sum(
            copy_into(workspace / path, directory / path, links=True)
            for path in paths
            if (workspace / path).exists() or (workspace / path).is_symlink()
        )
        if not saved:
            shutil.rmtree(directory, ignore_errors=True)
            return "Path Validation Error: the paths to cache do not exist, no cache is saved."
        self.entries.append(CacheEntry(key, version, directory))
        return f"Cache saved with key: {key}"


def _lines(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, str):
        raise DefinitionError(f"{value!r} is not a string of lines")
    return [line.strip() for line in value.splitlines() if line.strip()]


def hash_files(workspace: Path) -> Callable[..., str]:
    def digest(*patterns: Any) -> str:
        files: set[str] = set()
        for pattern in patterns:
            if not isinstance(pattern, str) or pattern.startswith("!"):
                raise DefinitionError(f"hashFiles({pattern!r}): not simulated")
            for name in glob.glob(pattern, root_dir=workspace, recursive=True, include_hidden=True):
                if (workspace / name).is_file():
                    files.add(name)
        if not files:
            return ""
        total = hashlib.sha256()
        for name in sorted(files):
            total.update(hashlib.sha256((workspace / name).read_bytes()).digest())
        return total.hexdigest()

    return digest


def _from_json(text: Any) -> Any:
    if not isinstance(text, str):
        raise ghexpr.ExpressionError(f"fromJSON({text!r}): not a string")
    return json.loads(text)


def _read_outputs(path: Path) -> dict[str, str]:
    """``$GITHUB_OUTPUT``: ``name=value`` lines and ``name<<DELIMITER`` blocks."""
    outputs: dict[str, str] = {}
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            block = []
            while index < len(lines) and lines[index] != delimiter:
                block.append(lines[index])
                index += 1
            index += 1
            outputs[name] = "\n".join(block)
        elif "=" in line:
            name, value = line.split("=", 1)
            outputs[name] = value
        elif line.strip():
            raise DefinitionError(f"{path.name}: cannot read {line!r}")
    return outputs


ACTIONS = {
    "actions/checkout": ("v4", set()),
    "actions/setup-python": ("v5", {"python-version"}),
    "actions/cache": ("v4", {"path", "key", "restore-keys"}),
    "actions/upload-artifact": ("v4", {"name", "path", "if-no-files-found"}),
    "actions/download-artifact": ("v4", {"name", "pattern", "path", "merge-multiple"}),
}
WORKFLOW_KEYS = {"name", "on", "permissions", "env", "jobs"}
JOB_KEYS = {"runs-on", "needs", "outputs", "strategy", "steps", "concurrency", "env", "permissions"}
STEP_KEYS = {"name", "id", "uses", "with", "run", "env", "if"}


@dataclass
class GitHubJob:
    """One job (one matrix entry) while it runs."""

    dirs: JobDirs
    log: IO[bytes]
    contexts: dict[str, Any]
    env: dict[str, str]  # workflow and job env, evaluated
    path: list[Path] = field(default_factory=list)
    exported: dict[str, str] = field(default_factory=dict)
    post: list[Callable[[], None]] = field(default_factory=list)


class GitHubWorkflow:
    """One run of a workflow file of the repository, for one event."""

    def __init__(
        self,
        machine: Machine,
        workflow: str,
        *,
        workspace: Path,
        caches: CacheStore,
        event: str,
        run_id: int,
        secrets: Mapping[str, str],
        variables: Mapping[str, str],
    ) -> None:
        self.machine = machine
        self.workflow = workflow
        self.workspace = workspace
        self.caches = caches
        self.event = event
        self.run_id = run_id
        self.secrets = dict(secrets)
        self.variables = dict(variables)
        self.artifacts = machine.root / "artifacts" / f"github-{run_id}"
        self.results: dict[str, list[JobResult]] = {}

    def run(self) -> dict[str, list[JobResult]]:
        document = yaml.safe_load((self.machine.repository / self.workflow).read_text())
        # YAML 1.1 reads the key `on` as true.
        if True in document:
            document["on"] = document.pop(True)
        check_keys(self.workflow, document, WORKFLOW_KEYS)
        triggers = document["on"]
        if self.event not in (triggers if isinstance(triggers, (dict, list)) else [triggers]):
            raise DefinitionError(f"{self.workflow} does not run on {self.event}")
        jobs: dict[str, Any] = document["jobs"]
        for job_id in self._order(jobs):
            self.results[job_id] = self._job(job_id, jobs[job_id], document.get("env") or {})
        return self.results

    @staticmethod
    def _order(jobs: Mapping[str, Any]) -> list[str]:
        done: list[str] = []
        while len(done) < len(jobs):
            ready = [
                job_id
                for job_id, job in jobs.items()
                if job_id not in done and all(need in done for need in GitHubWorkflow._needs(job))
            ]
            if not ready:
                raise DefinitionError(f"jobs' needs form a cycle or name no job: {list(jobs)}")
            done.append(ready[0])
        return done

    @staticmethod
    def _needs(job: Mapping[str, Any]) -> list[str]:
        needs = job.get("needs") or []
        return [needs] if isinstance(needs, str) else list(needs)

    def _base_contexts(self) -> dict[str, Any]:
        needs = {
            need: {
                "result": "success",
                "outputs": {k: v for r in results for k, v in r.outputs.items()},
            }
            for need, results in self.results.items()
        }
        return {
            "github": {
                "workspace": str(self.workspace),
                "run_id": str(self.run_id),
                "run_number": str(self.run_id),
                "event_name": self.event,
                "repository": f"user/{self.workspace.name}",
            },
            "secrets": dict(self.secrets),
            "vars": dict(self.variables),
            "needs": needs,
            "inputs": {},
        }

    def _functions(self) -> dict[str, ghexpr.Function]:
        return {
            "fromJSON": _from_json,
            "toJSON": lambda value: json.dumps(value, indent=2),
            "hashFiles": hash_files(self.workspace),
        }

    def _job(self, job_id: str, job: Mapping[str, Any], workflow_env: Any) -> list[JobResult]:
        check_keys(f"jobs.{job_id}", job, JOB_KEYS)
        contexts = self._base_contexts()
        strategy = job.get("strategy") or {}
        check_keys(f"jobs.{job_id}.strategy", strategy, {"fail-fast", "matrix"})
        matrices: list[dict[str, Any] | None] = [None]
        if "matrix" in strategy:
            matrix = ghexpr.interpolate(strategy["matrix"], contexts, self._functions())
            if not isinstance(matrix, dict) or set(matrix) != {"include"}:
                raise DefinitionError(f"jobs.{job_id}: only an include-only matrix is simulated")
            matrices = [dict(entry) for entry in matrix["include"]]
            if not matrices:
                raise DefinitionError(f"jobs.{job_id}: the matrix is empty")
        results = []
        failures = []
        for matrix_entry in matrices:
            name = job_id
            if matrix_entry is not None:
                name += " (" + ", ".join(ghexpr.as_text(v) for v in matrix_entry.values()) + ")"
            try:
                results.append(self._one(job_id, name, job, workflow_env, matrix_entry))
            except JobFailed as failure:
                if strategy.get("fail-fast", True):
                    raise
                failures.append(failure)
        if failures:
            raise JobFailed("\n\n".join(map(str, failures)))
        return results

    def _one(
        self,
        job_id: str,
        name: str,
        job: Mapping[str, Any],
        workflow_env: Any,
        matrix: dict[str, Any] | None,
    ) -> JobResult:
        functions = self._functions()
        contexts = self._base_contexts()
        contexts["matrix"] = matrix or {}
        with self.machine.job(self.workspace, f"github-{self.run_id}-{name}") as dirs:
            contexts["runner"] = {"temp": str(dirs.temp), "os": "Linux", "arch": "X64",
                                  "tool_cache": str(dirs.tools)}  # fmt: skip
            env: dict[str, str] = {}
            for scope in (workflow_env, job.get("env") or {}):
                for key, value in scope.items():
                    env[str(key)] = ghexpr.as_text(
                        ghexpr.interpolate(value, {**contexts, "env": env}, functions)
                    )
            contexts["env"] = env
            contexts["steps"] = {}
            with dirs.log.open("ab") as log:
                note(log, f"## job {name} (runs-on: {job.get('runs-on')}, in {dirs.workspace})")
                running = GitHubJob(dirs, log, contexts, env)
                try:
                    for index, step in enumerate(job["steps"]):
                        self._step(running, f"jobs.{job_id}.steps[{index}]", step, functions)
                    for post in reversed(running.post):
                        post()
                except (DefinitionError, ghexpr.ExpressionError) as error:
                    note(log, f"## the runner stops: {error}")
                    raise
            outputs = {
                key: ghexpr.as_text(ghexpr.interpolate(value, contexts, functions))
                for key, value in (job.get("outputs") or {}).items()
            }
            return JobResult(name=name, log=dirs.log, outputs=outputs)

    def _step(
        self, job: GitHubJob, where: str, step: Mapping[str, Any], functions: dict[str, Any]
    ) -> None:
        check_keys(where, step, STEP_KEYS)
        if ("uses" in step) == ("run" in step):
            raise DefinitionError(f"{where}: needs exactly one of uses and run")
        step_env = {
            str(key): ghexpr.as_text(ghexpr.interpolate(value, job.contexts, functions))
            for key, value in (step.get("env") or {}).items()
        }
        # The runner merges the step's env into the env context before its if: is evaluated.
        contexts = {**job.contexts, "env": {**job.env, **step_env}}
        title = step.get("name") or step.get("uses") or str(step.get("run")).splitlines()[0]
        if "if" in step and not ghexpr.condition(step["if"], contexts, functions):
            note(job.log, f"## step skipped (if: {step['if']}): {title}")
            return
        note(job.log, f"## step: {title}")
        outputs: dict[str, str] = {}
        if "run" in step:
            script = ghexpr.interpolate(step["run"], contexts, functions)
            if not isinstance(script, str):
                raise DefinitionError(f"{where}.run is not a script")
            files = {name: job.dirs.temp / f"{name.lower()}-{time.monotonic_ns()}"
                     for name in ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH")}  # fmt: skip
            for path in files.values():
                path.touch()
            env = self._process_env(job)
            env.update(job.env)
            env.update(step_env)
            env.update({name: str(path) for name, path in files.items()})
            self.machine.run_script(job.dirs, job.log, script, env, what=f"step {title!r}")
            for name in ("GITHUB_ENV", "GITHUB_PATH"):
                if files[name].read_text().strip():
                    raise DefinitionError(f"{where} writes {name}: not simulated")
            outputs = _read_outputs(files["GITHUB_OUTPUT"])
        else:
            uses = str(step["uses"])
            action, _, version = uses.partition("@")
            expected = ACTIONS.get(action)
            if expected is None or version != expected[0]:
                raise DefinitionError(f"{where}: {uses} is not simulated")
            given = ghexpr.interpolate(step.get("with") or {}, contexts, functions)
            check_keys(f"{where}.with", given, expected[1])
            handler = {
                "actions/checkout": self._checkout,
                "actions/setup-python": self._setup_python,
                "actions/cache": self._cache,
                "actions/upload-artifact": self._upload_artifact,
                "actions/download-artifact": self._download_artifact,
            }[action]
            outputs = handler(job, {str(k): ghexpr.as_text(v) for k, v in given.items()})
        if "id" in step:
            job.contexts["steps"][str(step["id"])] = {
                "outputs": outputs,
                "outcome": "success",
                "conclusion": "success",
            }

    def _process_env(self, job: GitHubJob) -> dict[str, str]:
        env = self.machine.environment(job.dirs, job.path)
        env.update(
            GITHUB_ACTIONS="true",
            GITHUB_WORKSPACE=str(self.workspace),
            GITHUB_RUN_ID=str(self.run_id),
            GITHUB_RUN_NUMBER=str(self.run_id),
            GITHUB_EVENT_NAME=self.event,
            GITHUB_JOB=job.dirs.name,
            RUNNER_TEMP=str(job.dirs.temp),
            RUNNER_TOOL_CACHE=str(job.dirs.tools),
            RUNNER_OS="Linux",
            RUNNER_ARCH="X64",
        )
        env.update(job.exported)
        return env

    def _checkout(self, job: GitHubJob, given: dict[str, str]) -> dict[str, str]:
        copy_into(self.machine.repository, self.workspace, links=True)
        note(job.log, f"checked out {self.machine.repository} into {self.workspace}")
        return {}

    def _setup_python(self, job: GitHubJob, given: dict[str, str]) -> dict[str, str]:
        location = self.machine.venv(job.dirs, given.get("python-version", ""))
        job.path.insert(0, location / "bin")
        job.exported["pythonLocation"] = str(location)
        note(job.log, f"Python {given.get('python-version')} in {location}")
        return {
            "python-version": given.get("python-version", ""),
            "python-path": str(location / "bin" / "python"),
        }

    def _cache(self, job: GitHubJob, given: dict[str, str]) -> dict[str, str]:
        paths = [plain_path("actions/cache path", p) for p in _lines(given.get("path"))]
        key = given.get("key", "")
        if not paths or not key:
            raise DefinitionError("actions/cache needs path and key")
        version = hashlib.sha256("\n".join(paths).encode()).hexdigest()
        entry = self.caches.find(key, _lines(given.get("restore-keys")), version)
        if entry is None:
            note(job.log, f"Cache not found for input keys: {key}")
        else:
            copy_into(entry.directory, self.workspace, links=True)
            note(job.log, f"Cache restored from key: {entry.key}")
        hit = entry is not None and entry.key == key

        def save() -> None:
            if hit:
                note(job.log, f"Cache hit occurred on the primary key {key}, not saving cache.")
                return
            note(job.log, self.caches.save(key, version, self.workspace, paths))

        job.post.append(save)
        return {"cache-hit": "" if entry is None else str(hit).lower()}

    def _upload_artifact(self, job: GitHubJob, given: dict[str, str]) -> dict[str, str]:
        name = given.get("name") or "artifact"
        path = plain_path("actions/upload-artifact path", given.get("path"))
        store = self.artifacts / name
        if store.exists():
            raise self.machine.failed(job.dirs, f"an artifact named {name} exists already")
        # v4 leaves hidden files out and follows symlinks.
        count = copy_into(self.workspace / path, store, links=False, hidden=False)
        if count == 0:
            shutil.rmtree(store, ignore_errors=True)
            choice = given.get("if-no-files-found", "warn")
            if choice == "error":
                raise self.machine.failed(job.dirs, f"no files were found with {path}")
            note(job.log, f"No files were found with the provided path: {path} ({choice})")
            return {}
        note(job.log, f"Artifact {name} has been uploaded: {count} file(s)")
        return {}

    def _download_artifact(self, job: GitHubJob, given: dict[str, str]) -> dict[str, str]:
        target = self.workspace / plain_path("actions/download-artifact path",
                                             given.get("path") or ".")  # fmt: skip
        available = (
            sorted(p.name for p in self.artifacts.iterdir()) if self.artifacts.is_dir() else []
        )
        if given.get("name"):
            if given["name"] not in available:
                raise self.machine.failed(job.dirs, f"artifact {given['name']} not found")
            copy_into(self.artifacts / given["name"], target, links=True)
            return {"download-path": str(target)}
        pattern = given.get("pattern") or "*"
        chosen = [name for name in available if fnmatch.fnmatchcase(name, pattern)]
        merge = given.get("merge-multiple", "false") == "true"
        for name in chosen:
            copy_into(self.artifacts / name, target if merge else target / name, links=True)
        note(job.log, f"downloaded {len(chosen)} artifact(s) matching {pattern}: {chosen}")
        return {"download-path": str(target)}


# --- GitLab CI --------------------------------------------------------------------------------

PIPELINE_KEYS = {"stages", "variables"}
GITLAB_RESERVED = {"default", "include", "workflow", "image", "services", "before_script",
                   "after_script", "cache", "pages"}  # fmt: skip
GITLAB_JOB_KEYS = {"stage", "image", "services", "variables", "script", "artifacts", "cache",
                   "needs", "trigger", "resource_group"}  # fmt: skip
PYTHON_IMAGE = re.compile(r"python:(\d+\.\d+)(?:\.\d+)?(?:-[a-z]+)?")
DOCKER_IMAGE = re.compile(r"docker:\d+(?:\.\d+)*")
DIND_SERVICE = re.compile(r"docker:\d+(?:\.\d+)*-dind")


def _plain_value(where: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DefinitionError(f"{where}: {value!r} is not a plain value")
    text = str(value)
    if "$" in text:
        raise DefinitionError(f"{where}: variable references ({text!r}) are not simulated")
    return text


class GitLabPipeline:
    """One pipeline of the repository's ``.gitlab-ci.yml``, with the child pipelines its
    trigger jobs start."""

    def __init__(
        self,
        machine: Machine,
        *,
        workspace: Path,
        caches: Path,
        pipeline_id: int,
        source: str,
        variables: Mapping[str, str],
    ) -> None:
        self.machine = machine
        self.workspace = workspace
        self.caches = caches
        self.pipeline_id = pipeline_id
        self.source = source
        self.project_variables = dict(variables)
        self.results: list[JobResult] = []

    def run(self, definition: str = ".gitlab-ci.yml") -> list[JobResult]:
        document = yaml.safe_load((self.machine.repository / definition).read_text())
        self._pipeline(document, definition, inherited={}, number=0)
        return self.results

    def _pipeline(
        self, document: Mapping[str, Any], where: str, inherited: dict[str, str], number: int
    ) -> None:
        reserved = sorted(set(document) & GITLAB_RESERVED)
        if reserved:
            raise DefinitionError(f"{where}: {', '.join(reserved)} not simulated")
        stages = list(document.get("stages") or ["build", "test", "deploy"])
        global_vars = {
            str(k): _plain_value(f"{where}: variables.{k}", v)
            for k, v in (document.get("variables") or {}).items()
        }
        jobs = {str(k): v for k, v in document.items() if k not in PIPELINE_KEYS}
        for name, job in jobs.items():
            if name.startswith(".") or not isinstance(job, dict):
                raise DefinitionError(f"{where}: {name}: hidden jobs and templates not simulated")
            check_keys(f"{where}: {name}", job, GITLAB_JOB_KEYS)
            if job.get("stage", "test") not in stages:
                raise DefinitionError(f"{where}: {name}: stage {job.get('stage')} is not listed")
        artifacts: dict[str, Path] = {}
        finished: list[str] = []
        for stage in stages:
            for name, job in jobs.items():
                if job.get("stage", "test") != stage:
                    continue
                needs = self._needs(where, name, job, finished)
                if "trigger" in job:
                    self._trigger(where, name, job, artifacts=artifacts, global_vars=global_vars,
                                  number=number)  # fmt: skip
                else:
                    earlier = (
                        needs
                        if "needs" in job
                        else {n: True for n in finished if jobs[n].get("stage", "test") != stage}
                    )
                    sources = [
                        artifacts[n] for n, wanted in earlier.items() if wanted and n in artifacts
                    ]
                    store = (
                        self.machine.root
                        / "artifacts"
                        / f"gitlab-{self.pipeline_id}-{number}"
                        / name
                    )
                    self._job(where, name, job, global_vars=global_vars, inherited=inherited,
                              sources=sources, store=store)  # fmt: skip
                    if store.exists():
                        artifacts[name] = store
                finished.append(name)

    @staticmethod
    def _needs(
        where: str, name: str, job: Mapping[str, Any], finished: Sequence[str]
    ) -> dict[str, bool]:
        needs: dict[str, bool] = {}
        for need in job.get("needs") or []:
            if isinstance(need, str):
                needs[need] = True
            elif isinstance(need, dict):
                check_keys(f"{where}: {name}.needs", need, {"job", "artifacts"})
                needs[str(need["job"])] = bool(need.get("artifacts", True))
            else:
                raise DefinitionError(f"{where}: {name}.needs: {need!r} not simulated")
        for need in needs:
            if need not in finished:
                raise DefinitionError(f"{where}: {name} needs {need}, which has not run before it")
        return needs

    def _trigger(
        self,
        where: str,
        name: str,
        job: Mapping[str, Any],
        *,
        artifacts: Mapping[str, Path],
        global_vars: dict[str, str],
        number: int,
    ) -> None:
        trigger = job["trigger"]
        check_keys(f"{where}: {name}.trigger", trigger, {"include", "strategy"})
        if trigger.get("strategy") != "depend":
            raise DefinitionError(f"{where}: {name}: only strategy: depend is simulated")
        include = trigger.get("include")
        if not isinstance(include, list) or len(include) != 1:
            raise DefinitionError(f"{where}: {name}: one include of a job's artifact is simulated")
        check_keys(f"{where}: {name}.trigger.include", include[0], {"artifact", "job"})
        source_job = str(include[0]["job"])
        if source_job not in artifacts:
            raise DefinitionError(f"{where}: {name}: {source_job} kept no artifacts")
        path = artifacts[source_job] / plain_path(f"{name} include", include[0]["artifact"])
        # JSON is YAML.
        child = yaml.safe_load(path.read_text())
        # forward:yaml_variables (on by default): the trigger job's YAML variables become the
        # child pipeline's variables.
        forwarded = {**global_vars, **{
            str(k): _plain_value(f"{where}: {name}.variables.{k}", v)
            for k, v in (job.get("variables") or {}).items()
        }}  # fmt: skip
        self._pipeline(child, f"{source_job}:{path.name}", forwarded, number + 1)

    def _job(
        self,
        where: str,
        name: str,
        job: Mapping[str, Any],
        *,
        global_vars: dict[str, str],
        inherited: dict[str, str],
        sources: Sequence[Path],
        store: Path,
    ) -> None:
        script = job.get("script")
        if not isinstance(script, list) or not all(isinstance(line, str) for line in script):
            raise DefinitionError(f"{where}: {name}.script must be a list of commands")
        job_vars = {
            str(k): _plain_value(f"{where}: {name}.variables.{k}", v)
            for k, v in (job.get("variables") or {}).items()
        }
        cache = self._cache_spec(where, name, job)
        kept = []
        if job.get("artifacts") is not None:
            check_keys(f"{where}: {name}.artifacts", job["artifacts"], {"paths", "expire_in"})
            kept = [plain_path(f"{name} artifacts", p) for p in job["artifacts"].get("paths", [])]
        with self.machine.job(self.workspace, f"gitlab-{self.pipeline_id}-{name}") as dirs, \
                dirs.log.open("ab") as log:  # fmt: skip
            note(log, f"## job {name} (image: {job.get('image')}, in {self.workspace})")
            path: list[Path] = []
            image = str(job.get("image", ""))
            if match := PYTHON_IMAGE.fullmatch(image):
                path.append(self.machine.venv(dirs, match.group(1)) / "bin")
            elif not DOCKER_IMAGE.fullmatch(image):
                raise DefinitionError(f"{where}: {name}: image {image!r} is not simulated")
            # Lowest first: predefined, the pipeline's YAML, the job's YAML, the project's
            # CI/CD variables, the variables a trigger forwarded.
            env = self.machine.environment(dirs, path)
            env.update(
                GITLAB_CI="true",
                CI_PROJECT_DIR=str(self.workspace),
                CI_BUILDS_DIR=str(self.workspace.parent.parent),
                CI_JOB_NAME=name,
                CI_JOB_STAGE=str(job.get("stage", "test")),
                CI_PIPELINE_ID=str(self.pipeline_id),
                CI_PIPELINE_SOURCE=self.source if not inherited else "parent_pipeline",
            )
            env.update(global_vars)
            env.update(job_vars)
            env.update(self.project_variables)
            env.update(inherited)
            for service in job.get("services") or []:
                if not isinstance(service, str) or not DIND_SERVICE.fullmatch(service):
                    raise DefinitionError(f"{where}: {name}: service {service!r} not simulated")
                # Deliberately different: the Docker-in-Docker service is this machine's
                # engine, reached where it listens instead of at tcp://docker:2375.
                env["DOCKER_HOST"] = self.machine.engine
                env.pop("DOCKER_TLS_CERTDIR", None)
            copy_into(self.machine.repository, self.workspace, links=True)
            note(log, f"fetched {self.machine.repository} into {self.workspace}")
            if cache is not None and (self.caches / cache[0]).is_dir():
                copy_into(self.caches / cache[0], self.workspace, links=True)
                note(log, f"Successfully extracted cache {cache[0]}")
            elif cache is not None:
                note(log, f"No cache {cache[0]} yet")
            for source in sources:
                copy_into(source, self.workspace, links=True)
                note(log, f"Downloaded artifacts of {source.name}")
            lines = [f"printf '%s\\n' {shlex.quote('$ ' + line)}\n{line}" for line in script]
            self.machine.run_script(dirs, log, "\n".join(lines) + "\n", env, what="script")
            self._keep(log, cache, kept, store)
            self.results.append(JobResult(name=name, log=dirs.log))

    def _keep(
        self, log: IO[bytes], cache: tuple[str, list[str]] | None, kept: list[str], store: Path
    ) -> None:
        """After a successful script: the cache is saved (again), the artifacts kept."""
        if cache is not None:
            saved = self.caches / cache[0]
            shutil.rmtree(saved, ignore_errors=True)
            for item in cache[1]:
                copy_into(self.workspace / item, saved / item, links=True)
            note(log, f"Created cache {cache[0]}")
        for relative in kept:
            if not copy_into(self.workspace / relative, store / relative, links=True):
                note(log, f"WARNING: {relative}: no matching files")
        if kept:
            note(log, f"Uploading artifacts: {kept}")

    @staticmethod
    def _cache_spec(where: str, name: str, job: Mapping[str, Any]) -> tuple[str, list[str]] | None:
        cache = job.get("cache")
        if cache is None:
            return None
        check_keys(f"{where}: {name}.cache", cache, {"key", "paths"})
        key = _plain_value(f"{where}: {name}.cache.key", cache.get("key", "default"))
        if "/" in key or key in (".", ".."):
            raise DefinitionError(f"{where}: {name}.cache.key {key!r} is not simulated")
        return key, [plain_path(f"{name} cache", p) for p in cache.get("paths") or []]
