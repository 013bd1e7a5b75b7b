import sys

from pyserve.worker.main import main

sys.exit(main())
