"""``python -m training.downstream``."""

from training.downstream.run import main

raise SystemExit(main())
