import sys

from dexsim.cli.main import main

sys.exit(main())
