"""The method itself: the controlled UNet, attention, the UNet passes as tensor-in/tensor-out modules, DDIM
inversion and sampling, the inverted trajectory and its file, and the denoising loop that editors and
propagators share."""
