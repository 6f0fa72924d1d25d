"""Data: the synthetic phantom (``phantom``), datalists (``datalist``), the 2D slice dataset (``slices``), the
reference augmentation (``transforms``), and the ACDC, M&Ms and ACDC-C adapters (``acdc``, ``mnms``, ``artefacts``)."""
