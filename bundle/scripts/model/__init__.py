"""The networks of the method (``networks``: FTN and STN in one ``CoopSegNet``) and latent-code masking (``masking``),
with the BatchNorm and parameter-freezing contexts both use (``norm_context``)."""
