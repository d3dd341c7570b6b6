"""``python -m pyra_daemon``: run the daemon in the foreground (what ``pyra daemon run`` execs)."""

import sys

from pyra_daemon.daemon import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
