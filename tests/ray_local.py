"""The local Ray instance the Ray tests share within a module (import `local_ray` there)."""

from __future__ import annotations

import os

import pytest

import fastlstm


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """Ray on 2 CPUs for the module's tests, shut down after them."""
    import ray

    # Ray's workers start in the driver's working directory and import from it first: from a
    # source checkout whose compiled extensions live elsewhere (CI tests the installed
    # package), they would import the unbuilt sources.  Start them in an empty directory,
    # with the directory holding the fastlstm under test on their path.
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray"))
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastlstm.__file__)))
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
                 runtime_env={"env_vars": {"PYTHONPATH": package_parent}})
        yield
        ray.shutdown()
    finally:
        os.chdir(cwd)
