import sys

from latentds.train.vae.cli import main

if __name__ == "__main__":
    sys.exit(main())
