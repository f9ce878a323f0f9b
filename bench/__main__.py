"""`python -m bench [pytest args]`: run every benchmark and write bench/results/latest.{json,md}."""
import os
import sys

import pytest

here = os.path.dirname(os.path.abspath(__file__))
sys.exit(pytest.main([here, "-q", "-s", "-p", "no:cacheprovider", "--benchmark-disable-gc",
                      "-o", "python_files=bench_*.py", "-o", "testpaths=bench", *sys.argv[1:]]))
