"""Fixtures of the deployment checks: the parsed Dockerfile and the rendered kustomize trees."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import pytest

from tests.deploy.dockerfile_model import Instruction, read_dockerfile
from tests.deploy.kustomize_render import KUSTOMIZATIONS, Rendered, build


def kubectl_binary() -> str:
    """Path of kubectl. Without it the checks skip, visibly; under CI they fail."""
    path = shutil.which("kubectl")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is required under CI: it builds the kustomize overlays")
        pytest.skip("kubectl is not installed, so the kustomize overlays are not built (CI builds them)")
    return path


@pytest.fixture(scope="session")
def dockerfile() -> list[Instruction]:
    """The repository's Dockerfile, parsed."""
    return read_dockerfile()


@pytest.fixture(scope="session")
def kustomize() -> Callable[[str], Rendered]:
    """Renders a kustomization under k8s/ with `kubectl kustomize`, once per session."""
    kubectl = kubectl_binary()
    cache: dict[str, Rendered] = {}

    def render(name: str) -> Rendered:
        if name not in cache:
            cache[name] = build(kubectl, name)
        return cache[name]

    return render


@pytest.fixture(params=KUSTOMIZATIONS)
def rendered(request: pytest.FixtureRequest, kustomize: Callable[[str], Rendered]) -> Rendered:
    """Each kustomization, the base and every overlay, rendered."""
    return kustomize(request.param)
