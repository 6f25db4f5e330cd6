"""`python -m seva_tasks.toy [key=value ...]`: build (or find) the toy world and say where it is."""

import sys

from seva_tasks.toy.world import main

if __name__ == "__main__":  # also imported by pkgutil walks (tests): only run as `python -m`
    main(sys.argv[1:])
