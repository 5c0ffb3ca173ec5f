"""The Docker deployment, checked without a Docker engine; test_containers.py builds and runs it.

The compose file is validated against the Compose specification's JSON schema and its
structure asserted. What the images' commands do is checked by running them as they are
written in the Dockerfiles: the worker's entrypoint script (here, and with real roles in
test_db_roles.py), each image's HEALTHCHECK against its command. The Dockerfiles' text is
checked for what a user relies on (the default base image, the user, what is copied where);
hadolint runs over them in ``./run lint``. That the images build, come up healthy, run as
uid 10001 and do their work is test_containers.py's part, on a real engine.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

from shared.config import load_settings
from shared.db import schema
from shared.db.connection import connect, transaction
from stack import scratch
from stack.scratch import unique_name
from tests.support.services import PROJECT_ROOT, run_entrypoint

COMPOSE_SCHEMA = PROJECT_ROOT.parent / "shared" / "schemas" / "compose-spec.json"
APP_SERVICES = ("worker", "web")
INFERENCE_PACKAGES = {"tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert", "tflite-runtime"}
# ${NAME}, ${NAME:-default}, ${NAME:?error}; $$ escapes a dollar for the container's shell.
VARIABLE = re.compile(r"(?<!\$)\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


def compose() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())


def dockerfile(name: str) -> str:
    return (PROJECT_ROOT / name).read_text()


def exec_form(name: str, instruction: str) -> list[str]:
    """The JSON (exec) form of a Dockerfile's last ``instruction``; for HEALTHCHECK, its CMD."""
    logical = dockerfile(name).replace("\\\n", " ").splitlines()  # continuation lines joined
    found = [line for line in logical if line.startswith(f"{instruction} ")]
    assert found, f"{name} has no {instruction}"
    return json.loads(found[-1].split(" CMD ", 1)[-1] if instruction == "HEALTHCHECK" else found[-1].split(" ", 1)[1])


