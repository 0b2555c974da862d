"""The CI definitions under ci/, run the way GitHub Actions and GitLab CI run them, for real.

A user's repository is made as a fork would be: this project's files with the workflow copied
to ``.github/workflows/`` and the pipeline to ``.gitlab-ci.yml``, its own targets in
``specs/lab.yaml`` (three dom0 stand-ins: the Debian 12 root with a real kernel tree, built
from ``containers/standin-context/``), the two DRBD releases of ``specs/drbd.yaml`` pointed at
its own copies with ``sha256:`` pins, and its inputs (a binpkg-shaped ISO, the DRBD tarballs)
inside the repository, named by ``file://`` URLs at the workspace path every job of the
service gets. Jobs run one after another in that fixed path, which is empty when a job starts
(see :mod:`tests.support.cirunner` for the runner and its deliberate differences from the
hosted services), against this machine's Docker engine. The result is served over HTTP on
127.0.0.1 and consumed by dnf with gpgcheck and repo_gpgcheck on; the signing key, passed as
a secret, must not appear in any job's log or in any file a job, a cache or an artifact kept.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest

from builder.specs import Target
from tests.integration import buildenv
from tests.support import cirunner
from tests.support.http import serve_directory
from tests.support.needs import unavailable

pytestmark = [
    pytest.mark.integration,
    pytest.mark.docker,
    # A file object left unclosed elsewhere in this process (not yet traced) was once
    # finalized during these tests' long walks over the workspaces; that is not what they test.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

REPO = Path(__file__).resolve().parents[2]
EXTRA_CAS = Path("/usr/local/share/ca-certificates")
TARGETS = ("lab-a", "lab-b", "lab-c")
VERSIONS = ("8.4.1", "8.4.2")
GITHUB_WORKSPACE = Path("home/runner/work/xcp-drbd/xcp-drbd")
GITLAB_WORKSPACE = Path("builds/lab/xcp-drbd")
WORKFLOW = ".github/workflows/xcp-drbd.yml"
BASE_TAG = "debian:bookworm-slim"  # the Dockerfile's default BASE_IMAGE
BUILDER_TAG = "xcp-drbd-builder:latest"  # what the build jobs tag


@dataclass(frozen=True)
class Signer:
    home: Path
    fingerprint: str
    secret: str  # armored secret key, as the secret store holds it
    patterns: Path  # its long lines, one a line, for grep -f (outside every job's files)

    def secrets(self, upload_to: Path) -> dict[str, str]:
        return {
            "XDB_SIGNING_KEY_ASC": self.secret,
            "XDB_SIGNING_KEY": self.fingerprint,
            "XDB_PASSPHRASE": "",
            "XDB_RSYNC_TARGET": str(upload_to),
        }


@pytest.fixture(scope="module")
def signer() -> Iterator[Signer]:
    with tempfile.TemporaryDirectory(prefix="xdb-ci-signer-") as work:
        home = Path(work) / "gnupg"
        fingerprint = subprocess.run(
            [sys.executable, "-m", "builder", "keygen", "--gnupg-home", str(home)],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        secret = subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--armor", "--export-secret-keys",
             fingerprint],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        public = subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--armor", "--export", fingerprint],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
        # The secret key's export holds the public key too; that part is published.
        lines = sorted(
            {line for line in secret.splitlines() if len(line) > 40} - set(public.splitlines())
        )
        assert len(lines) > 10
        patterns = Path(work) / "key-lines"
        patterns.write_text("\n".join(lines) + "\n")
        yield Signer(home, fingerprint, secret, patterns)


@dataclass(frozen=True)
class EngineImages:
    base_image: str  # the target's base, the local Debian 12 root
    previous_builder: str | None  # what BUILDER_TAG named before these tests


@pytest.fixture(scope="module")
def engine_images(
    docker_client: docker.DockerClient, standin_target: Target
) -> Iterator[EngineImages]:
    """The images the definitions expect on the engine: the Dockerfile's base (no registry
    here: the local Debian 12 root stands for it). The builder image's tag, which the build
    jobs write, is put back as it was afterwards."""
    assert standin_target.base_image is not None
    if not Path("/var/run/docker.sock").is_socket():
        unavailable("the definitions mount /var/run/docker.sock, and no engine listens there")
    tagged = False
    try:
        docker_client.images.get(BASE_TAG)
    except docker.errors.ImageNotFound:
        docker_client.images.get(standin_target.base_image).tag(BASE_TAG)
        tagged = True
    try:
        previous: str | None = docker_client.images.get(BUILDER_TAG).id
    except docker.errors.ImageNotFound:
        previous = None
    yield EngineImages(standin_target.base_image, previous)
    if previous is not None:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.get(previous).tag(BUILDER_TAG)
    if tagged:
        docker_client.images.remove(BASE_TAG)


def remove_builder_image(client: docker.DockerClient, previous: str | None) -> None:
    """The builder image a test's jobs built (each fork's specs/ make another one)."""
    with contextlib.suppress(docker.errors.ImageNotFound):
        image = client.images.get(BUILDER_TAG)
        if image.id is not None and image.id != previous:
            client.images.remove(image.id, force=True)


def release_patch(target: str) -> str:
    """A target's own adjustment: its module packages get a release of their own, so the
    three stand-ins (one kernel) publish distinct packages side by side."""
    spec = (buildenv.SOURCE_TEMPLATE / "drbd-km.spec.in").read_text().splitlines(keepends=True)
    tag = target.replace("-", "_")
    changed = [line.replace("Release: 1@", f"Release: 1.{tag}@") for line in spec]
    assert changed != spec
    return "".join(difflib.unified_diff(spec, changed, "a/drbd-km.spec.in", "b/drbd-km.spec.in"))


def make_user_repository(
    destination: Path,
    workspace: Path,
    *,
    iso: Path,
    kernel_rpm: Path,
    release: str,
    base_image: str,
) -> Path:
    """A fork of this project with its own targets and inputs, as its checkout at
    ``workspace`` sees them."""
    repo = destination
    repo.mkdir(parents=True)
    for name in ("Dockerfile", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, repo / name)
    for name in ("builder", "specs", "containers", "ci"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / ".github" / "workflows").mkdir(parents=True)
    shutil.copy2(REPO / "ci" / "github" / "xcp-drbd.yml", repo / WORKFLOW)
    shutil.copy2(REPO / "ci" / "gitlab" / "gitlab-ci.yml", repo / ".gitlab-ci.yml")
    cas = sorted(EXTRA_CAS.glob("*.crt")) if EXTRA_CAS.is_dir() else []
    if cas:  # behind a TLS-intercepting proxy, as the Dockerfile documents
        (repo / "extra-ca.crt").write_text("".join(ca.read_text() for ca in cas))
    shutil.copytree(buildenv.STANDIN_CONTEXT, repo / "containers" / "standin-context")

    inputs = repo / "inputs"
    inputs.mkdir()
    shutil.copy2(iso, inputs / "binpkg.iso")
    drbd = (repo / "specs" / "drbd.yaml").read_text()
    for version in VERSIONS:
        tarball = buildenv.make_drbd_source(inputs, version)
        upstream = f"    url: https://pkg.linbit.com/downloads/drbd/8.4/drbd-{version}.tar.gz\n"
        assert drbd.count(upstream) == 1, f"specs/drbd.yaml no longer names {upstream.strip()}"
        drbd = drbd.replace(
            upstream,
            f"    url: file://{workspace}/inputs/{tarball.name}\n"
            f"    sha256: {file_sha256(tarball)}\n",
        )
    (repo / "specs" / "drbd.yaml").write_text(drbd)

    entries = []
    for target in TARGETS:
        (repo / "specs" / f"{target}-release.patch").write_text(release_patch(target))
        entries.append(
            f"""  {target}:
    name: {target}, a dom0 stand-in
    arch: x86_64
    kernel:
      package: kernel-xen-devel
      runtime: kernel-xen
      release: {release}
      source:
        iso: file://{workspace}/inputs/binpkg.iso
        path: domain0/RPMS/{kernel_rpm.parent.name}/{kernel_rpm.name}
        sha256: {file_sha256(iso)}
    container:
      family: standin
      context: ../containers/standin-context
      image: {base_image}
    consumer: el7
    drbd: [{", ".join(VERSIONS)}]
    build:
      patches: [{target}-release.patch]
