"""deploy/: the Kubernetes and CI examples parse, fit together, and run valid `bale` commands.

No cluster or CI runner here, so what can be checked offline is: every file is YAML; the Job,
CronJob, ConfigMap and Secrets reference each other by the right names and paths; the spec in
the ConfigMap is a valid spec; and every `bale` command line parses with bale's own CLI.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from pipeline.batch.shard import parse_shard
from pipeline.batch.spec import parse_spec
from pipeline.cli import main

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _by_kind() -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in _docs(path):
            out.setdefault(doc["kind"], []).append(doc)
    return out


def parse_bale(args: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse a `bale` command line the way the real CLI does, without running it."""
    ctx = main.make_context("bale", list(args))
    protected = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args
    rest = [*protected, *ctx.args]
    name, command, sub_args = main.resolve_command(ctx, rest)
    assert name is not None and command is not None
    sub = command.make_context(name, sub_args, parent=ctx)
    return name, sub.params


def test_every_deploy_file_is_yaml() -> None:
    files = sorted(DEPLOY.rglob("*.yml")) + sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) == 8
    for path in files:
        assert _docs(path), path


def _job_specs() -> list[tuple[str, dict[str, Any]]]:
    kinds = _by_kind()
    (job,) = kinds["Job"]
    (cron,) = kinds["CronJob"]
    return [("Job", job["spec"]), ("CronJob", cron["spec"]["jobTemplate"]["spec"])]