def with_this_python(env: dict[str, str]) -> dict[str, str]:
    """``python`` in an image's commands is this virtual environment's."""
    return {**env, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"}


def env_example() -> dict[str, str]:
    lines = (PROJECT_ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.lstrip().startswith("#"))


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution, enough for this file: a missing required value raises."""

    def substitute(match: re.Match) -> str:
        value = env.get(match["name"], "")
        if value:
            return value
        if match["op"] == ":?":
            raise ValueError(match["arg"])
        return match["arg"] or ""

    return VARIABLE.sub(substitute, text).replace("$$", "$")


def test_compose_file_follows_the_compose_specification():
    if not COMPOSE_SCHEMA.exists():
        pytest.skip(
            f"the Compose JSON schema is not at {COMPOSE_SCHEMA}"
            " (it comes with the shared folder beside the repository)"
        )
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.Draft7Validator(schema).validate(compose())


def test_four_services_start_in_order_behind_health_checks():
    services = compose()["services"]
    assert {name for name, service in services.items() if not service.get("profiles")} == {
        "db",
        "redis",
        "worker",
        "web",
    }
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1] == "yes"
    for name in APP_SERVICES:
        assert services[name]["depends_on"] == {
            "db": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }
    assert services["web"]["ports"] == ["${WEB_PORT:-8000}:8000"]


def network_namespaces_available() -> bool:
    return (
        shutil.which("unshare") is not None
        and subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0
    )


def test_the_web_image_health_check_passes_against_the_web_image_command():
    """Its CMD and HEALTHCHECK as written (port 8000 each), run in a network namespace of their own."""
    if not network_namespaces_available():
        pytest.skip("needs unshare --net (root, or user namespaces) to bind the image's fixed port without clashing")
    command, check = exec_form("Dockerfile.web", "CMD"), exec_form("Dockerfile.web", "HEALTHCHECK")
    probe = [sys.executable, "-m", "tests.integration.healthcheck_probe", json.dumps(command), json.dumps(check)]
    env = with_this_python({**os.environ, "WEB_CONCURRENCY": "1"})
    ran = subprocess.run(
        ["unshare", "--net", *probe], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout.splitlines()[-1]) == {"healthy_while_serving": True, "healthy_after_stop": False}, (
        ran.stderr
    )


def test_the_worker_image_health_check_passes_with_an_upload_consumer_and_fails_without(worker, worker_env):
    check = exec_form("Dockerfile.worker", "HEALTHCHECK")
    healthy = subprocess.run(check, cwd=PROJECT_ROOT, env=with_this_python(worker_env), capture_output=True, timeout=30)
    assert healthy.returncode == 0, healthy.stderr
    nobody = with_this_python({**worker_env, "QUEUE_PREFIX": unique_name("mnistq-nobody")})
    assert subprocess.run(check, cwd=PROJECT_ROOT, env=nobody, capture_output=True, timeout=30).returncode == 1


def test_worker_can_be_scaled():
    """``docker compose up --scale worker=4`` needs no fixed container name and no host port."""
    worker = compose()["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert not any("container_name" in service for service in compose()["services"].values())


def test_data_lives_in_named_volumes():
    document = compose()
    services = document["services"]
    assert set(document["volumes"]) == {
        "pg_data",
        "redis_data",
        "model_data",
        "prometheus_data",
    }  # the last: --profile monitoring
    assert "pg_data:/var/lib/postgresql" in services["db"]["volumes"]
    assert "redis_data:/data" in services["redis"]["volumes"]
    # The workers register models from the volume; the web needs no model file (it reads the models table).
    assert any(volume.startswith("model_data:/models") for volume in services["worker"]["volumes"])
    assert not any("model" in volume for volume in services["web"].get("volumes", []))


SECRETS = {
    "POSTGRES_PASSWORD": "pw-from-env",
    "SECRET_KEY": "key-from-env",
    "MNIST_OWNER_PASSWORD": "owner-from-env",
    "MNIST_APP_PASSWORD": "app-from-env",
    "MNIST_WEB_PASSWORD": "web-from-env",
    "MNIST_WORKER_PASSWORD": "worker-from-env",
}


def rendered_compose() -> dict:
    """The compose file as Compose would see it with .env.example filled in with ``SECRETS``."""
    text = (PROJECT_ROOT / "docker-compose.yml").read_text()
    return yaml.safe_load(interpolate(text, {**env_example(), **SECRETS}))


def test_secrets_come_from_the_env_file():
    text = (PROJECT_ROOT / "docker-compose.yml").read_text()
    required = {match["name"] for match in VARIABLE.finditer(text) if match["op"] == ":?"}
    assert required == set(SECRETS)
    example = env_example()
    assert required <= set(example) and not any(example[name] for name in required), (
        ".env.example must leave secrets blank"
    )
    for name in required:
        with pytest.raises(ValueError, match=f"set {name} in .env"):
            interpolate(text, {**example, **SECRETS, name: ""})

    rendered = rendered_compose()
    for name in APP_SERVICES:
        environment = rendered["services"][name]["environment"]
        assert environment["SECRET_KEY"] == "key-from-env" and environment["MNIST_PRODUCTION"] == "1"
    assert (
        rendered["services"]["db"]["healthcheck"]["test"][1] == 'pg_isready -U "${POSTGRES_USER}" -d "${POSTGRES_DB}"'
    )
    assert rendered["services"]["db"]["environment"]["POSTGRES_PASSWORD"] == "pw-from-env"
    for ignore_file in (".gitignore", ".dockerignore"):
        assert ".env" in (PROJECT_ROOT / ignore_file).read_text().splitlines()


def test_the_db_creates_the_least_privilege_roles_on_first_start():
    db = rendered_compose()["services"]["db"]
    assert "./deploy/postgres-init:/docker-entrypoint-initdb.d:ro" in db["volumes"]
    assert db["environment"]["MNIST_OWNER_PASSWORD"] == "owner-from-env"
    assert db["environment"]["MNIST_APP_PASSWORD"] == "app-from-env"
    assert db["environment"]["MNIST_WEB_PASSWORD"] == "web-from-env"
    assert db["environment"]["MNIST_WORKER_PASSWORD"] == "worker-from-env"
    # The postgres image sources a .sh file that is not executable, and then $0 is not the script.
    assert (PROJECT_ROOT / "deploy" / "postgres-init" / "10-mnist-roles.sh").stat().st_mode & stat.S_IXOTH


def test_services_connect_as_their_roles_and_only_the_worker_knows_the_owner():
    services = rendered_compose()["services"]
    # The web and the workers have their own least-privilege roles; only the operators' tools use the app role.
    assert services["web"]["environment"]["DATABASE_URL"] == "postgresql://mnist_web:web-from-env@db:5432/mnist"
    assert (
        services["worker"]["environment"]["DATABASE_URL"] == "postgresql://mnist_worker:worker-from-env@db:5432/mnist"
    )
    assert services["tools"]["environment"]["DATABASE_URL"] == "postgresql://mnist_app:app-from-env@db:5432/mnist"
    assert "SCHEMA_DATABASE_URL" not in services["tools"]["environment"]
    assert (
        services["worker"]["environment"]["SCHEMA_DATABASE_URL"]
        == "postgresql://mnist_owner:owner-from-env@db:5432/mnist"
    )
    assert "SCHEMA_DATABASE_URL" not in services["web"]["environment"]
    for name in (*APP_SERVICES, "tools"):
        assert "pw-from-env" not in json.dumps(services[name]), f"{name} must not know the superuser's password"


def test_the_operators_tools_run_in_the_worker_image_and_never_start_with_up():
    """``docker compose run --rm tools python -m producer ...``: the worker's build, its model volume, a profile."""
    services = compose()["services"]
    tools = services["tools"]
    assert tools["profiles"] == ["tools"] and tools["build"] == services["worker"]["build"]
    assert "model_data:/models" in tools["volumes"] and tools["depends_on"] == services["worker"]["depends_on"]


def test_only_the_worker_image_applies_the_schema_and_then_forgets_the_owner():
    # Which image has the entrypoint, and what it copies (test_containers.py runs both images).
    # What the entrypoint does is run for real below and in test_db_roles.py.
    assert exec_form("Dockerfile.worker", "ENTRYPOINT") == ["mnist-entrypoint"]
    assert "COPY docker/entrypoint.sh /usr/local/bin/mnist-entrypoint" in dockerfile("Dockerfile.worker").splitlines()
    web = dockerfile("Dockerfile.web")
    assert "ENTRYPOINT" not in web and not re.search(r"^COPY producer/", web, re.MULTILINE)


def test_the_entrypoint_runs_the_command_only_once_init_db_succeeded(tmp_path):
    name = unique_name("mnistq_entrypoint")
    url = scratch.create_database(name)
    try:
        conn = connect(url)
        with transaction(conn) as cursor:  # a database init-db refuses (test_db.py)
            cursor.execute("CREATE TABLE job_items (job_id BIGINT, input_data_id BIGINT)")
        conn.close()
        ran = tmp_path / "command-ran"
        refused = run_entrypoint(url, url, "touch", str(ran))
        assert refused.returncode != 0 and "earlier mnist-queue" in refused.stderr, refused.stderr
        assert not ran.exists() and schema.current_revision(url) is None
    finally:
        scratch.drop_database(name)


def test_compose_file_with_the_example_env_follows_the_compose_specification():
    if not COMPOSE_SCHEMA.exists():
        pytest.skip(f"the Compose JSON schema is not at {COMPOSE_SCHEMA}")
    jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text())).validate(rendered_compose())


