"""What runs a step on the device: the model runner, one builder of a step's inputs and its staging
buffers, CUDA graphs, the sampler and its kernels, logprobs, grammars' masks, loading the weights.
The model (engine.models) and the attention backends (engine.attention) are its parts too."""
