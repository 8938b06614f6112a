"""Validation of a buyer's job spec: what may run on a provider's node.

The spec is deliberately narrow: an image, a command, environment variables, ports and a runtime.
There is no field for privileged mode, capabilities, devices, host networking or mounts, and a spec
that tries to pass one is refused by name, so a buyer learns why instead of seeing it ignored.
"""

from __future__ import annotations

import re
from typing import Any

from core.errors import ValidationFailed
from marketplace.services.jobs import JobSpec

# Docker's distribution reference grammar, simplified: [registry[:port]/]path[:tag][@digest].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_RE = re.compile(
    r"^(?:(?P<registry>(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(?::[0-9]{1,5})?)/)?"
    rf"(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

MAX_IMAGE_LENGTH = 255
MAX_COMMAND_ARGS = 64
MAX_COMMAND_BYTES = 16 * 1024
MAX_ENV_VARS = 64
MAX_ENV_BYTES = 32 * 1024
MAX_PORTS = 16
RUNTIMES = ("docker", "process")

# Keys container tools know that would break isolation; named so the refusal can say why.
FORBIDDEN_KEYS = {
    "privileged": "privileged containers are not allowed",
    "cap_add": "adding capabilities is not allowed",
    "capabilities": "adding capabilities is not allowed",
    "devices": "devices are assigned by the exchange, not the job spec",
    "volumes": "host mounts are not allowed",
    "mounts": "host mounts are not allowed",
    "binds": "host mounts are not allowed",
    "network_mode": "host networking is not allowed",
    "network": "host networking is not allowed",
    "pid": "sharing the host PID namespace is not allowed",
    "ipc": "sharing the host IPC namespace is not allowed",
    "security_opt": "security options are set by the exchange",
    "user": "the container user is set by the image",
}
ALLOWED_KEYS = {"image", "command", "env", "ports", "runtime"}


def job_spec_parse(raw: Any) -> JobSpec:
    """Validate a job spec (a JSON object) and return it, or raise ValidationFailed with field errors."""
    if not isinstance(raw, dict):
        raise ValidationFailed("The job spec must be an object.", fields={"job": "Expected an object."})
    errors: dict[str, list[str]] = {}

    for key in raw:
        if key in FORBIDDEN_KEYS:
            errors.setdefault(f"job.{key}", []).append(FORBIDDEN_KEYS[key].capitalize() + ".")
        elif key not in ALLOWED_KEYS:
            errors.setdefault(f"job.{key}", []).append(
                f"Unknown field; a job spec has only {', '.join(sorted(ALLOWED_KEYS))}."
            )

    runtime = raw.get("runtime", "docker")
    if runtime not in RUNTIMES:
        errors["job.runtime"] = [f"Choose one of {', '.join(RUNTIMES)}."]

    image = raw.get("image", "")
    if not isinstance(image, str) or not image:
        if runtime == "docker" or image not in ("", None):
            errors["job.image"] = ["An image reference is required, like nvcr.io/nvidia/pytorch:24.05-py3."]
        image = ""
    elif len(image) > MAX_IMAGE_LENGTH or not IMAGE_RE.match(image):
        errors["job.image"] = ["Not a valid image reference (registry/name:tag or name@sha256:...)."]

    command = raw.get("command", [])
    if isinstance(command, str):
        errors["job.command"] = ['Give the command as a list of arguments, e.g. ["python", "train.py"].']
        command = []
    elif not isinstance(command, list) or not all(isinstance(arg, str) for arg in command):
        errors["job.command"] = ["Must be a list of strings."]
        command = []
    elif len(command) > MAX_COMMAND_ARGS:
        errors["job.command"] = [f"At most {MAX_COMMAND_ARGS} arguments."]
    elif sum(len(arg.encode()) for arg in command) > MAX_COMMAND_BYTES:
        errors["job.command"] = [f"At most {MAX_COMMAND_BYTES // 1024} KiB in all."]
    elif any("\x00" in arg for arg in command):
        errors["job.command"] = ["Arguments may not contain NUL characters."]
    if runtime == "process" and not command:
        errors.setdefault("job.command", []).append("The process runtime needs a command.")

    env = raw.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        errors["job.env"] = ["Must be an object of string values."]
        env = {}
    else:
        bad = [name for name in env if not ENV_NAME_RE.match(str(name))]
        if bad:
            errors["job.env"] = [f"Invalid variable name {bad[0]!r}."]
        elif len(env) > MAX_ENV_VARS:
            errors["job.env"] = [f"At most {MAX_ENV_VARS} variables."]
        elif sum(len(k) + len(v.encode()) for k, v in env.items()) > MAX_ENV_BYTES:
            errors["job.env"] = [f"At most {MAX_ENV_BYTES // 1024} KiB in all."]
        elif any("\x00" in v for v in env.values()):
            errors["job.env"] = ["Values may not contain NUL characters."]

    ports = raw.get("ports", [])
    if not isinstance(ports, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in ports):
        errors["job.ports"] = ["Must be a list of port numbers."]
        ports = []
    elif len(ports) > MAX_PORTS:
        errors["job.ports"] = [f"At most {MAX_PORTS} ports."]
    elif any(not 1 <= p <= 65535 for p in ports):
        errors["job.ports"] = ["Ports are between 1 and 65535."]
    elif len(set(ports)) != len(ports):
        errors["job.ports"] = ["Ports must be distinct."]

    if errors:
        first_field, messages = next(iter(errors.items()))
        raise ValidationFailed(f"{first_field}: {messages[0]}", fields=errors)
    return JobSpec(image=image, command=list(command), env=dict(env), ports=list(ports), runtime=runtime)
