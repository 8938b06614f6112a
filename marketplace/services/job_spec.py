"""Validation of a buyer's job spec: what may run on a provider's node.

The spec is deliberately narrow: an image, a command, environment variables, ports and a runtime.
There is no field for privileged mode, capabilities, devices, host networking or host mounts (only
named persistent volumes, at a fixed path), and a spec that tries to pass one is refused by name,
so a buyer learns why instead of seeing it ignored.
"""

from __future__ import annotations

import re
from typing import Any

from django.utils.functional import Promise
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from core.errors import ValidationFailed
from core.ssh_keys import ssh_public_key_problem
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

EXAMPLE_IMAGE = "nvcr.io/nvidia/pytorch:24.05-py3"
MAX_IMAGE_LENGTH = 255
MAX_COMMAND_ARGS = 64
MAX_COMMAND_BYTES = 16 * 1024
MAX_ENV_VARS = 64
MAX_ENV_BYTES = 32 * 1024
MAX_PORTS = 16
RUNTIMES = ("docker", "process")

# Keys container tools know that would break isolation; named so the refusal can say why.
FORBIDDEN_KEYS: dict[str, Promise] = {
    "privileged": gettext_lazy("Privileged containers are not allowed."),
    "cap_add": gettext_lazy("Adding capabilities is not allowed."),
    "capabilities": gettext_lazy("Adding capabilities is not allowed."),
    "devices": gettext_lazy("Devices are assigned by the exchange, not the job spec."),
    "mounts": gettext_lazy("Host mounts are not allowed."),
    "binds": gettext_lazy("Host mounts are not allowed."),
    "network_mode": gettext_lazy("Host networking is not allowed."),
    "network": gettext_lazy("Host networking is not allowed."),
    "pid": gettext_lazy("Sharing the host PID namespace is not allowed."),
    "ipc": gettext_lazy("Sharing the host IPC namespace is not allowed."),
    "security_opt": gettext_lazy("Security options are set by the exchange."),
    "user": gettext_lazy("The container user is set by the image."),
}
ALLOWED_KEYS = {"image", "command", "env", "ports", "runtime", "volumes", "ssh", "ssh_public_key"}
# Persistent volumes: named (never a host path), mounted at VOLUME_MOUNT_ROOT/<name> and nowhere
# else. Lower-case letters, digits, "-" and "_": no "/" and no ".", so no ".." either.
VOLUME_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$")
VOLUME_MOUNT_ROOT = "/volumes"
MAX_VOLUMES = 8


# SSH launch mode. The buyer's OpenSSH public key travels to the agent in this job variable (the
# job's env is what an agent already receives and keeps); an agent that sees it publishes an sshd
# port: the docker runtime maps the container's port 22, the process runtime a free host port.
SSH_KEY_ENV = "SUANLI_SSH_PUBLIC_KEY"


