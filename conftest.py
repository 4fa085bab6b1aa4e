"""Repository-wide pytest setup: notebooks run in their fast mode, CIFAR-10 found where CI keeps it."""
import os
from pathlib import Path

os.environ.setdefault("UAT_FAST", "1")
_shared = Path(__file__).resolve().parent.parent / "shared" / "data" / "cifar10-jpeg"
if "UAT_DATA" not in os.environ and _shared.is_dir():
    os.environ["UAT_DATA"] = str(_shared)
