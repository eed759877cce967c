"""Measuring translations: PSNR, SSIM and Lab error against paired truth with two baselines, the cycle
error, and a clip's flicker and structural facts against its source."""
