"""Plain nn.Modules (UNet, DCGAN G/D, conv encoder/decoder, coupling layers); no diffusion or model logic."""
