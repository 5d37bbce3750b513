"""Train a Diffusion-LM, export it to ONNX, and prove parity with PyTorch."""
