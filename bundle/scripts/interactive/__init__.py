"""Interactive correction: a user's clicks or scribbles on a slice turn its mask into a new one.

* ``refinement``: the algorithm on one network-grid slice (corrections spread along edge-free paths over the pixels
  that share the corrected mistake, then fused with the STN's reconstruction of the corrected probabilities);
* ``grid``: the in-plane mapping between a volume's grid and the network grid of the bundle's preprocessing;
* ``session``: :class:`~scripts.interactive.session.FrameRefiner`, one frame of a volume, on the volume's own grid;
* ``annotator``: the simulated annotator and its measures (Dice after k interactions, NoI@90);
* ``correction_network``: the learned correction, a small U-Net that takes the image, the current mask and the marks
  and fixes the whole slice, what the user did not mark included; ``correction_training`` trains it on simulated
  corrections of the segmentation network's own mistakes.

Label codes everywhere: 0 background, 1 LV, 2 myocardium, 3 RV (:mod:`scripts.labels`); seed maps hold -1 where
the user marked nothing.
"""
