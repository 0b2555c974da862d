"""The top-level Dockerfile: the builder as an image for CI jobs, built and run for real.

Its base is the locally debootstrapped Debian 12 root instead of debian:bookworm-slim (no
registry here). Where this machine trusts extra CAs (a TLS-intercepting proxy), they go into
the build context as extra-ca.crt, the way the Dockerfile documents for such sites.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import docker
import pytest

from builder.builds import images
from builder.specs import Target

pytestmark = [pytest.mark.integration, pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]
EXTRA_CAS = Path("/usr/local/share/ca-certificates")


@pytest.fixture(scope="module")
def self_image(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    standin_target: Target,
) -> str:
    context = tmp_path_factory.mktemp("self-context")
    for name in ("Dockerfile", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    for name in ("builder", "specs", "containers"):
        shutil.copytree(REPO / name, context / name, ignore=shutil.ignore_patterns("__pycache__"))
    cas = sorted(EXTRA_CAS.glob("*.crt")) if EXTRA_CAS.is_dir() else []
    if cas:
        (context / "extra-ca.crt").write_text("".join(ca.read_text() for ca in cas))
    assert standin_target.base_image is not None
    return images.build_image(
        docker_client,
        context=context,
        name="self-test",
        build_args={"BASE_IMAGE": standin_target.base_image},
    )


def run_in(client: docker.DockerClient, image: str, *args: str) -> str:
    output: bytes = client.containers.run(image, list(args), remove=True, network_mode="none")
    return output.decode()


def test_the_image_runs_the_builder(docker_client: docker.DockerClient, self_image: str) -> None:
    targets = json.loads(run_in(docker_client, self_image, "targets", "--json"))
    assert {"xcp-1.5", "xcp-ng-8.3"} <= {t["id"] for t in targets["targets"]}
    plan = run_in(
        docker_client, self_image, "build", "--xcp", "1.5", "--drbd", "8.4.1", "--dry-run"
    )
    assert "xcp-1.5 / DRBD 8.4.1" in plan
    # The build contexts came along, inside the installed (not editable) package.
    assert "site-packages/builder/data/containers/centos5-i686" in plan


def test_a_checkout_as_working_directory_does_not_replace_the_installed_tool(
    docker_client: docker.DockerClient, self_image: str
) -> None:
    """CI jobs run the image in their checkout: its builder/ must not shadow the install."""
    output: bytes = docker_client.containers.run(
        self_image,
        ["build", "--xcp", "1.5", "--drbd", "8.4.1", "--dry-run"],
        volumes={str(REPO): {"bind": "/checkout", "mode": "ro"}},
        working_dir="/checkout",
        remove=True,
        network_mode="none",
    )
    assert "site-packages/builder/data/containers/centos5-i686" in output.decode()


def test_the_image_carries_the_publishing_tools(
    docker_client: docker.DockerClient, self_image: str
) -> None:
    for tool in ("rpmsign", "rpmkeys", "createrepo_c", "gpg"):
        output: bytes = docker_client.containers.run(
            self_image, ["--version"], entrypoint=tool, remove=True, network_mode="none"
        )
        assert output.strip(), tool
