import sys

from trainers.probe.run import main

if __name__ == "__main__":
    sys.exit(main())
