"""The robustness experiment: standard vs cooperative training, evaluated on shifted test domains."""
