"""The method itself: the controlled UNet, attention, the UNet passes as tensor-in/tensor-out modules, DDIM
inversion and sampling, and the denoising loop that editors and propagators share."""
