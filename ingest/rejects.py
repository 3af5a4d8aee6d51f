"""Rejects: the file of rejected lines, which the journal writer appends to.

Takes the rejects-file lines of each group commit (``Reject.to_json``); keeps
them durable before the journal records that name them, so a line the
journal has as rejected is always in the file. A rejects file that cannot be
written is its own error (``RejectsFileError``): the journal goes on without
it, so no delivered batch is forgotten.
"""

from __future__ import annotations

import errno
import os

from ingest.errors import RejectsFileError

_TAIL = 16 << 20  # read back on resume: more than one group commit ever writes
# Every file ingest creates holds rows or what the server said of them: the owner's
# only (the umask can take more away, never add). A file that exists keeps its mode.
FILE_MODE = 0o600


class RejectsFile:
    """The rejects file of one run, opened on its first rejected line.

    rejects = RejectsFile("rows.rejects.jsonl")
    rejects.check()            # before the first request: is it writable at all?
    rejects.append(lines)      # in the writer thread: written and fsynced, or OSError
    rejects.close()
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def check(self) -> None:
        """Raise ``RejectsFileError`` if the file plainly cannot be written (no disk-full test)."""
        folder = os.path.dirname(os.path.abspath(self.path))
        reason = None
        if os.path.isdir(self.path):
            reason = "it is a folder"
        elif os.path.exists(self.path):
            if not os.access(self.path, os.W_OK):
                reason = "no permission to write it"
        elif not os.path.exists(folder):
            reason = f"its folder {folder} does not exist"
        elif not os.path.isdir(folder):
            reason = f"{folder} is not a folder"
        elif not os.access(folder, os.W_OK | os.X_OK):
            reason = f"no permission to create a file in {folder}"
        if reason is not None:
            raise RejectsFileError(
                f"{self.path}: cannot open the rejects file: {reason}; "
                "pass --rejects PATH somewhere writable"
            )

    def append(self, data: bytes) -> None:
        """Write ``data`` at the end and fsync it (blocking: the writer thread calls it)."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        else:
            self._still_named()
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)

    def _still_named(self) -> None:
        """Raise OSError if the path no longer names the open file (removed or moved mid-run).

        Lines written to an unlinked file exist nowhere, yet the journal would have
        them as rejected: the run must stop before it records any more.
        """
        assert self._fd is not None
        opened = os.fstat(self._fd)
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            named = None
        if named is None or (named.st_dev, named.st_ino) != (opened.st_dev, opened.st_ino):
            raise OSError(errno.ENOENT, "the file was moved or removed during the run")

    def recent(self) -> set[bytes]:
        """The entries at the end of the file, as written; cuts off a torn last line."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return set()
        except OSError as exc:
            raise RejectsFileError(
                f"{self.path}: cannot open the rejects file: {exc.strerror}; "
                "pass --rejects PATH somewhere writable"
            ) from exc
        try:
            size = os.fstat(fd).st_size
            start = max(size - _TAIL, 0)
            data = os.pread(fd, size - start, start)
            good = data.rfind(b"\n") + 1
            if start + good < size:
                os.ftruncate(fd, start + good)
        finally:
            os.close(fd)
        lines = data[:good].splitlines(keepends=True)[1 if start else 0 :]
        return set(lines)

    def write_error(self, exc: OSError) -> RejectsFileError:
        """The error for a failed append: it names this file, not the checkpoint."""
        return RejectsFileError(
            f"{self.path}: cannot write the rejects file: {exc.strerror or exc}; no delivered "
            "batch is lost (the checkpoint has them all). Make the file writable, free the "
            "disk, or pass --rejects PATH, then re-run the same command to resume"
        )

    def close(self) -> None:
        """Close the file if it was opened."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def backup_path(path: str) -> str:
    """``path.bak``, else ``path.1.bak``, ``path.2.bak``...: the first name not taken."""
    candidate, n = f"{path}.bak", 0
    while os.path.lexists(candidate):
        n += 1
        candidate = f"{path}.{n}.bak"
    return candidate


def set_aside(path: str) -> str | None:
    """Rename the file at ``path`` to a backup that overwrites nothing; return its name."""
    while os.path.exists(path):
        backup = backup_path(path)
        try:
            os.link(path, backup)  # unlike a rename, fails rather than overwrite
        except FileExistsError:
            continue  # taken meanwhile: the next name
        except OSError:
            os.rename(path, backup)  # a filesystem without hard links
            return backup
        os.unlink(path)
        return backup
    return None
