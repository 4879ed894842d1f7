"""``python -m training.simulate``."""

from training.simulate.run import main

raise SystemExit(main())
