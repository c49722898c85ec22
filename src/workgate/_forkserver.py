"""Imported by the multiprocessing fork server that starts workers.

The fork server shares the dispatcher's process group, so a SIGTERM sent to
the whole group (systemd's default KillMode, ``kill -- -PGID``) would kill it
and, through each worker's parent-death signal, every worker before the
dispatcher could stop them gracefully. Here the fork server ignores SIGTERM;
it still exits when the dispatcher does, because multiprocessing ends it
when its pipe to the dispatcher closes.
"""

import os
import signal

PARENT_ENV = 'WORKGATE_FORKSERVER_PARENT'

if os.environ.get(PARENT_ENV) == str(os.getppid()):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
