import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _fake_harness  # noqa: E402

_fake_harness.install()
