"""python -m uat_core.zoo ..."""
from .commands import main

raise SystemExit(main())
