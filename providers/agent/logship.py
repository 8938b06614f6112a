"""Shipping job logs: chunks of at most 64 KiB, resumed from the server's acknowledged offset.

Two positions are kept per job: `log_file_pos` (bytes of the local file consumed) and
`log_server_pos` (the server's offset). They advance together, except when invalid UTF-8 is
replaced or when the local backlog outgrew its bound and the oldest unsent bytes were dropped
(a marker line tells the reader). Acknowledged bytes are punched out of the file, so its disk
use stays at the unacknowledged backlog while byte offsets stay stable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from pathlib import Path

from providers.agent.client import AgentClient, ApiError
from providers.agent.jobs import JobRecord, JobStore

log = logging.getLogger("suanli_agent.logs")

CHUNK = 64 * 1024
DEFAULT_MAX_BACKLOG = 32 * 1024 * 1024
_PUNCH_EVERY = 1024 * 1024
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc: ctypes.CDLL | None = None


def punch_hole(path: Path, length: int) -> bool:
    """Free the disk blocks of bytes [0, length) without changing offsets (Linux only)."""
    global _libc
    if length <= 0:
        return False
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return False
    try:
        fallocate = _libc.fallocate
        fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
        mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
        return fallocate(fd, mode, 0, length) == 0
    except AttributeError:
        return False
    finally:
        os.close(fd)


def utf8_cut(data: bytes) -> int:
    """Length of the longest prefix that does not end inside a multi-byte UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b & 0xC0 == 0x80:
            continue  # continuation byte: keep looking for the lead byte
        need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
        return len(data) - back if need > back else len(data)
    return len(data)


def gap_offset(exc: ApiError) -> int | None:
    """The offset to resume from, when ``exc`` is the server's 409 ``log_offset_gap``.

    The server names it in ``fields.next_offset``, as a string or a list of one string
    (``["1234"]``, the shape of field errors).
    """
    if exc.status != 409 or exc.code != "log_offset_gap" or not isinstance(exc.fields, dict):
        return None
    value = exc.fields.get("next_offset")
    if isinstance(value, list) and value:
        value = value[0]
    try:
        offset = int(str(value))
    except ValueError:
        return None
    return offset if offset >= 0 else None


class LogShipper:
    def __init__(self, store: JobStore, client: AgentClient, *, max_backlog: int = DEFAULT_MAX_BACKLOG):
        self.store = store
        self.client = client
        self.max_backlog = max_backlog

    def pending_bytes(self, rec: JobRecord) -> int:
        path = self.store.state.job_log_path(rec.id)
        try:
            return max(0, path.stat().st_size - rec.log_file_pos)
        except FileNotFoundError:
            return 0

    def _drop_backlog(self, rec: JobRecord, size: int) -> bytes | None:
        backlog = size - rec.log_file_pos
        if backlog <= self.max_backlog:
            return None
        skip = backlog - self.max_backlog // 2
        rec.log_file_pos += skip
        rec.log_dropped += skip
        log.warning("logs.dropped job_id=%s bytes=%s", rec.id, skip)
        return f"\n[suanli-agent: {skip} bytes of log dropped: server unreachable]\n".encode()

    def ship_one(self, rec: JobRecord) -> bool:
        """Send one chunk; True when something was sent (call again for more)."""
        path = self.store.state.job_log_path(rec.id)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return False
        marker = self._drop_backlog(rec, size)
        if marker is not None:
            raw, consumed = marker, 0
        else:
            if size <= rec.log_file_pos:
                return False
            with open(path, "rb") as fh:
                fh.seek(rec.log_file_pos)
                raw = fh.read(CHUNK)
            cut = utf8_cut(raw)
            if cut == 0 and not rec.finished:
                return False  # the rest of a multi-byte character has not been written yet
            # A lone broken sequence at the very end of a finished log still has to go out.
            raw = raw[:cut] if cut > 0 else raw
            consumed = len(raw)
        text = raw.decode("utf-8", "replace")
        sent = len(text.encode())
        try:
            reply = self.client.job_logs(rec.id, offset=rec.log_server_pos, data=text)
        except ApiError as exc:
            resume = gap_offset(exc)
            if resume is None:
                raise
            # The server holds less than we thought (it lost acknowledged bytes, or our record
            # ran ahead): resume from its end, or this chunk is refused for ever.
            log.warning("logs.offset_gap job_id=%s offset=%s resume=%s", rec.id, rec.log_server_pos, resume)
            with self.store.lock:
                rec.log_file_pos = max(0, rec.log_file_pos + (resume - rec.log_server_pos))
                rec.log_server_pos = resume
                self.store.save(rec)
            return True
        next_offset = int(reply.get("next_offset", rec.log_server_pos + sent))
        expected = rec.log_server_pos + sent
        old_file_pos = rec.log_file_pos
        with self.store.lock:
            # The server is authoritative: if it already had more (a resend after a crash) or
            # less, move the file position by the same amount.
            rec.log_file_pos = max(0, rec.log_file_pos + consumed + (next_offset - expected))
            rec.log_server_pos = next_offset
            self.store.save(rec)
        if rec.log_file_pos // _PUNCH_EVERY > old_file_pos // _PUNCH_EVERY:
            punch_hole(path, rec.log_file_pos)
        return True

    def ship(self, rec: JobRecord, *, max_chunks: int = 16) -> int:
        sent = 0
        while sent < max_chunks and self.ship_one(rec):
            sent += 1
        return sent