def test_images_run_as_a_non_root_user_from_slim_python():
    # The default base image, the user, the command and what is copied; test_containers.py runs
    # both images, built on a Debian base passed as PYTHON_IMAGE, and checks their uid.
    assert exec_form("Dockerfile.worker", "CMD") == ["python", "-m", "worker"]
    assert exec_form("Dockerfile.web", "CMD") == ["python", "-m", "web.serve", "--bind", "0.0.0.0:8000"]
    for name in ("Dockerfile.worker", "Dockerfile.web"):
        text = dockerfile(name)
        assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm$", text, re.MULTILINE)
        assert re.findall(r"^FROM (.+)$", text, re.MULTILINE) == ["${PYTHON_IMAGE}"]
        users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
        assert users and users[-1] not in {"root", "0"}
        assert text.rstrip().splitlines()[-1].startswith("CMD "), f"{name}: the command is the last instruction"
        for source in re.findall(r"^COPY (\S+)", text, re.MULTILINE):
            assert (PROJECT_ROOT / source).exists(), f"{name} copies {source}, which does not exist"
    assert "requirements-web.txt" in dockerfile("Dockerfile.web") and "requirements-worker.txt" not in dockerfile(
        "Dockerfile.web"
    )


def requirement_names(path: Path) -> set[str]:
    """What a requirements file asks for, following ``-r`` includes: names with their extras (``psycopg[binary]``)."""
    names: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            names |= requirement_names(path.parent / line[3:].strip())
        elif line:
            requirement = Requirement(line)
            extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
            names.add(requirement.name.lower() + extras)
    return names


