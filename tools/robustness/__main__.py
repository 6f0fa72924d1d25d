"""``python -m tools.robustness``: the robustness experiment (see :mod:`tools.robustness.experiment`)."""

from .experiment import main

raise SystemExit(main())