@pytest.mark.parametrize("kind", ["Job", "CronJob"])
def test_indexed_job_runs_a_shard_of_the_configmap_spec(kind: str) -> None:
    spec = dict(_job_specs())[kind]
    kinds = _by_kind()
    assert spec["completionMode"] == "Indexed"
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    shards = int(env["SHARDS"])
    assert spec["completions"] == shards

    # $(SHARDS) is Kubernetes' own expansion of the container's env into args.
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]
    name, params = parse_bale(args)
    assert name == "run"
    assert params["store_url"].startswith("oss://")
    for index in range(shards):
        assert parse_shard(params["shard"], {"JOB_COMPLETION_INDEX": str(index)}) == (
            index,
            shards,
        )

    # The spec file is the ConfigMap's key, where the volume puts it.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    spec_path = Path(params["spec_path"])
    (configmap,) = [v for v in volumes.values() if "configMap" in v]
    assert spec_path.parent == Path(mounts[configmap["name"]])
    (cm,) = [
        c for c in kinds["ConfigMap"] if c["metadata"]["name"] == configmap["configMap"]["name"]
    ]
    parsed = parse_spec(cm["data"][spec_path.name], "configmap")
    assert parsed.registries

    # Credentials: auth.json from a Secret volume, store keys from a Secret as env.
    secrets = {s["metadata"]["name"]: s for s in kinds["Secret"]}
    (auth,) = [v for v in volumes.values() if "secret" in v]
    auth_file = Path(env["REGISTRY_AUTH_FILE"])
    assert auth_file.parent == Path(mounts[auth["name"]])
    assert auth_file.name in secrets[auth["secret"]["secretName"]]["stringData"]
    (store,) = container["envFrom"]
    keys = secrets[store["secretRef"]["name"]]["stringData"]
    assert {"OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET"} <= set(keys)
    assert "OSS_ENDPOINT" in env
    # A bad spec (exit 2) fails its index at once instead of being retried.
    (rule,) = spec["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailIndex" and rule["onExitCodes"]["values"] == [2]


def _bale_line(script: str) -> list[str]:
    (line,) = [ln for ln in script.splitlines() if ln.strip().startswith("bale ")]
    return shlex.split(line)[1:]


def _check_archive_step(args: list[str], artifacts: list[str]) -> None:
    name, params = parse_bale(args)
    assert name == "archive"
    assert params["from_file"] == "pushed.txt"
    assert params["report_path"] in artifacts and params["junit_path"] in artifacts


def test_github_actions_archives_the_pushed_list_and_keeps_reports() -> None:
    flow = yaml.safe_load((DEPLOY / "ci" / "github-actions.yml").read_text())
    steps = flow["jobs"]["archive"]["steps"]
    (run,) = [s for s in steps if "bale archive" in s.get("run", "")]
    (upload,) = [s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert upload["if"] == "always()"
    _check_archive_step(_bale_line(run["run"]), upload["with"]["path"].split())
    assert "pushed.txt" in next(s["run"] for s in steps if "> pushed.txt" in s.get("run", ""))


def test_gitlab_ci_archives_the_pushed_list_and_keeps_reports() -> None:
    config = yaml.safe_load((DEPLOY / "ci" / "gitlab-ci.yml").read_text())
    job = config["archive-pushed"]
    artifacts = job["artifacts"]
    assert artifacts["when"] == "always"
    assert artifacts["reports"]["junit"] == "junit.xml"
    _check_archive_step(_bale_line("\n".join(job["script"])), artifacts["paths"])


def test_serve_deployment_runs_bale_serve_on_the_redis_service() -> None:
    kinds = _by_kind()
    deployments = {d["metadata"]["name"]: d for d in kinds["Deployment"]}
    services = {s["metadata"]["name"]: s for s in kinds["Service"]}
    pod = deployments["bale-serve"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    name, params = parse_bale(container["args"])
    assert name == "serve"
    assert params["allowed"] and params["reconcile_every"] == 3600
    host_port = params["queue_url"].removeprefix("redis://").split("/")[0]
    redis_host, redis_port = host_port.split(":")
    (redis,) = [s for s in kinds["StatefulSet"] if s["metadata"]["name"] == redis_host]
    assert services[redis_host]["spec"]["ports"][0]["port"] == int(redis_port)
    assert "--appendonly" in redis["spec"]["template"]["spec"]["containers"][0]["args"]
    # The Service reaches the pods' port; the probes ask the service's own health routes.
    listen_port = int(params["listen"].rsplit(":", 1)[1])
    assert container["ports"][0]["containerPort"] == listen_port
    labels = deployments["bale-serve"]["spec"]["template"]["metadata"]["labels"]
    assert services["bale-serve"]["spec"]["selector"].items() <= labels.items()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The shared secret and the store keys come from Secrets that secrets.example.yaml makes.
    secrets = {s["metadata"]["name"]: s for s in kinds["Secret"]}
    refs = [e["secretRef"]["name"] for e in container["envFrom"]]
    assert "BALE_SERVE_SECRET" in secrets[refs[1]]["stringData"]
    assert all(r in secrets for r in refs)
    configmaps = {c["metadata"]["name"] for c in kinds["ConfigMap"]}
    assert {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v} <= configmaps


def test_parse_bale_rejects_an_unknown_option() -> None:
    with pytest.raises(click.UsageError):
        parse_bale(["run", "spec.yaml", "--to", "x", "--shards", "4"])


# ---- how bale gets into the pods and CI jobs -----------------------------------------------

ROOT = DEPLOY.parent


def _deploy_texts() -> dict[str, str]:
    return {
        str(p.relative_to(ROOT)): p.read_text()
        for p in sorted(DEPLOY.rglob("*"))
        if p.is_file() and p.suffix in (".yml", ".yaml", ".md")
    }


def test_nothing_installs_bale_from_a_package_index() -> None:
    """bale is not on any package index: a wheel built from a checkout, or the image."""
    for name, text in _deploy_texts().items():
        assert not re.search(r"bale\s*==", text), name
        for args in re.findall(r"pip install\s+([^&;|`\n]+)", text):
            for arg in args.split():
                if "bale" in arg and not arg.startswith("-"):
                    assert arg.endswith(".whl"), f"{name}: pip install {args}"


def _image_user() -> tuple[int, int]:
    (user,) = re.findall(r"^USER\s+(\d+):(\d+)\s*$", (ROOT / "Containerfile").read_text(), re.M)
    return int(user[0]), int(user[1])


@pytest.mark.parametrize("kind", ["Job", "CronJob"])
def test_pods_run_the_containerfile_image_as_its_user(kind: str) -> None:
    pod = dict(_job_specs())[kind]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].rsplit(":", 1)[0].endswith("/bale")
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"]) == _image_user()
    assert re.search(r'^ENTRYPOINT \["bale"\]$', (ROOT / "Containerfile").read_text(), re.M)
    assert container.get("command") is None  # args go to the image's `bale` entrypoint


def test_github_actions_installs_a_wheel_built_from_a_checkout_of_bale() -> None:
    flow = yaml.safe_load((DEPLOY / "ci" / "github-actions.yml").read_text())
    steps = flow["jobs"]["archive"]["steps"]
    names = [str(s.get("uses", "")) + s.get("run", "") for s in steps]
    (checkout_at,) = [i for i, n in enumerate(names) if n.startswith("actions/checkout@")]
    (build_at,) = [i for i, n in enumerate(names) if "python -m build --wheel" in n]
    archive_at = next(i for i, n in enumerate(names) if "bale archive" in n)
    assert checkout_at < build_at < archive_at
    src = steps[checkout_at]["with"]["path"]
    build = shlex.split(next(ln for ln in names[build_at].splitlines() if "-m build" in ln))
    assert build[-1] == src
    outdir = build[build.index("--outdir") + 1]
    assert f"pip install {outdir}/bale-*.whl" in names[build_at]


def test_github_actions_never_drops_a_pending_archive_run() -> None:
    """A concurrency group holds one pending run and cancels it when a third push arrives:
    shared by all pushes, it would lose the middle push's images."""
    flow = yaml.safe_load((DEPLOY / "ci" / "github-actions.yml").read_text())
    concurrency = flow.get("concurrency") or flow["jobs"]["archive"].get("concurrency")
    if concurrency is not None:
        group = concurrency["group"] if isinstance(concurrency, dict) else concurrency
        assert "github.run_id" in group or "images" in group, group


def test_gitlab_ci_runs_the_bale_image_with_a_shell() -> None:
    job = yaml.safe_load((DEPLOY / "ci" / "gitlab-ci.yml").read_text())["archive-pushed"]
    image = job["image"]
    assert image["name"] == dict(_job_specs())["Job"]["template"]["spec"]["containers"][0]["image"]
    assert image["entrypoint"] == [""]  # the image's entrypoint is bale, the job needs sh


# ---- job failure handling on new and older clusters ---------------------------------------


def _check_failure_fields(spec: dict[str, Any]) -> None:
    """The fields Kubernetes accepts together: FailIndex and maxFailedIndexes need
    backoffLimitPerIndex, and exit 2 (bad input) is never retried."""
    actions = {r["action"] for r in spec["podFailurePolicy"]["rules"]}
    if "FailIndex" in actions or "maxFailedIndexes" in spec:
        assert "backoffLimitPerIndex" in spec
    (rule,) = [r for r in spec["podFailurePolicy"]["rules"] if r["onExitCodes"]["values"] == [2]]
    assert rule["action"] in ("FailIndex", "FailJob")
    assert rule["onExitCodes"]["containerName"] == "bale"
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it


def _older_clusters_variant() -> dict[str, Any]:
    """The commented alternative in job.yaml, applied to its Job."""
    lines = (DEPLOY / "k8s" / "job.yaml").read_text().splitlines()
    start = lines.index("# older-clusters:") + 1
    block = []
    for line in lines[start:]:
        if not line.startswith("#   "):
            break
        block.append(line[4:])
    replacement = yaml.safe_load("\n".join(block))
    spec = {
        k: v
        for k, v in dict(_job_specs())["Job"].items()
        if k not in ("backoffLimitPerIndex", "maxFailedIndexes", "podFailurePolicy")
    }
    return {**spec, **replacement}


def test_job_failure_fields_fit_together_on_new_and_older_clusters() -> None:
    for _, spec in _job_specs():
        _check_failure_fields(spec)
    older = _older_clusters_variant()
    assert "backoffLimitPerIndex" not in older and older["backoffLimit"] >= 1
    _check_failure_fields(older)