"""
        )
    (repo / "specs" / "lab.yaml").write_text(
        "# This fork's dom0s: Debian 12 stand-ins with a real kernel tree.\ntargets:\n"
        + "".join(entries)
    )
    return repo


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ForkInputs:
    """What a fork brings for its stand-in targets, and the base image they build on."""

    iso: Path
    kernel_rpm: Path
    release: str
    base_image: str


@pytest.fixture(scope="module")
def fork_inputs(
    engine_images: EngineImages, binpkg_iso: Path, kernel_rpm: Path, kernel_release: str
) -> ForkInputs:
    return ForkInputs(binpkg_iso, kernel_rpm, kernel_release, engine_images.base_image)


@dataclass
class Site:
    """One service's world: the runner, the fork's repository, the web server's directory."""

    machine: cirunner.Machine
    workspace: Path
    www: Path


@pytest.fixture
def site_root(docker_client: docker.DockerClient, engine_images: EngineImages) -> Iterator[Path]:
    """Everything of one service's simulation; removed after the test with the builder image
    its jobs built. (Containers a job leaves fail that job and are removed by the runner.)"""
    root = Path(tempfile.mkdtemp(prefix="xdb-ci-", dir="/var/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
        remove_builder_image(docker_client, engine_images.previous_builder)


def make_site(root: Path, workspace: Path, client: docker.DockerClient, inputs: ForkInputs) -> Site:
    repository = make_user_repository(
        root / "repository",
        root / workspace,
        iso=inputs.iso,
        kernel_rpm=inputs.kernel_rpm,
        release=inputs.release,
        base_image=inputs.base_image,
    )
    machine = cirunner.Machine(root=root, repository=repository, client=client)
    return Site(machine=machine, workspace=root / workspace, www=root / "www")


# --- what the jobs must have done ------------------------------------------------------------


RESULT_LINE = re.compile(r"^(\S+) / DRBD (\S+): (built|up to date|failed [^:]*): (\S+)$", re.M)


def assert_each_build_job_built_its_entry(results: list[cirunner.JobResult], state: str) -> None:
    """Each job's log holds the result line of its own build, and the jobs cover the matrix."""
    seen = set()
    for result in results:
        text = result.text()
        lines = RESULT_LINE.findall(text)
        assert len(lines) == 1, f"{result.name}: {lines}\n{text[-3000:]}"
        target, version, outcome, _ = lines[0]
        assert outcome == state, f"{result.name}: {lines[0]}\n{text[-3000:]}"
        assert target in result.name and version in result.name, (result.name, lines[0])
        seen.add((target, version))
    assert seen == {(t, v) for t in TARGETS for v in VERSIONS}


def current_version(www: Path) -> str:
    return os.readlink(www / "current")


def verify(repo: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "builder", "verify", "--repo", str(repo)],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def dnf(work: Path, *args: str, repos: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [
                "dnf", "-y", f"--installroot={work / 'root'}",
                f"--setopt=reposdir={repos or '/nonexistent'}",
                f"--setopt=cachedir={work / 'cache'}", "--releasever=7",
                "--setopt=install_weak_deps=False", *args,
            ],
            capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip
    finally:
        # repo_gpgcheck makes dnf start a gpg-agent for each repository's keyring.
        for keyring in work.glob("cache/*/pubring"):
            subprocess.run(["gpgconf", "--homedir", str(keyring), "--kill", "all"], check=False)


def assert_dnf_gets_a_package_of_every_target(www: Path, url: str, work: Path) -> None:
    """Debian's dnf, with the ``.repo`` file publish wrote (gpgcheck=1, repo_gpgcheck=1) and
    the repository over HTTP: each target's module downloads, verified; one installs."""
    repo_file = (www / "xcp-drbd-el7.repo").read_text()
    assert f"baseurl={url}/el7/" in repo_file, repo_file
    assert "gpgcheck=1" in repo_file and "repo_gpgcheck=1" in repo_file
    repos = work / "repos"
    repos.mkdir(parents=True)
    (repos / "xcp-drbd-el7.repo").write_text(repo_file)
    served = sorted((www / "el7" / "x86_64").glob("*.rpm"))
    base = buildenv.dom0_stand_ins(work, served)
    prepared = dnf(work, "--nogpgcheck", "install", *map(str, base))
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    modules = {
        (target, version): next(
            p for p in served
            if p.name.startswith("drbd-km-")
            and p.name.endswith(f"-{version}-1.{target.replace('-', '_')}.x86_64.rpm")
        )
        for target in TARGETS
        for version in VERSIONS
    }  # fmt: skip
    for index, target in enumerate(TARGETS):
        version = VERSIONS[index % len(VERSIONS)]
        package = modules[target, version].name.removesuffix(".rpm")
        got = dnf(work, "--disablerepo=*", "--enablerepo=xcp-drbd-builder", "install",
                  "--downloadonly", f"--downloaddir={work / 'downloads'}", package,
                  repos=repos)  # fmt: skip
        assert got.returncode == 0, got.stdout + got.stderr
        if index == 0:  # the repository's key, from the URL the .repo file names
            assert "Importing GPG key" in got.stdout + got.stderr, got.stdout + got.stderr
        downloaded = work / "downloads" / modules[target, version].name
        assert downloaded.read_bytes() == modules[target, version].read_bytes()
    package = modules[TARGETS[-1], VERSIONS[-1]].name.removesuffix(".rpm")
    installed = dnf(work, "--disablerepo=*", "--enablerepo=xcp-drbd-builder", "install", package,
                    repos=repos)  # fmt: skip
    # (%post needs /bin/sh, which the installroot lacks: rpm reports it and goes on.)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    names = subprocess.run(
        ["rpm", f"--root={work / 'root'}", "-qa", "--qf", "%{NAME}-%{VERSION}-%{RELEASE}\n"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert package.removesuffix(".x86_64") in names
    assert f"drbd-utils-{VERSIONS[-1]}-1" in names


def print_timings(machine: cirunner.Machine) -> None:
    for name, seconds in machine.timings:
        print(f"{seconds:7.1f} s  {name}")
    print(f"{sum(s for _, s in machine.timings):7.1f} s  in {len(machine.timings)} jobs")


def assert_the_key_is_nowhere(root: Path, signer: Signer) -> None:
    """No long line of the armored secret key in any log, workspace, home, temporary
    directory, cache or artifact of any job (grep reads binary files too), and no GnuPG home
    holding a secret key left behind."""
    found = subprocess.run(
        ["grep", "-rlF", "--devices=skip", "-f", str(signer.patterns), str(root)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert found.returncode == 1, f"the signing key is in: {found.stdout}{found.stderr}"
    keys = [*root.rglob("private-keys-v1.d/*.key"), *root.rglob("secring.gpg")]
    left = [key for key in keys if key.stat().st_size > 0]
    assert left == [], f"GnuPG homes with secret keys left: {left}"


# --- the pipelines ---------------------------------------------------------------------------


def test_github_workflow_builds_every_entry_publishes_once_then_a_scheduled_run_does_nothing(
    site_root: Path, docker_client: docker.DockerClient, fork_inputs: ForkInputs, signer: Signer
) -> None:
    site = make_site(site_root, GITHUB_WORKSPACE, docker_client, fork_inputs)
    caches = cirunner.CacheStore(site_root / "caches" / "github")
    with serve_directory(site.www) as url:

        def run(event: str, run_id: int) -> dict[str, list[cirunner.JobResult]]:
            return cirunner.GitHubWorkflow(
                site.machine,
                WORKFLOW,
                workspace=site.workspace,
                caches=caches,
                event=event,
                run_id=run_id,
                secrets=signer.secrets(upload_to=site.www),
                variables={"XDB_TARGETS": " ".join(TARGETS), "XDB_REPO_URL": url},
            ).run()

        first = run("push", 7001)
        matrix = json.loads(first["plan"][0].outputs["matrix"])
        assert len(matrix["include"]) == len(TARGETS) * len(VERSIONS)
        assert len(first["build"]) == len(TARGETS) * len(VERSIONS)
        assert_each_build_job_built_its_entry(first["build"], "built")
        (publish,) = first["publish"]
        assert "verified" in publish.text()
        published = current_version(site.www)
        verify(site.www)
        assert_dnf_gets_a_package_of_every_target(site.www, url, site_root / "dnf")

        # The nightly run: the caches of the first, nothing new.
        second = run("schedule", 7002)
        assert len(second["build"]) == len(TARGETS) * len(VERSIONS)
        assert_each_build_job_built_its_entry(second["build"], "up to date")
        (publish,) = second["publish"]
        assert "nothing new" in publish.text(), publish.text()[-3000:]
        assert current_version(site.www) == published
        verify(site.www)
    print_timings(site.machine)
    assert_the_key_is_nowhere(site_root, signer)


def test_gitlab_pipeline_plans_a_child_pipeline_that_builds_every_entry_and_publishes(
    site_root: Path, docker_client: docker.DockerClient, fork_inputs: ForkInputs, signer: Signer
) -> None:
    site = make_site(site_root, GITLAB_WORKSPACE, docker_client, fork_inputs)
    with serve_directory(site.www) as url:
        results = cirunner.GitLabPipeline(
            site.machine,
            workspace=site.workspace,
            caches=site_root / "caches" / "gitlab",
            pipeline_id=8001,
            source="push",
            variables={
                **signer.secrets(upload_to=site.www),
                "XDB_TARGETS": " ".join(TARGETS),
                "XDB_REPO_URL": url,
            },
        ).run()
        names = [result.name for result in results]
        builds = [result for result in results if result.name.startswith("build ")]
        assert names == ["plan", *(r.name for r in builds), "publish"]
        assert len(builds) == len(TARGETS) * len(VERSIONS)
        assert_each_build_job_built_its_entry(builds, "built")
        assert "verified" in results[-1].text()
        verify(site.www)
        assert_dnf_gets_a_package_of_every_target(site.www, url, site_root / "dnf")
    print_timings(site.machine)
    assert_the_key_is_nowhere(site_root, signer)