def job_spec_parse(raw: Any, *, profile_ssh_public_key: str = "") -> JobSpec:
    """Validate a job spec (a JSON object) and return it, or raise ValidationFailed with field errors.

    SSH launch mode: ``ssh_public_key`` (one OpenSSH public key line) or ``ssh: true``, which takes
    ``profile_ssh_public_key`` (the buyer's profile key). The key becomes the job variable
    ``SUANLI_SSH_PUBLIC_KEY`` that the agent acts on.
    """
    if not isinstance(raw, dict):
        raise ValidationFailed(_("The job spec must be an object."), fields={"job": _("Expected an object.")})
    errors: dict[str, list[str]] = {}

    for key in raw:
        if key in FORBIDDEN_KEYS:
            errors.setdefault(f"job.{key}", []).append(str(FORBIDDEN_KEYS[key]))
        elif key not in ALLOWED_KEYS:
            errors.setdefault(f"job.{key}", []).append(
                _("Unknown field; a job spec has only %(fields)s.")
                % {"fields": ", ".join(sorted(ALLOWED_KEYS))}
            )

    runtime = raw.get("runtime", "docker")
    if runtime not in RUNTIMES:
        errors["job.runtime"] = [_("Choose one of %(choices)s.") % {"choices": ", ".join(RUNTIMES)}]

    image = raw.get("image", "")
    if not isinstance(image, str) or not image:
        if runtime == "docker" or image not in ("", None):
            errors["job.image"] = [
                _("An image reference is required, like %(example)s.") % {"example": EXAMPLE_IMAGE}
            ]
        image = ""
    elif len(image) > MAX_IMAGE_LENGTH or not IMAGE_RE.match(image):
        errors["job.image"] = [_("Not a valid image reference (registry/name:tag or name@sha256:...).")]

    command = raw.get("command", [])
    if isinstance(command, str):
        errors["job.command"] = [_('Give the command as a list of arguments, e.g. ["python", "train.py"].')]
        command = []
    elif not isinstance(command, list) or not all(isinstance(arg, str) for arg in command):
        errors["job.command"] = [_("Must be a list of strings.")]
        command = []
    elif len(command) > MAX_COMMAND_ARGS:
        errors["job.command"] = [_("At most %(count)s arguments.") % {"count": MAX_COMMAND_ARGS}]
    elif sum(len(arg.encode()) for arg in command) > MAX_COMMAND_BYTES:
        errors["job.command"] = [_("At most %(kib)s KiB in all.") % {"kib": MAX_COMMAND_BYTES // 1024}]
    elif any("\x00" in arg for arg in command):
        errors["job.command"] = [_("Arguments may not contain NUL characters.")]
    if runtime == "process" and not command:
        errors.setdefault("job.command", []).append(_("The process runtime needs a command."))

    env = raw.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        errors["job.env"] = [_("Must be an object of string values.")]
        env = {}
    else:
        bad = [name for name in env if not ENV_NAME_RE.match(str(name))]
        if bad:
            errors["job.env"] = [_("Invalid variable name %(name)s.") % {"name": repr(bad[0])}]
        elif len(env) > MAX_ENV_VARS:
            errors["job.env"] = [_("At most %(count)s variables.") % {"count": MAX_ENV_VARS}]
        elif sum(len(k) + len(v.encode()) for k, v in env.items()) > MAX_ENV_BYTES:
            errors["job.env"] = [_("At most %(kib)s KiB in all.") % {"kib": MAX_ENV_BYTES // 1024}]
        elif any("\x00" in v for v in env.values()):
            errors["job.env"] = [_("Values may not contain NUL characters.")]

    ports = raw.get("ports", [])
    if not isinstance(ports, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in ports):
        errors["job.ports"] = [_("Must be a list of port numbers.")]
        ports = []
    elif len(ports) > MAX_PORTS:
        errors["job.ports"] = [_("At most %(count)s ports.") % {"count": MAX_PORTS}]
    elif any(not 1 <= p <= 65535 for p in ports):
        errors["job.ports"] = [_("Ports are between 1 and 65535.")]
    elif len(set(ports)) != len(ports):
        errors["job.ports"] = [_("Ports must be distinct.")]

    volumes = _volumes_parse(raw.get("volumes", []), errors)

    ssh_key = _ssh_key(raw, env, profile_ssh_public_key, errors)
    if errors:
        first_field, messages = next(iter(errors.items()))
        raise ValidationFailed(f"{first_field}: {messages[0]}", fields=errors)
    if ssh_key:
        env = {**env, SSH_KEY_ENV: ssh_key}
    return JobSpec(
        image=image, command=list(command), env=dict(env), ports=list(ports), runtime=runtime, volumes=volumes
    )


def _volumes_parse(raw: Any, errors: dict[str, list[str]]) -> list[dict[str, Any]]:
    """``[{"name": "data"}]`` or ``[{"id": 7}]``, each with an optional ``mount`` that can only be
    ``/volumes/<name>``: a job never chooses where on the host or in the container a volume goes."""
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        errors["job.volumes"] = [_('Must be a list of objects like {"name": "data"}.')]
        return []
    if len(raw) > MAX_VOLUMES:
        errors["job.volumes"] = [_("At most %(count)s volumes.") % {"count": MAX_VOLUMES}]
        return []
    out: list[dict[str, Any]] = []
    for n, item in enumerate(raw):
        field_name = f"job.volumes.{n}"
        unknown = set(item) - {"name", "id", "mount"}
        name, volume_id, mount = item.get("name"), item.get("id"), item.get("mount")
        if unknown:
            errors[field_name] = [
                _("Unknown field %(name)s; a volume has only name, id and mount.")
                % {"name": sorted(unknown)[0]}
            ]
        elif (name is None) == (volume_id is None):
            errors[field_name] = [_("Give the volume's name or its id.")]
        elif name is not None and (not isinstance(name, str) or not VOLUME_NAME_RE.match(name)):
            errors[field_name] = [
                _("A volume name is 1 to 63 lower-case letters, digits, - and _ (no / or .).")
            ]
        elif volume_id is not None and (
            not isinstance(volume_id, int) or isinstance(volume_id, bool) or not 1 <= volume_id < 2**63
        ):
            errors[field_name] = [_("A volume id is a positive whole number.")]
        elif mount is not None and (
            not isinstance(mount, str) or (name is not None and mount != f"{VOLUME_MOUNT_ROOT}/{name}")
        ):
            errors[field_name] = [
                _("Volumes are mounted at %(path)s only.") % {"path": f"{VOLUME_MOUNT_ROOT}/<name>"}
            ]
        else:
            entry: dict[str, Any] = {"name": name} if name is not None else {"id": volume_id}
            if mount is not None:
                entry["mount"] = mount
            if entry in out:
                errors[field_name] = [_("The same volume twice.")]
            out.append(entry)
    return out


def _ssh_key(raw: dict[str, Any], env: dict[str, Any], profile_key: str, errors: dict[str, list[str]]) -> str:
    """The SSH public key the job is launched with ("" for none); records field errors."""
    ssh = raw.get("ssh", False)
    if not isinstance(ssh, bool):
        errors["job.ssh"] = [_("Must be true or false.")]
        return ""
    given = raw.get("ssh_public_key")
    field_name = "job.ssh_public_key"
    if given is None and SSH_KEY_ENV in env:
        # The same thing spelt as a variable: checked the same way, never passed on unchecked.
        given, field_name = env[SSH_KEY_ENV], "job.env"
    if given is not None:
        if (problem := ssh_public_key_problem(given)) is not None:
            errors[field_name] = [problem]
            return ""
        return str(given).strip()
    if ssh:
        if not profile_key:
            errors["job.ssh"] = [_("Add an SSH public key to your profile, or give job.ssh_public_key.")]
            return ""
        return profile_key.strip()
    return ""
