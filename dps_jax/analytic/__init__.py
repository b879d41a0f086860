"""The analytic test bed: a Gaussian-mixture prior whose denoiser and posterior are exact (`gmm`), and how
far posterior samples are from that posterior (`calibration`)."""
