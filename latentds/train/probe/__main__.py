import sys

from latentds.train.probe.run import main

if __name__ == "__main__":
    sys.exit(main())