def installed_closure(names: set[str]) -> set[str]:
    """Every package those pull in, extras included, from the installed packages' own metadata (no network)."""
    seen: set[str] = set()
    pending = [Requirement(name) for name in names]
    while pending:
        wanted = pending.pop()
        name = wanted.name.lower().replace("_", "-")
        extras = {""} | set(wanted.extras)
        if name in seen and not wanted.extras:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": extra}) for extra in extras):
                pending.append(
                    Requirement(requirement.name + (f"[{','.join(requirement.extras)}]" if requirement.extras else ""))
                )
    return seen


def test_web_requirements_resolve_to_no_inference_runtime():
    closure = installed_closure(requirement_names(PROJECT_ROOT / "requirements-web.txt"))
    assert {
        "flask",
        "granian",
        "celery",
        "psycopg",
        "psycopg-binary",
        "psycopg-pool",
    } <= closure and "gunicorn" not in closure
    assert not closure & INFERENCE_PACKAGES
    worker = installed_closure(requirement_names(PROJECT_ROOT / "requirements-worker.txt"))
    assert {
        "ai-edge-litert",
        "alembic",
        "sqlalchemy",
        "psycopg",
        "psycopg-binary",
        "zxcvbn",
    } <= worker  # it infers, its entrypoint migrates, and the tools (users add) run on it


def test_monitoring_and_flower_are_optional_profiles():
    """``--profile monitoring`` adds Prometheus with deploy/prometheus (promtool: test_metrics.py);
    ``--profile flower``, Flower."""
    services = rendered_compose()["services"]
    prometheus, flower = services["prometheus"], services["flower"]
    assert prometheus["profiles"] == ["monitoring"] and flower["profiles"] == ["flower"]
    assert compose()["services"]["prometheus"]["image"] == "${PROMETHEUS_IMAGE:-prom/prometheus:v3.5.0}"
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert all(port.startswith("127.0.0.1:") for service in (prometheus, flower) for port in service["ports"])
    scrape = yaml.safe_load((PROJECT_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    ports = {job["job_name"]: job["dns_sd_configs"][0]["port"] for job in scrape}
    assert ports == {"web": 8000, "worker": load_settings({}).worker_metrics_port}


def test_compose_file_works_with_compose_v2_and_1_29():
    """docker-compose 1.29 refuses a top-level ``name:``; the project is named by folder or COMPOSE_PROJECT_NAME."""
    document = compose()
    assert "name" not in document and "version" not in document
    assert env_example()["COMPOSE_PROJECT_NAME"] == "mnist-queue"


def test_users_get_the_official_images_unless_they_name_others():
    """``POSTGRES_IMAGE``, ``REDIS_IMAGE``, ``PYTHON_IMAGE``: the container test's stand-ins, or a mirror's."""
    services = compose()["services"]
    assert services["db"]["image"] == "${POSTGRES_IMAGE:-postgres:18}"
    assert services["redis"]["image"] == "${REDIS_IMAGE:-redis:7.4}"
    rendered = rendered_compose()["services"]
    assert (rendered["db"]["image"], rendered["redis"]["image"]) == ("postgres:18", "redis:7.4")
    for name in APP_SERVICES:
        assert services[name]["build"]["args"] == {"PYTHON_IMAGE": "${PYTHON_IMAGE:-python:3.11-slim-bookworm}"}
        assert rendered[name]["build"]["args"]["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"


def test_the_app_user_is_uid_10001_with_a_home():
    """Both images run as one system user, by number, with a home of its own."""
    for name in ("Dockerfile.worker", "Dockerfile.web"):
        useradd = next(line for line in dockerfile(name).splitlines() if "useradd" in line)
        assert "--uid 10001" in useradd and "--create-home" in useradd and "--home-dir /home/mnist" in useradd
