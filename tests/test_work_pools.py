"""Docker and Kubernetes work pools: deploy/'s job templates and image, checked without an engine.

No Docker daemon or cluster is needed: the templates go through the validation the Prefect
server applies on `prefect work-pool create --base-job-template`, are compared with the
default templates Prefect ships for its `docker` and `kubernetes` workers, and are rendered
with their defaults the way a worker renders them for a flow run.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import prefect
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from prefect.server.schemas.actions import WorkPoolCreate
from prefect.utilities.templating import apply_values

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = {
    "docker": REPO / "deploy/docker-job-template.json",
    "kubernetes": REPO / "deploy/kubernetes-job-template.json",
}
WORKER_COLLECTIONS = {"docker": "prefect-docker", "kubernetes": "prefect-kubernetes"}
FILLED_BY_PREFECT = {"command", "env", "labels", "name"}  # set per flow run by the worker
WORKDIR = "/workspace"
COMMAND = "prefect flow-run execute 00000000-0000-0000-0000-000000000000"


def template(kind: str) -> dict[str, Any]:
    """The base job template in deploy/ for a work pool type."""
    return json.loads(TEMPLATES[kind].read_text())


def prefect_default(kind: str) -> dict[str, Any]:
    """The base job template Prefect ships for its `kind` worker (from its collection registry)."""
    views = Path(prefect.__file__).parent / "server/api/collections_data/views"
    registry = json.loads((views / "aggregate-worker-metadata.json").read_text())
    return registry[WORKER_COLLECTIONS[kind]][kind]["default_base_job_configuration"]


def render(tpl: dict[str, Any], **values: Any) -> dict[str, Any]:
    """The job configuration a worker builds: variable defaults, then `values`, applied."""
    props = tpl["variables"]["properties"]
    defaults = {k: v["default"] for k, v in props.items() if v.get("default") is not None}
    return apply_values(copy.deepcopy(tpl["job_configuration"]), defaults | values)


def dockerfile() -> list[tuple[str, str]]:
    """deploy/Dockerfile as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "deploy/Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_template_passes_prefects_work_pool_validation(kind: str) -> None:
    """What `prefect work-pool create --base-job-template` checks, plus a valid JSON schema."""
    tpl = template(kind)
    pool = WorkPoolCreate(name=f"xray-{kind}", type=kind, base_job_template=tpl)
    assert pool.base_job_template["job_configuration"] == tpl["job_configuration"]
    variables = tpl["variables"]
    jsonschema.Draft202012Validator.check_schema(variables)
    props = variables["properties"]
    defaults = {k: v["default"] for k, v in props.items() if "default" in v}
    jsonschema.validate(defaults, variables)  # every default fits its own schema
    assert set(props) >= FILLED_BY_PREFECT, FILLED_BY_PREFECT - set(props)


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_template_only_uses_fields_the_worker_knows(kind: str) -> None:
    """job_configuration keys are those of Prefect's own template for that worker type."""
    ours, theirs = template(kind)["job_configuration"], prefect_default(kind)["job_configuration"]
    assert set(ours) <= set(theirs), set(ours) - set(theirs)
    if kind == "kubernetes":
        mine, ref = ours["job_manifest"], theirs["job_manifest"]
        assert (mine["apiVersion"], mine["kind"]) == (ref["apiVersion"], ref["kind"])
        container = mine["spec"]["template"]["spec"]["containers"][0]
        ref_container = ref["spec"]["template"]["spec"]["containers"][0]
        assert container["name"] == ref_container["name"]  # the worker looks for this one
        for key in ("image", "args", "env"):
            assert container[key] == ref_container[key], key


def test_docker_job_renders_with_the_workspace_mounted() -> None:
    """Rendered with its defaults: the project image, /workspace mounted, host network."""
    job = render(template("docker"), command=COMMAND, name="xray-run")
    assert "{{" not in json.dumps(job)
    assert job["command"] == COMMAND and job["name"] == "xray-run"
    assert job["image"] == "xray-transfer:latest"  # the tag deploy/Dockerfile documents
    assert job["image"] in (REPO / "deploy/Dockerfile").read_text()
    assert job["env"]["XRAY_WORKDIR"] == WORKDIR
    mounts = dict(reversed(v.split(":")[:2]) for v in job["volumes"])  # container -> host
    assert WORKDIR in mounts and all(h.startswith("/") for h in mounts.values()), mounts
    assert job["network_mode"] == "host"  # reaches a Prefect server bound to 127.0.0.1
    assert job["auto_remove"] is True and isinstance(job["mem_limit"], str)


