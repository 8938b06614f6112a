"""OpenSSH public keys as buyers paste them: validation shared by the profile and the job spec.

One line ``<type> <base64 blob> [comment]``; ed25519, ECDSA and RSA only. The blob must decode and
name the key type of the line's prefix, so a truncated paste or a private key is refused here
rather than failing silently on a node.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct

from django.utils.translation import gettext as _

SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
# A 16384-bit RSA key is about 2,800 characters; anything much longer is not a key.
SSH_KEY_MAX_LENGTH = 4096
_SSH_KEY_RE = re.compile(
    r"^(?P<type>[a-z0-9-]+) (?P<blob>[A-Za-z0-9+/]+={0,2})(?: (?P<comment>[^\x00-\x1f\x7f]*))?$"
)


def ssh_public_key_problem(value: object) -> str | None:
    """Why ``value`` is not one OpenSSH public key line (ed25519, ECDSA or RSA), or None."""
    if not isinstance(value, str) or not value.strip():
        return _("Paste one OpenSSH public key line, like ssh-ed25519 AAAA... you@laptop.")
    value = value.strip()
    if len(value) > SSH_KEY_MAX_LENGTH:
        return _("At most %(count)s characters.") % {"count": SSH_KEY_MAX_LENGTH}
    match = _SSH_KEY_RE.match(value)
    if match is None:
        return _("Paste one OpenSSH public key line, like ssh-ed25519 AAAA... you@laptop.")
    key_type = match["type"]
    if key_type not in SSH_KEY_TYPES:
        return _("Key type %(type)s is not accepted; use one of %(types)s.") % {
            "type": key_type,
            "types": ", ".join(SSH_KEY_TYPES),
        }
    named, length = None, 0
    try:
        blob = base64.b64decode(match["blob"], validate=True)
        (length,) = struct.unpack(">I", blob[:4])
        named = blob[4 : 4 + length].decode("ascii")
    except (binascii.Error, struct.error, UnicodeDecodeError):
        blob = b""
    if named != key_type or len(blob) <= 4 + length:
        return _("The key data is damaged or does not match its type %(type)s.") % {"type": key_type}
    return None
