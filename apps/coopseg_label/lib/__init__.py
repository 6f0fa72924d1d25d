"""CoopSeg MONAI Label app helpers: the working bundle, input checks, and thin task subclasses over the bundle."""
