"""Side networks for frozen plain ViTs (HST, ViT-CoMer): trainable networks beside a ViT that turn it into the
stride-4-to-32 pyramid dense heads take. `host` is the protocol they call the ViT through."""
