"""Keep named lines of TVM's native (C++) log from reaching stderr, around one call.

TVM's C++ ``LOG(WARNING)`` writes straight to file descriptor 2. Unlike Python's ``warnings`` and
``logging`` it has no filter and no level to set at run time: the 0.27 wheel is built without a
log hook, and ``TVM_LOG_DEBUG`` only switches ``VLOG`` on. The one way to keep a known, harmless
message from a user is therefore to point fd 2 at a temporary file while the TVM call runs and
copy every other line back when it returns, which :func:`drop_native_log_lines` does. Nothing else
is dropped: Python's own stderr output, other TVM messages and the text of an exception raised
inside the call all reach stderr, in their order, when the call ends (a hard crash of the process
inside the call loses them, which is why the scope is one pass call, not a whole build).

The message silenced today (:data:`TAKE_FAST_MODE_WARNING`) comes from ``topi.take`` in TVM's
``include/tvm/topi/transform.h``: every ``relax.take`` with ``mode="fast"`` (what TVM's ONNX
importer makes of a ``Gather``, e.g. the Q/K/V split of ``nn.MultiheadAttention``) prints it
each time it is legalized: by ``FoldConstant``, which legalizes every operator call speculatively
to see whether it folds, and by ``LegalizeOps``. It is advice to whoever chose the mode (indices
are not bounds-checked, as in TVM's own C output), not a fault of the model.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

#: The line ``topi.take`` logs for ``mode="fast"`` (after TVM's ``[time] file:line:`` prefix).
TAKE_FAST_MODE_WARNING = (
    "Warning: Fast mode segfaults when there are out-of-bounds indices. "
    "Make sure input indices are in bound"
)

# File descriptor 2 is process-wide: two threads redirecting it at once would restore each
# other's temporary file. Re-entrant so that a filtered call may nest another.
_STDERR_LOCK = threading.RLock()


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is out (a pipe may take a partial write)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@contextlib.contextmanager
def drop_native_log_lines(*messages: str) -> Iterator[None]:
    """While the block runs, drop the stderr lines that contain one of ``messages``.

    Every other line written to fd 2 in the block, by C++ or Python, is written back to the
    original stderr when the block ends, also when it raises.
    """
    wanted = [m.encode() for m in messages]
    with _STDERR_LOCK, tempfile.TemporaryFile(prefix="tvm_tiny_stderr_") as capture:
        try:
            saved: int | None = os.dup(2)
        except OSError:  # the process has no stderr: nothing can reach a user anyway
            saved = None
        if saved is None:
            yield
        else:
            if sys.stderr is not None:
                sys.stderr.flush()  # Python's buffered text from before the block goes first
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                if sys.stderr is not None:
                    sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                kept = b"".join(line for line in capture if not any(m in line for m in wanted))
                _write_all(2, kept)


def quiet_take_fast_mode() -> contextlib.AbstractContextManager[None]:
    """:func:`drop_native_log_lines` for :data:`TAKE_FAST_MODE_WARNING` alone."""
    return drop_native_log_lines(TAKE_FAST_MODE_WARNING)
