"""``python -m training.evaluate``."""

from training.evaluate.run import main

raise SystemExit(main())