def test_kubernetes_job_renders_to_a_job_with_the_workspace_claim() -> None:
    """Rendered with its defaults: one Job, no pod retries, the workspace PVC at /workspace."""
    job = render(template("kubernetes"), command=COMMAND, name="xray-run")
    assert "{{" not in json.dumps(job)
    manifest = job["job_manifest"]
    assert manifest["metadata"]["generateName"] == "xray-run-"
    assert manifest["metadata"]["namespace"] == job["namespace"] == "xray"
    spec = manifest["spec"]
    assert spec["backoffLimit"] == 0  # Prefect, not Kubernetes, decides about retries
    assert isinstance(spec["ttlSecondsAfterFinished"], int)
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["args"] == COMMAND and container["image"].endswith("xray-transfer:latest")
    assert container["workingDir"] == job["env"]["XRAY_WORKDIR"] == WORKDIR
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        assert mount["name"] in volumes, mount
    (workspace,) = [m for m in container["volumeMounts"] if m["mountPath"] == WORKDIR]
    claim = volumes[workspace["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == "xray-workspace"
    resources = container["resources"]
    assert all(isinstance(v, str) for part in resources.values() for v in part.values())


def test_templates_enter_the_checkout_prefect_yaml_pulls_into() -> None:
    """prefect.yaml's pull step enters $XRAY_WORKDIR; both templates and the image set it."""
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (step,) = config["pull"]
    assert step["prefect.deployments.steps.set_working_directory"]["directory"] == (
        "{{ $XRAY_WORKDIR }}"
    )
    for kind in TEMPLATES:
        env = template(kind)["variables"]["properties"]["env"]["default"]
        assert env["XRAY_WORKDIR"] == WORKDIR, kind
    assert f"XRAY_WORKDIR={WORKDIR}" in (REPO / "deploy/Dockerfile").read_text()


def test_dockerfile_installs_the_locked_environment() -> None:
    """The image installs uv.lock with --frozen, uv pinned from PyPI, and the package code."""
    steps = dockerfile()
    (base,) = [args for op, args in steps if op == "FROM"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    python = re.fullmatch(r"python:(\d+\.\d+)(-slim)?", base)
    assert python, base
    assert SpecifierSet(project["project"]["requires-python"]).contains(python.group(1)), base

    runs = [args for op, args in steps if op == "RUN"]
    syncs = [i for i, (op, args) in enumerate(steps) if op == "RUN" and "uv sync" in args]
    assert len(syncs) == 1, runs
    sync = shlex.split(steps[syncs[0]][1])
    assert "--frozen" in sync and "--no-dev" in sync, sync
    uv_pins = [a for r in runs for a in shlex.split(r) if re.fullmatch(r"uv==[\d.]+", a)]
    assert uv_pins, "uv must be installed from PyPI at a pinned version"

    copied = {}  # source -> index of its COPY
    for i, (op, args) in enumerate(steps):
        if op == "COPY":
            assert not args.startswith("--from"), f"COPY {args}: only PyPI and this repo"
            *sources, _dest = args.split()
            copied |= dict.fromkeys(sources, i)
    for src in copied:
        assert (REPO / src).exists(), f"COPY {src}: no such file in the repo"
    for needed in ("pyproject.toml", "uv.lock"):
        assert copied.get(needed, len(steps)) < syncs[0], f"{needed} is not copied before uv sync"
    for package in project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        assert copied.get(package, len(steps)) < syncs[0], f"package {package} is not copied"


def test_dockerignore_keeps_the_build_context_small() -> None:
    """The environment, DVC cache and pipeline outputs never go into the build context."""
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in (".venv", ".git", ".dvc/cache", "data", "models"):
        assert path in ignored, path
